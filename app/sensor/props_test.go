package sensor

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// userProps is a Props of key-value pairs in order, as a PUBLISH carries
// them (a key may repeat).
type userProps [][2]string

func (p userProps) UserProperty(key string) (value []byte, n int) {
	for _, kv := range p {
		if kv[0] == key {
			if n == 0 {
				value = []byte(kv[1])
			}
			n++
		}
	}
	return value, n
}

// oneProp is a Props without allocations, for the benchmark.
type oneProp struct {
	k string
	v []byte
}

func (p *oneProp) UserProperty(key string) ([]byte, int) {
	if key == p.k {
		return p.v, 1
	}
	return nil, 0
}

func TestMapperTimestampProperty(t *testing.T) {
	m := mustMapper(t, MapperConfig{TimestampProperty: "ts"})
	us := mustMapper(t, MapperConfig{TimestampProperty: "device-time", TimestampPropertyPrecision: "us"})
	r := recv.UnixNano()
	dev := time.Date(2026, 11, 26, 10, 0, 0, 123_000_000, time.UTC).UnixNano()
	tests := []struct {
		name    string
		m       *Mapper
		format  Format
		payload string
		props   Props
		want    string
		reason  string
	}{
		{"integer ms", m, FormatJSON, `{"v":1}`, userProps{{"ts", "1795687200123"}},
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", dev), ""},
		{"rfc 3339", m, FormatJSON, `{"v":1}`, userProps{{"fw", "1"}, {"ts", "2026-11-26T11:00:00.123+01:00"}},
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", dev), ""},
		{"rfc 3339 nanoseconds", m, FormatJSON, `{"v":1}`, userProps{{"ts", "2026-11-26T10:00:00.123000009Z"}},
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", dev+9), ""},
		{"microseconds, another name", us, FormatJSON, `{"v":1}`, userProps{{"ts", "garbage"}, {"device-time", "1795687200123000"}},
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", dev), ""},
		{"negative", m, FormatJSON, `{"v":1}`, userProps{{"ts", "-5"}}, "m,device=d,site=s v=1 -5000000\n", ""},
		{"absent: receive time", m, FormatJSON, `{"v":1}`, userProps{{"fw", "1"}},
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", r), ""},
		{"no properties (MQTT 3.1.1): receive time", m, FormatJSON, `{"v":1}`, nil,
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", r), ""},
		{"off: ignored", mustMapper(t, MapperConfig{}), FormatJSON, `{"v":1}`, userProps{{"ts", "1795687200123"}},
			fmt.Sprintf("m,device=d,site=s v=1 %d\n", r), ""},
		{"the payload's ts wins", m, FormatJSON, `{"ts":5,"v":1}`, userProps{{"ts", "1795687200123"}},
			"m,device=d,site=s v=1 5000000\n", ""},
		{"line protocol: untimed lines, one series stepped", m, FormatLine, "cpu v=1\ncpu v=2\nmem v=3 7",
			userProps{{"ts", "1795687200123"}}, fmt.Sprintf("cpu v=1 %d\ncpu v=2 %d\nmem v=3 7\n", dev, dev+1), ""},

		{"garbage", m, FormatJSON, `{"v":1}`, userProps{{"ts", "yesterday"}}, "", ReasonBadTSProperty},
		{"empty", m, FormatJSON, `{"v":1}`, userProps{{"ts", ""}}, "", ReasonBadTSProperty},
		{"fraction", m, FormatJSON, `{"v":1}`, userProps{{"ts", "1795687200.123"}}, "", ReasonBadTSProperty},
		{"plus sign", m, FormatJSON, `{"v":1}`, userProps{{"ts", "+1795687200123"}}, "", ReasonBadTSProperty},
		{"space", m, FormatJSON, `{"v":1}`, userProps{{"ts", " 1795687200123"}}, "", ReasonBadTSProperty},
		{"out of range", m, FormatJSON, `{"v":1}`, userProps{{"ts", "9223372036854776"}}, "", ReasonBadTSProperty},
		{"overflows int64", m, FormatJSON, `{"v":1}`, userProps{{"ts", "99999999999999999999"}}, "", ReasonBadTSProperty},
		{"rfc 3339 out of range", m, FormatJSON, `{"v":1}`, userProps{{"ts", "9999-01-01T00:00:00Z"}}, "", ReasonBadTSProperty},
		{"date only", m, FormatJSON, `{"v":1}`, userProps{{"ts", "2026-11-26"}}, "", ReasonBadTSProperty},
		{"too long", m, FormatJSON, `{"v":1}`, userProps{{"ts", strings.Repeat("1", 65)}}, "", ReasonBadTSProperty},
		{"bad utf8", m, FormatJSON, `{"v":1}`, userProps{{"ts", "\xff"}}, "", ReasonBadTSProperty},
		{"given twice", m, FormatJSON, `{"v":1}`, userProps{{"ts", "1"}, {"ts", "1"}}, "", ReasonBadTSProperty},
		{"malformed even when the payload has ts", m, FormatJSON, `{"ts":5,"v":1}`, userProps{{"ts", "x"}}, "", ReasonBadTSProperty},
		{"malformed, line protocol", m, FormatLine, "cpu v=1", userProps{{"ts", "x"}}, "", ReasonBadTSProperty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic := "sensors/s/d/m"
			if tt.format == FormatLine {
				topic = "lp/x"
			}
			got, n, err := tt.m.Append([]byte("prev\n"), Message{Topic: topic, Payload: []byte(tt.payload), Received: recv, Props: tt.props}, tt.format)
			if tt.reason != "" {
				var de *DecodeError
				if !errors.As(err, &de) || de.Reason != tt.reason {
					t.Fatalf("err = %v, want reason %s", err, tt.reason)
				}
				if !strings.Contains(err.Error(), `"ts"`) && !strings.Contains(err.Error(), "ts=") {
					t.Fatalf("error %q does not name the property", err)
				}
				if string(got) != "prev\n" || n != 0 {
					t.Fatalf("buffer changed on error: %q", got)
				}
				return
			}
			if err != nil || string(got) != "prev\n"+tt.want {
				t.Fatalf("got %q (%v)\nwant %q", got, err, "prev\n"+tt.want)
			}
		})
	}
}

func TestNewMapperTimestampPropertyErrors(t *testing.T) {
	for _, cfg := range []MapperConfig{
		{TimestampProperty: "ts", TimestampPropertyPrecision: "minutes"},
		{TimestampPropertyPrecision: "h"},
		{TimestampProperty: "t\x01s"},
		{TimestampProperty: "\xff"},
		{TimestampProperty: strings.Repeat("k", 129)},
	} {
		_, err := NewMapper(cfg)
		if err == nil || !strings.Contains(err.Error(), "timestamp_property") {
			t.Errorf("%+v: err = %v, want one naming timestamp_property", cfg, err)
		}
	}
}

func BenchmarkMapperJSONTimestampProperty(b *testing.B) {
	m := mustMapper(b, MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}, TimestampProperty: "ts"})
	// A pointer to values already in memory, as the MQTT session passes
	// its properties.
	props := &oneProp{"ts", []byte("1764158400123")}
	msg := Message{Topic: "sensors/site-01/dev-0003/environment",
		Payload:  []byte(`{"temperature":21.37,"humidity":48.2,"pressure":1012.8,"battery":97.1}`),
		Received: recv, Props: props}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, _, err = m.Append(buf[:0], msg, FormatJSON); err != nil {
			b.Fatal(err)
		}
	}
}
