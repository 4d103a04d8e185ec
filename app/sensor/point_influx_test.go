package sensor_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// write posts line protocol to InfluxDB's v2 write API.
func write(t *testing.T, in *testsvc.Influx, body []byte) {
	t.Helper()
	resp, err := http.Post(in.URL()+"/api/v2/write?bucket="+testsvc.Bucket+"&precision=ns", "text/plain", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		var msg bytes.Buffer
		_, _ = msg.ReadFrom(resp.Body)
		t.Fatalf("write %q: %s %s", body, resp.Status, msg.String())
	}
}

// stored returns the given columns of measurement m's points, keyed by
// time, as `col="value" ...`. It asks through InfluxQL (/query), whose JSON
// shows the stored bytes: Flux's CSV drops carriage returns inside values
// and gives an empty string back as null.
func stored(t *testing.T, in *testsvc.Influx, m string, cols ...string) map[int64]string {
	t.Helper()
	out := map[int64]string{}
	for _, ser := range in.InfluxQL(fmt.Sprintf(`SELECT * FROM %q`, m)) {
		for _, row := range ser.Values {
			var ts int64
			var parts []string
			for _, c := range cols {
				for i, name := range ser.Columns {
					if name == c {
						parts = append(parts, fmt.Sprintf("%s=%q", c, fmt.Sprint(row[i])))
					}
				}
			}
			ts, _ = row[0].(json.Number).Int64()
			out[ts] = strings.Join(parts, " ")
		}
	}
	return out
}

// Every string a JSON payload can carry is stored byte for byte, or the
// message is refused with a reason: checked against a real InfluxDB, whose
// parser (the same models package in 1.8 and 2.x) undoes only \\ and \".
func TestStringsStoredExactly(t *testing.T) {
	in := testsvc.StartInflux(t)
	m, err := sensor.NewMapper(sensor.MapperConfig{TopicPattern: "s/{k}/{_measurement}", StaticTags: map[string]string{"gateway": "gw"}})
	if err != nil {
		t.Fatal(err)
	}
	values := []string{"", "plain", `back\slash`, `trailing\`, `\\`, `\`, `"`, `q"uote`, `\"`, `"\`,
		`\n`, `\t`, `\r`, `\\n`, `a\\\"b`, `C:\new\table`, "tab\tx", "cr\rx", "crlf-no\r", "é ✓ 😀", "a,b=c d"}
	for c := 0; c < 0x20; c++ {
		if c != '\n' {
			values = append(values, fmt.Sprintf("c%02x<%c>", c, c))
		}
	}
	values = append(values, "del<\x7f>")
	var body []byte
	want := map[int64]string{}
	for i, v := range values {
		ts := 1_700_000_000_000 + int64(i)
		payload := fmt.Appendf(nil, `{"ts":%d,"s":%s}`, ts, jsonString(v))
		var n int
		body, n, err = m.Append(body, sensor.Message{Topic: "s/k/json", Payload: payload, Received: time.Now()}, sensor.FormatJSON)
		if err != nil || n != 1 {
			t.Fatalf("value %q: %d points, %v", v, n, err)
		}
		want[ts*1e6] = fmt.Sprintf("s=%q", v)
	}
	for _, v := range []string{"new\nline", "\n", "end\n"} {
		_, _, err := m.Append(nil, sensor.Message{Topic: "s/k/json", Payload: fmt.Appendf(nil, `{"s":%s}`, jsonString(v)), Received: time.Now()}, sensor.FormatJSON)
		var de *sensor.DecodeError
		if !errors.As(err, &de) || de.Reason != sensor.ReasonNewline {
			t.Fatalf("value %q: err %v, want reason %s", v, err, sensor.ReasonNewline)
		}
	}

	// Tag values from topic levels: stored exactly, or the topic refused.
	good := []string{`a\b`, `a\\b`, `sp ace`, `com,ma`, `eq=ual`, `"q"`, `\n`, `\"`, `é`}
	bad := []string{`a\`, `a\\`, `a\,b`, `a\ b`, `a\=b`, `a\\,b`, `a\\ b`, `x\\=y`, "tab\tx"}
	for i, v := range good {
		ts := 1_750_000_000_000 + int64(i)
		var n int
		body, n, err = m.Append(body, sensor.Message{Topic: "s/" + v + "/tags", Payload: fmt.Appendf(nil, `{"ts":%d,"v":1}`, ts), Received: time.Now()}, sensor.FormatJSON)
		if err != nil || n != 1 {
			t.Fatalf("tag value %q: %d points, %v", v, n, err)
		}
	}
	for _, v := range bad {
		_, _, err := m.Append(nil, sensor.Message{Topic: "s/" + v + "/tags", Payload: []byte(`{"v":1}`), Received: time.Now()}, sensor.FormatJSON)
		var de *sensor.DecodeError
		if !errors.As(err, &de) || de.Reason != sensor.ReasonBadTopic {
			t.Fatalf("tag value %q: err %v, want reason %s", v, err, sensor.ReasonBadTopic)
		}
	}
	// Measurement names from a topic level.
	measurements := []string{"m=x", "sp ace", "co,mma", `"q"`, `a\b`, "x#y", "é"}
	for i, v := range measurements {
		var n int
		body, n, err = m.Append(body, sensor.Message{Topic: "s/k/" + v, Payload: fmt.Appendf(nil, `{"ts":%d,"v":1}`, 1_750_000_000_000+int64(i)), Received: time.Now()}, sensor.FormatJSON)
		if err != nil || n != 1 {
			t.Fatalf("measurement %q: %d points, %v", v, n, err)
		}
	}
	write(t, in, body)
	for _, v := range measurements {
		if rows := stored(t, in, v, "v"); len(rows) != 1 {
			t.Errorf("measurement %q: %d points stored under that name", v, len(rows))
		}
	}

	got := stored(t, in, "json", "s")
	for ts, w := range want {
		if got[ts] != w {
			t.Errorf("at %d: stored %s, sent %s", ts, got[ts], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("stored %d points, want %d", len(got), len(want))
	}
	tags := stored(t, in, "tags", "k")
	for i, v := range good {
		ts := (1_750_000_000_000 + int64(i)) * 1e6
		if w := fmt.Sprintf("k=%q", v); tags[ts] != w {
			t.Errorf("tag value %q: stored %s", v, tags[ts])
		}
	}
}

// Line-protocol payloads are stored as InfluxDB stores the same lines
// written to it directly: each line goes once straight to InfluxDB (no
// gateway tag) and once through the mapper, and the values must agree.
func TestLineProtocolStoredAsInfluxDBWould(t *testing.T) {
	in := testsvc.StartInflux(t)
	m, err := sensor.NewMapper(sensor.MapperConfig{StaticTags: map[string]string{"gateway": "gw"}})
	if err != nil {
		t.Fatal(err)
	}
	lines := []string{
		`lp s="a\nb"`, `lp s="a\tb"`, `lp s="a\rb"`, "lp s=\"raw\ttab\"", "lp s=\"raw\rcr\"",
		`lp s="C:\\new"`, `lp s="C:\new"`, `lp s="q\"x"`, `lp s="end\\"`, `lp s="\\\\n"`, `lp s="\\\n"`,
		`lp s="a\\\"b"`, `lp s="\x"`, `lp s="x",n=1i`, `lp n=2i,s="y\n"`, `lp,k=a\ b s="t"`, `lp,k=a\,b s="t"`,
		`lp,k=a\=b s="t"`, `lp,k=\n s="t"`, `lp f\ k="v\t"`, `lp s="é\n😀"`,
	}
	// Each line is written directly at T+i and through the mapper at
	// T+1000+i; the gateway tag tells the copies apart too.
	const T = 1_700_000_000_000_000_000
	var direct, mapped []byte
	for i, l := range lines {
		direct = fmt.Appendf(direct, "%s %d\n", l, T+int64(i))
		var n int
		mapped, n, err = m.Append(mapped, sensor.Message{Topic: "lp", Payload: fmt.Appendf(nil, "%s %d", l, T+1000+int64(i)), Received: time.Now()}, sensor.FormatLine)
		if err != nil || n != 1 {
			t.Fatalf("line %q: %d points, %v", l, n, err)
		}
	}
	write(t, in, direct)
	write(t, in, mapped)
	cols := []string{"k", "s", "n", "f k"}
	all := stored(t, in, "lp", append(cols, "gateway")...)
	for i, l := range lines {
		d, g := all[T+int64(i)], all[T+1000+int64(i)]
		if d == "" || g != strings.Replace(d, `gateway="<nil>"`, `gateway="gw"`, 1) {
			t.Errorf("line %q: InfluxDB stores %s, through the mapper %s", l, d, g)
		}
	}

	raw := "lp s=\"new\nline\" 1"
	if _, _, err := m.Append(nil, sensor.Message{Topic: "lp", Payload: []byte(raw), Received: time.Now()}, sensor.FormatLine); !isReason(err, sensor.ReasonNewline) {
		t.Fatalf("raw newline in a string: %v, want %s", err, sensor.ReasonNewline)
	}
}

func isReason(err error, reason string) bool {
	var de *sensor.DecodeError
	return errors.As(err, &de) && de.Reason == reason
}

// jsonString encodes s as a JSON string, escaping every control character.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
