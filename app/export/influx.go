package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/influxdata/influxdb-client-go/v2/api/query"
	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/iot-gateway/iot-gateway/app/sensor"
)

// Source reads a bucket's data through the v2 query API (InfluxDB 2, and
// InfluxDB 1.8 with Flux enabled).
type Source struct {
	client influxdb2.Client
	query  api.QueryAPI
	bucket string
}

// newHTTPClient has no overall timeout (a day's data may stream for a
// while; the context bounds it) but gives up quickly on a database that
// does not answer at all.
func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 5 * time.Minute, // a query may think before the first row
		MaxIdleConnsPerHost:   4,
	}}
}

// NewSource connects to the database named by in; it does no I/O.
func NewSource(in Influx) *Source {
	opts := influxdb2.DefaultOptions().SetHTTPClient(newHTTPClient()).SetApplicationName("iotgw-export")
	c := influxdb2.NewClientWithOptions(in.URL, in.Token, opts)
	return &Source{client: c, query: c.QueryAPI(in.Org), bucket: in.Bucket}
}

// Close releases idle connections.
func (s *Source) Close() { s.client.Close() }

func fluxTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// fluxString writes s as a Flux string expression. Newer Flux
// interpolates ${...} inside string literals and older Flux (InfluxDB 1.8)
// knows no escape for it, so a "${" in s is split across two
// concatenated literals.
func fluxString(s string) string {
	s = strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
	return `"` + strings.ReplaceAll(s, "${", `$" + "{`) + `"`
}

// Measurements lists the measurements of the bucket with data in w, sorted.
// InfluxDB 2 answers schema.measurements from the index for the window;
// InfluxDB 1.8's Flux has no schema package, so there v1.measurements lists
// every measurement of the bucket and the empty ones are skipped later.
func (s *Source) Measurements(ctx context.Context, w Window) ([]string, error) {
	q := fmt.Sprintf(`import "influxdata/influxdb/schema"
schema.measurements(bucket: %s, start: %s, stop: %s)`, fluxString(s.bucket), fluxTime(w.From), fluxTime(w.To))
	names, err := s.column(ctx, q)
	if err != nil && strings.Contains(err.Error(), "unknown import path") {
		q = fmt.Sprintf(`import "influxdata/influxdb/v1"
v1.measurements(bucket: %s)`, fluxString(s.bucket))
		names, err = s.column(ctx, q)
	}
	if err != nil {
		return nil, fmt.Errorf("list measurements of bucket %q: %w", s.bucket, err)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Values counts the field values of each measurement in w (points at
// exactly w.To, which InfluxDB 1.8 returns, left out as in the export).
// Measurements without values in w are absent.
func (s *Source) Values(ctx context.Context, w Window) (map[string]int64, error) {
	q := fmt.Sprintf(`from(bucket: %s)
  |> range(start: %s, stop: %s)
  |> filter(fn: (r) => r._time < %s)
  |> count()
  |> group(columns: ["_measurement"])
  |> sum()`, fluxString(s.bucket), fluxTime(w.From), fluxTime(w.To), fluxTime(w.To))
	res, err := s.query.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("count values of bucket %q in %s: %w", s.bucket, w, err)
	}
	defer res.Close()
	out := map[string]int64{}
	for res.Next() {
		r := res.Record()
		if n, ok := r.Value().(int64); ok && n > 0 {
			out[r.Measurement()] += n
		}
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("count values of bucket %q in %s: %w", s.bucket, w, err)
	}
	return out, nil
}

// column runs q and collects the string _value of every row.
func (s *Source) column(ctx context.Context, q string) ([]string, error) {
	res, err := s.query.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var out []string
	for res.Next() {
		if v, ok := res.Record().Value().(string); ok {
			out = append(out, v)
		}
	}
	return out, res.Err()
}

// WriteLineProtocol streams the points of measurement m in w to out as
// line protocol with nanosecond timestamps, one line per point (all fields
// of a series at one time on one line), and returns how many lines it
// wrote. Rows are encoded as they arrive; nothing holds the whole window.
func (s *Source) WriteLineProtocol(ctx context.Context, w Window, m string, out io.Writer) (int64, error) {
	q := fmt.Sprintf(`from(bucket: %s)
  |> range(start: %s, stop: %s)
  |> filter(fn: (r) => r._measurement == %s)
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")`,
		fluxString(s.bucket), fluxTime(w.From), fluxTime(w.To), fluxString(m))
	res, err := s.query.Query(ctx, q)
	if err != nil {
		return 0, fmt.Errorf("query measurement %q: %w", m, err)
	}
	defer res.Close()

	var (
		enc    lineprotocol.Encoder // measurement and tags of one line
		buf    []byte
		layout tableLayout
		lines  int64
	)
	for res.Next() {
		if res.TableChanged() {
			layout = newTableLayout(res.TableMetadata())
		}
		// range's stop is exclusive, but InfluxDB 1.8 also returns points
		// at exactly stop; they belong to the next window.
		if t := res.Record().Time(); t.Before(w.From) || !t.Before(w.To) {
			continue
		}
		if buf, err = layout.encode(buf, &enc, m, res.Record()); err != nil {
			return lines, fmt.Errorf("measurement %q: %w", m, err)
		}
		lines++
		// Flush every few hundred KB: the buffer stays small.
		if len(buf) >= 256<<10 {
			if _, err := out.Write(buf); err != nil {
				return lines, err
			}
			buf = buf[:0]
		}
	}
	if err := res.Err(); err != nil {
		return lines, fmt.Errorf("query measurement %q: %w", m, err)
	}
	if _, err := out.Write(buf); err != nil {
		return lines, err
	}
	return lines, nil
}

// tableLayout says which columns of a pivoted Flux table are tags (string
// columns in the group key) and which are fields (the rest), tags in the
// lexical order line protocol wants.
type tableLayout struct {
	tags   []string
	fields []string
}

// Columns Flux adds that are neither tags nor fields.
var fluxColumns = map[string]bool{"result": true, "table": true, "_start": true, "_stop": true, "_time": true, "_measurement": true}

func newTableLayout(md *query.FluxTableMetadata) tableLayout {
	var l tableLayout
	for _, c := range md.Columns() {
		if fluxColumns[c.Name()] {
			continue
		}
		if c.IsGroup() {
			l.tags = append(l.tags, c.Name())
		} else {
			l.fields = append(l.fields, c.Name())
		}
	}
	slices.Sort(l.tags)
	return l
}

var errNoFields = errors.New("row has no field values")

// encode appends one row as a line. The line-protocol encoder writes the
// measurement and tags; fields are written here because the encoder escapes
// newlines, tabs and carriage returns in strings, which InfluxDB's parser
// keeps as two bytes: sensor.AppendString writes the value InfluxDB stored.
func (l tableLayout) encode(dst []byte, enc *lineprotocol.Encoder, m string, r *query.FluxRecord) ([]byte, error) {
	if strings.HasPrefix(m, "#") {
		// A line starting with # is a comment, and no escape changes that.
		return dst, fmt.Errorf("measurement %q starts with #: line protocol cannot carry it", m)
	}
	enc.Reset()
	enc.StartLine(m)
	for _, k := range l.tags {
		v, _ := r.ValueByKey(k).(string)
		if v != "" { // an empty tag is no tag in line protocol
			enc.AddTag(k, v)
		}
	}
	if err := enc.Err(); err != nil {
		return dst, err
	}
	out := append(dst, enc.Bytes()...)
	n := 0
	for _, k := range l.fields {
		raw := r.ValueByKey(k)
		if raw == nil { // this series has no such field at this time
			continue
		}
		sep := byte(',')
		if n == 0 {
			sep = ' '
		}
		var ok bool
		if out, ok = sensor.AppendKey(append(out, sep), k); !ok {
			return dst, fmt.Errorf("field key %q cannot be written as line protocol", k)
		}
		out = append(out, '=')
		if s, isString := raw.(string); isString {
			out = sensor.AppendString(out, s)
		} else {
			v, ok := lineprotocol.NewValue(raw)
			if !ok {
				return dst, fmt.Errorf("field %q: value %v (%T) has no line-protocol type", k, raw, raw)
			}
			out = v.AppendBytes(out)
		}
		n++
	}
	if n == 0 {
		return dst, errNoFields
	}
	out = append(strconv.AppendInt(append(out, ' '), r.Time().UnixNano(), 10), '\n')
	return out, nil
}
