package sensor

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"
	"github.com/tidwall/gjson"
)

var recv = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func mustMapper(t testing.TB, cfg MapperConfig) *Mapper {
	t.Helper()
	m, err := NewMapper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMapperJSON(t *testing.T) {
	m := mustMapper(t, MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}})
	tests := []struct {
		name, topic, payload string
		want                 string // line protocol, "" when an error is expected
		reason               string
	}{
		{"device time ms", "sensors/site-1/dev-2/environment", `{"ts":1764158400123,"temperature":21.5,"humidity":40}`,
			"environment,device=dev-2,gateway=gw-1,site=site-1 humidity=40,temperature=21.5 1764158400123000000\n", ""},
		{"no ts uses receive time", "sensors/s/d/power", `{"battery":97.25,"charging":true,"state":"ok"}`,
			"power,device=d,gateway=gw-1,site=s battery=97.25,charging=true,state=\"ok\" 1795694400000000000\n", ""},
		{"rfc3339 ts", "sensors/s/d/m", `{"ts":"2026-11-26T10:00:00.5Z","v":1}`,
			"m,device=d,gateway=gw-1,site=s v=1 1795687200500000000\n", ""},
		{"null field skipped", "sensors/s/d/m", `{"v":1,"w":null}`,
			"m,device=d,gateway=gw-1,site=s v=1 1795694400000000000\n", ""},
		{"escaping", "sensors/s 1/d,2/m=x", `{"a b":"q\"x"}`,
			"m=x,device=d\\,2,gateway=gw-1,site=s\\ 1 a\\ b=\"q\\\"x\" 1795694400000000000\n", ""},
		{"duplicate key keeps the last", "sensors/s/d/m", `{"v":1,"w":true,"v":2}`,
			"m,device=d,gateway=gw-1,site=s v=2,w=true 1795694400000000000\n", ""},
		{"not json", "sensors/s/d/m", `{"v":`, "", ReasonNotJSON},
		{"trailing data", "sensors/s/d/m", `{"v":1} {"v":2}`, "", ReasonNotJSON},
		{"array", "sensors/s/d/m", `[1,2]`, "", ReasonNotObject},
		{"null payload", "sensors/s/d/m", `null`, "", ReasonNotObject},
		{"number payload", "sensors/s/d/m", `42`, "", ReasonNotObject},
		{"empty object", "sensors/s/d/m", `{}`, "", ReasonNoFields},
		{"only ts", "sensors/s/d/m", `{"ts":1}`, "", ReasonNoFields},
		{"nested object", "sensors/s/d/m", `{"v":{"x":1}}`, "", ReasonBadField},
		{"array field", "sensors/s/d/m", `{"v":[1]}`, "", ReasonBadField},
		{"huge number", "sensors/s/d/m", `{"v":1e999}`, "", ReasonBadField},
		{"ts float", "sensors/s/d/m", `{"ts":1.5,"v":1}`, "", ReasonBadTS},
		{"ts bool", "sensors/s/d/m", `{"ts":true,"v":1}`, "", ReasonBadTS},
		{"ts garbage", "sensors/s/d/m", `{"ts":"yesterday","v":1}`, "", ReasonBadTS},
		{"ts out of range", "sensors/s/d/m", `{"ts":99999999999999999,"v":1}`, "", ReasonBadTS},
		{"bad utf8", "sensors/s/d/m", "{\"v\":\"\xff\"}", "", ReasonBadUTF8},
		{"too large", "sensors/s/d/m", `{"v":"` + strings.Repeat("x", DefaultMaxPayload) + `"}`, "", ReasonTooLarge},
		{"topic too short", "sensors/s/d", `{"v":1}`, "", ReasonBadTopic},
		{"topic too long", "sensors/s/d/m/x", `{"v":1}`, "", ReasonBadTopic},
		{"topic wrong prefix", "other/s/d/m", `{"v":1}`, "", ReasonBadTopic},
		{"empty level", "sensors//d/m", `{"v":1}`, "", ReasonBadTopic},
		{"control char in key", "sensors/s/d/m", "{\"v\\u0001\":1}", "", ReasonBadField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Twice: the second time the topic's line prefix comes from
			// the mapper's cache.
			for round := 1; round <= 2; round++ {
				prefix := []byte("prev\n")
				got, n, err := m.Append(prefix, Message{Topic: tt.topic, Payload: []byte(tt.payload), Received: recv}, FormatJSON)
				if tt.reason != "" {
					var de *DecodeError
					if !errors.As(err, &de) || de.Reason != tt.reason {
						t.Fatalf("round %d: err = %v, want reason %s", round, err, tt.reason)
					}
					if string(got) != "prev\n" || n != 0 {
						t.Fatalf("round %d: buffer changed on error: %q", round, got)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if n != 1 || string(got) != "prev\n"+tt.want {
					t.Fatalf("round %d: got %d points %q\nwant %q", round, n, got, "prev\n"+tt.want)
				}
			}
		})
	}
}

func TestMapperLineProtocol(t *testing.T) {
	m := mustMapper(t, MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}})
	tests := []struct {
		name, payload, want, reason string
		n                           int
	}{
		{"two lines, one timed", "cpu,host=a usage=1.5 1700000000000000000\nmem,z=1 free=3i",
			"cpu,gateway=gw-1,host=a usage=1.5 1700000000000000000\nmem,gateway=gw-1,z=1 free=3i 1795694400000000000\n", "", 2},
		{"escaped tags kept", `m,k\ 1=v\,2 f="x y"`, "m,gateway=gw-1,k\\ 1=v\\,2 f=\"x y\" 1795694400000000000\n", "", 1},
		{"no fields", "cpu,host=a", "", ReasonBadLine, 0},
		{"bad field", "cpu v=abc", "", ReasonBadLine, 0},
		{"second line bad", "cpu v=1\ncpu v=", "", ReasonBadLine, 0},
		{"duplicate static tag", "cpu,gateway=x v=1", "", ReasonBadLine, 0},
		{"empty", "\n\n", "", ReasonNoFields, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := m.Append(nil, Message{Topic: "any/topic", Payload: []byte(tt.payload), Received: recv}, FormatLine)
			if tt.reason != "" {
				var de *DecodeError
				if !errors.As(err, &de) || de.Reason != tt.reason {
					t.Fatalf("err = %v, want reason %s", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != tt.n || string(got) != tt.want {
				t.Fatalf("got %d %q\nwant %d %q", n, got, tt.n, tt.want)
			}
		})
	}
}

// A refused payload names the line that failed and keeps that line's
// reason, so a device's operator can find it.
func TestMapperLineErrorNamesLine(t *testing.T) {
	m := mustMapper(t, MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}})
	for _, tc := range []struct{ payload, reason, text string }{
		{"cpu v=1\ncpu v=", ReasonBadLine, "bad_line_protocol: line 2: "},
		{"cpu v=1\ncpu v=2\ncpu s=\"a\nb\"", ReasonNewline, "newline_in_string: line 3: field \"s\""},
	} {
		_, _, err := m.Append(nil, Message{Topic: "any/topic", Payload: []byte(tc.payload), Received: recv}, FormatLine)
		var de *DecodeError
		if !errors.As(err, &de) || de.Reason != tc.reason || !strings.HasPrefix(err.Error(), tc.text) {
			t.Errorf("%q: %v, want reason %s and %q...", tc.payload, err, tc.reason, tc.text)
		}
	}
}

// Lines without a timestamp in one message: a series seen again is stamped
// a nanosecond later each time, so no line overwrites another; different
// series keep the same receive time. Timestamps are read in the precision
// configured for the topic.
func TestMapperLineTimestamps(t *testing.T) {
	m := mustMapper(t, MapperConfig{LinePrecision: map[string]string{"lp/ms/#": "ms", "$share/g/lp/s/+": "s", "lp/us": "us"}})
	r := recv.UnixNano()
	tests := []struct {
		name, topic, payload, want, reason string
	}{
		{"same series twice untimed", "lp/x", "cpu,h=a v=1\ncpu,h=a v=2\ncpu,h=b v=3\nmem v=4\ncpu,h=a v=5",
			fmt.Sprintf("cpu,h=a v=1 %d\ncpu,h=a v=2 %d\ncpu,h=b v=3 %d\nmem v=4 %d\ncpu,h=a v=5 %d\n", r, r+1, r, r, r+2), ""},
		{"tag order does not make another series", "lp/x", "cpu,a=1,b=2 v=1\ncpu,b=2,a=1 v=2",
			fmt.Sprintf("cpu,a=1,b=2 v=1 %d\ncpu,a=1,b=2 v=2 %d\n", r, r+1), ""},
		{"timed lines kept as they are", "lp/x", "cpu v=1 5\ncpu v=2 5", "cpu v=1 5\ncpu v=2 5\n", ""},
		{"milliseconds", "lp/ms/a/b", "cpu v=1 1764158400123", "cpu v=1 1764158400123000000\n", ""},
		{"seconds under a shared subscription's filter", "lp/s/x", "cpu v=1 1764158400", "cpu v=1 1764158400000000000\n", ""},
		{"microseconds", "lp/us", "cpu v=1 -5", "cpu v=1 -5000\n", ""},
		{"untimed in ms topic still ns receive time", "lp/ms", "cpu v=1", fmt.Sprintf("cpu v=1 %d\n", r), ""},
		{"ms timestamp overflows", "lp/ms/x", "cpu v=1 9223372036854775", "", ReasonBadLine},
		{"s timestamp overflows", "lp/s/x", "cpu v=1 -9223372036", "", ReasonBadLine},
		{"ns not multiplied", "lp/other", "cpu v=1 9223372036854775807", "cpu v=1 9223372036854775807\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := m.Append(nil, Message{Topic: tt.topic, Payload: []byte(tt.payload), Received: recv}, FormatLine)
			if tt.reason != "" {
				var de *DecodeError
				if !errors.As(err, &de) || de.Reason != tt.reason {
					t.Fatalf("err = %v, want reason %s", err, tt.reason)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("got %q (%v)\nwant %q", got, err, tt.want)
			}
		})
	}
	for _, bad := range []map[string]string{{"lp/#": "minutes"}, {"lp/#/x": "ms"}, {"$share/g": "ms"}, {"a+/b": "s"}} {
		if _, err := NewMapper(MapperConfig{LinePrecision: bad}); err == nil {
			t.Errorf("LinePrecision %v accepted", bad)
		}
	}
}

// Strings keep every byte but newline; names refuse a backslash that would
// merge with an escape.
func TestMapperStrings(t *testing.T) {
	m := mustMapper(t, MapperConfig{TopicPattern: "{_measurement}/{k}"})
	tests := []struct{ topic, payload, want, reason string }{
		{"m/a", `{"s":"t\tc\rq\"b\\e\u0000x"}`, "m,k=a s=\"t\tc\rq\\\"b\\\\e\x00x\" 1795694400000000000\n", ""},
		{"m/a", `{"s":"\\n"}`, `m,k=a s="\\n" 1795694400000000000` + "\n", ""},
		{"m/a", `{"s":"x\ny"}`, "", ReasonNewline},
		{`m/a\`, `{"v":1}`, "", ReasonBadTopic},
		{`m/a\,b`, `{"v":1}`, "", ReasonBadTopic},
		{`m/a\b`, `{"v":1}`, `m,k=a\b v=1 1795694400000000000` + "\n", ""},
		{"m/a", `{"f\\ k":1}`, "", ReasonBadField},
	}
	for _, tt := range tests {
		got, _, err := m.Append(nil, Message{Topic: tt.topic, Payload: []byte(tt.payload), Received: recv}, FormatJSON)
		if tt.reason != "" {
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason != tt.reason {
				t.Errorf("%s %s: err = %v, want reason %s", tt.topic, tt.payload, err, tt.reason)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("%s %s: got %q (%v)\nwant %q", tt.topic, tt.payload, got, err, tt.want)
		}
	}
	lines := []struct{ payload, want, reason string }{
		{`m s="C:\new\\x\"q\t"`, `m s="C:\\new\\x\"q\\t" 1`, ""},
		{"m s=\"raw\ttab\"", "m s=\"raw\ttab\" 1", ""},
		{"m s=\"raw\nnewline\"", "", ReasonNewline},
		{`m,k=a\\,b v=1`, "", ReasonBadLine},
		{`# comment with \n` + "\n" + `m s="\n"`, `m s="\\n" 1`, ""},
	}
	for _, tt := range lines {
		got, _, err := m.Append(nil, Message{Topic: "x", Payload: []byte(tt.payload), Received: time.Unix(0, 1)}, FormatLine)
		if tt.reason != "" {
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason != tt.reason {
				t.Errorf("%q: err = %v, want reason %s", tt.payload, err, tt.reason)
			}
			continue
		}
		if err != nil || string(got) != tt.want+"\n" {
			t.Errorf("%q: got %q (%v)\nwant %q", tt.payload, got, err, tt.want+"\n")
		}
	}
}

func TestNewMapperErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  MapperConfig
		want string
	}{
		{"no measurement", MapperConfig{TopicPattern: "a/{site}"}, "no {_measurement}"},
		{"twice", MapperConfig{TopicPattern: "{_measurement}/{_measurement}"}, "twice"},
		{"dup tag", MapperConfig{TopicPattern: "{a}/{a}/{_measurement}"}, "appears twice"},
		{"wildcard", MapperConfig{TopicPattern: "a/#/{_measurement}"}, "bad level"},
		{"static clashes", MapperConfig{StaticTags: map[string]string{"site": "x"}}, "also a topic level"},
		{"static empty value", MapperConfig{StaticTags: map[string]string{"gw": ""}}, "bad value"},
		{"comment measurement", MapperConfig{TopicPattern: "a/{x}", Measurement: "#m"}, "starting with #"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMapper(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	m := mustMapper(t, MapperConfig{TopicPattern: "plant/+/{line}", Measurement: "machine"})
	got, _, err := m.Append(nil, Message{Topic: "plant/x/l1", Payload: []byte(`{"rpm":3}`), Received: recv}, FormatJSON)
	if err != nil || string(got) != "machine,line=l1 rpm=3 1795694400000000000\n" {
		t.Fatalf("fixed measurement: %q %v", got, err)
	}
}

// FuzzMapper feeds arbitrary topics and payloads to mappers of several
// topic patterns: a mapper must never panic, whatever it accepts must be
// valid line protocol with as many lines as it reports, and every string a
// JSON payload carries must come out as it went in.
func FuzzMapper(f *testing.F) {
	for _, s := range []string{`{"ts":1764158400123,"t":21.5}`, `{"v":"x","b":true}`, `{"ts":"2026-11-26T10:00:00Z","v":1}`,
		`{`, `[]`, `{"v":{"x":1}}`, `{"s":"a\\b\"c\t\r\u0000","s":"last"}`, "cpu,host=a v=1 1700000000000000000",
		"m v=1i\nm v=2", `m s="C:\new\\x\"q",t="\t"`, "# c\nm,k=a\\ b f\\,k=\"x\" 12"} {
		for i := range 4 {
			f.Add(uint8(i), "sensors/s/d/m", []byte(s), false)
			f.Add(uint8(i), "plant/x/l1", []byte(s), true)
		}
	}
	f.Add(uint8(2), "m/site/x/dev", []byte(`{"v":1}`), false)
	f.Add(uint8(3), "a/b\\c/m", []byte(`{"v":1}`), false)
	mappers := []*Mapper{
		mustMapper(f, MapperConfig{StaticTags: map[string]string{"gateway": "gw"}}),
		mustMapper(f, MapperConfig{TopicPattern: "plant/+/{line}", Measurement: "machine", LinePrecision: map[string]string{"#": "ms"}}),
		mustMapper(f, MapperConfig{TopicPattern: "{_measurement}/{site}/+/{dev}", StaticTags: map[string]string{"a b": "c,d"}}),
		mustMapper(f, MapperConfig{TopicPattern: "a/{x}/{_measurement}", LinePrecision: map[string]string{"plant/+/+": "s"}}),
	}
	f.Fuzz(func(t *testing.T, which uint8, topic string, payload []byte, line bool) {
		m := mappers[int(which)%len(mappers)]
		format := FormatJSON
		if line {
			format = FormatLine
		}
		out, n, err := m.Append(nil, Message{Topic: topic, Payload: payload, Received: recv}, format)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		// The same message again (its topic's line prefix now cached)
		// must encode to the same bytes.
		if again, _, err := m.Append(nil, Message{Topic: topic, Payload: payload, Received: recv}, format); err != nil || !bytes.Equal(again, out) {
			t.Fatalf("second encoding differs: %q (%v), first %q", again, err, out)
		}
		strs := map[string]string{} // string fields of the output
		dec := lineprotocol.NewDecoderWithBytes(out)
		lines := 0
		for dec.Next() {
			if _, err := dec.Measurement(); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			for {
				k, _, err := dec.NextTag()
				if err != nil {
					t.Fatalf("output %q: %v", out, err)
				}
				if k == nil {
					break
				}
			}
			for {
				k, v, err := dec.NextField()
				if err != nil {
					t.Fatalf("output %q: %v", out, err)
				}
				if k == nil {
					break
				}
				if v.Kind() == lineprotocol.String {
					strs[string(k)] = v.StringV()
				}
			}
			if _, err := dec.Time(lineprotocol.Nanosecond, time.Time{}); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			lines++
		}
		if dec.Err() != nil || lines != n {
			t.Fatalf("output %q: %d lines, reported %d, err %v", out, lines, n, dec.Err())
		}
		if format != FormatJSON {
			return
		}
		want := map[string]string{}
		gjson.ParseBytes(payload).ForEach(func(k, v gjson.Result) bool {
			if v.Type == gjson.String && k.Str != TimestampKey {
				want[k.Str] = v.Str
			} else {
				delete(want, k.Str)
			}
			return true
		})
		if !maps.Equal(strs, want) {
			t.Fatalf("payload %q: strings out %q, in %q", payload, strs, want)
		}
	})
}

func BenchmarkMapperJSON(b *testing.B) {
	m := mustMapper(b, MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}})
	msg := Message{Topic: "sensors/site-01/dev-0003/environment",
		Payload:  []byte(`{"ts":1764158400123,"temperature":21.37,"humidity":48.2,"pressure":1012.8,"battery":97.1}`),
		Received: recv}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, _, err = m.Append(buf[:0], msg, FormatJSON); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMapperLine(b *testing.B) {
	m := mustMapper(b, MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}})
	msg := Message{Topic: "lp/x", Payload: []byte("environment,site=s1,device=d3 temperature=21.37,humidity=48.2 1764158400123000000"), Received: recv}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, _, err = m.Append(buf[:0], msg, FormatLine); err != nil {
			b.Fatal(err)
		}
	}
}
