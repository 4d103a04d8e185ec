package export

import (
	"math"
	"slices"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/influxdata/influxdb-client-go/v2/api/query"
	"github.com/influxdata/line-protocol/v2/lineprotocol"
)

// FuzzEncodeRow feeds the row encoder arbitrary measurement, tag and field
// names and values, as a pivoted Flux table could hold them. It must never
// panic; what it encodes must parse as one line of line protocol with the
// same measurement, tags, fields and time; and a string value must be
// written with only backslash and quote escaped, so InfluxDB reads it back
// byte for byte.
func FuzzEncodeRow(f *testing.F) {
	f.Add("m", "site", "s1", "v", "text", 1.5, int64(3), true, int64(1773446400000000000))
	f.Add("room temp,x", "loc", `a=b c`, "note", "tab\there\\n\"q\"", math.Copysign(0, -1), int64(-1), false, int64(0))
	f.Add("a${b}\\x", "k", "", "f k", "", math.Inf(1), int64(math.MaxInt64), true, int64(-1))
	f.Add("m", "k\\", "v\\", "f\\", "end\\", 2.0, int64(0), false, int64(5))
	f.Fuzz(func(t *testing.T, m, tagKey, tagVal, strKey, str string, fl float64, in int64, b bool, ns int64) {
		cols := []*query.FluxColumn{
			query.NewFluxColumnFull("string", "", "_measurement", true, 0),
			query.NewFluxColumnFull("string", "", tagKey, true, 1),
			query.NewFluxColumnFull("dateTime:RFC3339Nano", "", "_time", false, 2),
			query.NewFluxColumnFull("string", "", strKey, false, 3),
			query.NewFluxColumnFull("double", "", "zf", false, 4),
			query.NewFluxColumnFull("long", "", "zi", false, 5),
			query.NewFluxColumnFull("boolean", "", "zb", false, 6),
		}
		if fluxColumns[tagKey] || fluxColumns[strKey] || slices.Contains([]string{"zf", "zi", "zb"}, tagKey) || slices.Contains([]string{"zf", "zi", "zb", tagKey}, strKey) {
			return
		}
		// Flux returns strings as the database holds them; a value that is
		// not UTF-8 is written as it is, which the parser below refuses.
		for _, s := range []string{m, tagKey, tagVal, strKey, str} {
			if !utf8.ValidString(s) {
				return
			}
		}
		md := query.NewFluxTableMetadataFull(0, cols)
		rec := query.NewFluxRecord(0, map[string]any{
			"_measurement": m, tagKey: tagVal, "_time": time.Unix(0, ns), strKey: str, "zf": fl, "zi": in, "zb": b,
		})
		var enc lineprotocol.Encoder
		out, err := newTableLayout(md).encode([]byte("prev\n"), &enc, m, rec)
		if err != nil {
			if string(out) != "prev\n" {
				t.Fatalf("error %v but the buffer changed: %q", err, out)
			}
			return
		}
		line := out[len("prev\n"):]
		dec := lineprotocol.NewDecoderWithBytes(line)
		if !dec.Next() {
			t.Fatalf("%q: no line", line)
		}
		gotM, err := dec.Measurement()
		if err != nil || string(gotM) != m {
			t.Fatalf("%q: measurement %q %v, want %q", line, gotM, err, m)
		}
		tags := map[string]string{}
		for {
			k, v, err := dec.NextTag()
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if k == nil {
				break
			}
			tags[string(k)] = string(v)
		}
		if tagVal != "" && (len(tags) != 1 || tags[tagKey] != tagVal) {
			t.Fatalf("%q: tags %q, want %s=%q", line, tags, tagKey, tagVal)
		}
		fields := map[string]lineprotocol.Value{}
		for {
			k, v, err := dec.NextField()
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if k == nil {
				break
			}
			fields[string(k)] = v
		}
		if v, ok := fields[strKey]; !ok || v.Kind() != lineprotocol.String || v.StringV() != str {
			t.Fatalf("%q: string field %q = %v, want %q", line, strKey, v, str)
		}
		if v := fields["zf"]; v.Kind() != lineprotocol.Float || v.FloatV() != fl || math.Signbit(v.FloatV()) != math.Signbit(fl) {
			t.Fatalf("%q: float %v, want %v", line, v, fl)
		}
		if v := fields["zi"]; v.Kind() != lineprotocol.Int || v.IntV() != in {
			t.Fatalf("%q: int %v, want %d", line, v, in)
		}
		if v := fields["zb"]; v.Kind() != lineprotocol.Bool || v.BoolV() != b {
			t.Fatalf("%q: bool %v, want %v", line, v, b)
		}
		if ts, err := dec.Time(lineprotocol.Nanosecond, time.Time{}); err != nil || ts.UnixNano() != ns {
			t.Fatalf("%q: time %v %v, want %d", line, ts, err, ns)
		}
		if dec.Next() {
			t.Fatalf("%q: more than one line", line)
		}
	})
}
