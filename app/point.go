package app

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/influxdata/line-protocol/v2/lineprotocol"
	"github.com/tidwall/gjson"
)

// Message is one MQTT message as the gateway received it.
type Message struct {
	Topic    string
	Payload  []byte
	Received time.Time // when the gateway took it; the fallback timestamp
}

// Format is how a subscription's payloads are encoded.
type Format string

// Payload formats, chosen per subscription.
const (
	FormatJSON Format = "json" // a JSON object of fields, optional "ts"
	FormatLine Format = "line" // InfluxDB line protocol, one or more lines
)

// Reasons a message is rejected. They are metric label values and appear in
// the dead-letter file, so they never change once released.
const (
	ReasonTooLarge  = "too_large"
	ReasonBadUTF8   = "bad_utf8"
	ReasonNotJSON   = "not_json"
	ReasonNotObject = "not_object"
	ReasonBadTS     = "bad_ts"
	ReasonBadField  = "bad_field"
	ReasonNoFields  = "no_fields"
	ReasonBadTopic  = "bad_topic"
	ReasonBadLine   = "bad_line_protocol"
	ReasonRejected  = "rejected_by_database" // InfluxDB answered 400 for the point
)

// DecodeError says why a message cannot become points.
type DecodeError struct {
	Reason string // one of the Reason constants
	Err    error
}

func (e *DecodeError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

func decodeErr(reason, format string, args ...any) error {
	return &DecodeError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// TimestampKey is the JSON key holding the device time.
const TimestampKey = "ts"

// DefaultTopicPattern maps sensors/<site>/<device>/<measurement>.
const DefaultTopicPattern = "sensors/{site}/{device}/{_measurement}"

// DefaultMaxPayload is the largest payload accepted, in bytes.
const DefaultMaxPayload = 64 << 10

// The line protocol cannot represent times outside these bounds.
var (
	minTime = time.Unix(0, math.MinInt64+1)
	maxTime = time.Unix(0, math.MaxInt64)
)

// level is one level of a topic pattern.
type level struct {
	literal string // match exactly, unless tag/measurement/skip is set
	tag     string // the level's value becomes this tag
	meas    bool   // the level's value is the measurement
	skip    bool   // "+": any value, ignored
}

// tagSource is one output tag: a static value or a topic level.
type tagSource struct {
	key    string
	static string
	level  int // index into the topic levels, or -1 for static
}

// Mapper turns MQTT messages into InfluxDB line protocol. It is safe for
// concurrent use and allocates little: it is on the hot path of every
// message.
type Mapper struct {
	levels      []level
	measurement string // fixed measurement when the pattern has none
	tags        []tagSource
	staticOnly  []tagSource // static tags alone, for line-protocol payloads
	maxPayload  int

	// prefixes caches, per topic, the escaped start of its lines
	// ("measurement,tag=value,..."): sensors publish on a bounded set of
	// topics, and escaping the same names for every message was a tenth
	// of the gateway's CPU. Bounded by maxPrefixes; topics beyond it are
	// encoded per message.
	prefixes  sync.Map // string → []byte
	nPrefixes atomic.Int32
}

const maxPrefixes = 4096

// MapperConfig configures a Mapper.
type MapperConfig struct {
	// TopicPattern names each topic level: a literal matches exactly,
	// {name} makes the level a tag, {_measurement} makes it the
	// measurement, + ignores it.
	TopicPattern string
	// Measurement is used when the pattern has no {_measurement}.
	Measurement string
	// StaticTags are added to every point (e.g. gateway="gw-1").
	StaticTags map[string]string
	// MaxPayload bounds a payload's size in bytes; 0 means DefaultMaxPayload.
	MaxPayload int
}

// NewMapper validates cfg and prepares a Mapper.
func NewMapper(cfg MapperConfig) (*Mapper, error) {
	if cfg.TopicPattern == "" {
		cfg.TopicPattern = DefaultTopicPattern
	}
	m := &Mapper{maxPayload: cfg.MaxPayload, measurement: cfg.Measurement}
	if m.maxPayload <= 0 {
		m.maxPayload = DefaultMaxPayload
	}
	seen := map[string]bool{}
	hasMeas := false
	for i, part := range strings.Split(cfg.TopicPattern, "/") {
		switch {
		case part == "+":
			m.levels = append(m.levels, level{skip: true})
		case part == "{_measurement}":
			if hasMeas {
				return nil, fmt.Errorf("topic pattern %q: {_measurement} appears twice", cfg.TopicPattern)
			}
			hasMeas = true
			m.levels = append(m.levels, level{meas: true})
		case strings.HasPrefix(part, "{") && strings.HasSuffix(part, "}"):
			name := part[1 : len(part)-1]
			if !validName(name) || strings.HasPrefix(name, "_") {
				return nil, fmt.Errorf("topic pattern %q: bad tag name %q", cfg.TopicPattern, name)
			}
			if seen[name] {
				return nil, fmt.Errorf("topic pattern %q: tag %q appears twice", cfg.TopicPattern, name)
			}
			seen[name] = true
			m.levels = append(m.levels, level{tag: name})
			m.tags = append(m.tags, tagSource{key: name, level: i})
		case part == "" || strings.ContainsAny(part, "#{}+"):
			return nil, fmt.Errorf("topic pattern %q: bad level %q", cfg.TopicPattern, part)
		default:
			m.levels = append(m.levels, level{literal: part})
		}
	}
	if !hasMeas && !validName(cfg.Measurement) {
		return nil, fmt.Errorf("topic pattern %q has no {_measurement}, so a measurement name is required", cfg.TopicPattern)
	}
	for k, v := range cfg.StaticTags {
		if !validName(k) || strings.HasPrefix(k, "_") {
			return nil, fmt.Errorf("static tag: bad name %q", k)
		}
		if seen[k] {
			return nil, fmt.Errorf("static tag %q is also a topic level", k)
		}
		if !validName(v) {
			return nil, fmt.Errorf("static tag %q: bad value %q", k, v)
		}
		ts := tagSource{key: k, static: v, level: -1}
		m.tags = append(m.tags, ts)
		m.staticOnly = append(m.staticOnly, ts)
	}
	byKey := func(a, b tagSource) int { return strings.Compare(a.key, b.key) }
	slices.SortFunc(m.tags, byKey)
	slices.SortFunc(m.staticOnly, byKey)
	return m, nil
}

// validName reports whether s can be a measurement, tag key or tag value.
func validName(s string) bool {
	if s == "" || !utf8.ValidString(s) || strings.HasSuffix(s, `\`) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// Append decodes msg and appends its points to dst as line protocol with
// nanosecond timestamps. It returns the extended buffer and the number of
// points; on error dst is returned unchanged.
func (m *Mapper) Append(dst []byte, msg Message, format Format) ([]byte, int, error) {
	if len(msg.Payload) > m.maxPayload {
		return dst, 0, decodeErr(ReasonTooLarge, "payload is %d bytes, limit %d", len(msg.Payload), m.maxPayload)
	}
	if !utf8.Valid(msg.Payload) {
		return dst, 0, decodeErr(ReasonBadUTF8, "payload is not valid UTF-8")
	}
	if format == FormatLine {
		return m.appendLine(dst, msg)
	}
	return m.appendJSON(dst, msg)
}

// topicValues splits a topic by the pattern: the measurement and the
// topic levels.
func (m *Mapper) topicValues(topic string, levels *[8]string) (meas string, vals []string, err error) {
	vals = levels[:0]
	meas = m.measurement
	rest := topic
	for i, lv := range m.levels {
		var part string
		if j := strings.IndexByte(rest, '/'); j >= 0 && i < len(m.levels)-1 {
			part, rest = rest[:j], rest[j+1:]
		} else if i == len(m.levels)-1 && !strings.Contains(rest, "/") {
			part, rest = rest, ""
		} else {
			return "", nil, decodeErr(ReasonBadTopic, "topic %q does not match the pattern (%d levels)", topic, len(m.levels))
		}
		switch {
		case lv.meas:
			if !validName(part) {
				return "", nil, decodeErr(ReasonBadTopic, "topic %q: bad measurement %q", topic, part)
			}
			meas = part
		case lv.tag != "":
			if !validName(part) {
				return "", nil, decodeErr(ReasonBadTopic, "topic %q: bad value %q for tag %s", topic, part, lv.tag)
			}
		case lv.skip:
		default:
			if part != lv.literal {
				return "", nil, decodeErr(ReasonBadTopic, "topic %q: level %d is %q, want %q", topic, i+1, part, lv.literal)
			}
		}
		vals = append(vals, part)
	}
	return meas, vals, nil
}

type jsonField struct {
	key string
	val lineprotocol.Value
}

// linePrefix returns the escaped "measurement,tag=value,..." of a topic's
// lines, from the cache when it can.
func (m *Mapper) linePrefix(topic string) ([]byte, error) {
	if p, ok := m.prefixes.Load(topic); ok {
		return p.([]byte), nil
	}
	var lv [8]string
	meas, levels, err := m.topicValues(topic, &lv)
	if err != nil {
		return nil, err
	}
	var enc lineprotocol.Encoder
	// Every name was checked by validName (the encoder's own rules) and
	// tags are pre-sorted: skip the second check.
	enc.SetLax(true)
	enc.StartLine(meas)
	for _, t := range m.tags {
		if t.level >= 0 {
			enc.AddTag(t.key, levels[t.level])
		} else {
			enc.AddTag(t.key, t.static)
		}
	}
	p := enc.Bytes()
	if m.nPrefixes.Load() < maxPrefixes {
		if _, loaded := m.prefixes.LoadOrStore(topic, p); !loaded {
			m.nPrefixes.Add(1)
		}
	}
	return p, nil
}

func (m *Mapper) appendJSON(dst []byte, msg Message) ([]byte, int, error) {
	prefix, err := m.linePrefix(msg.Topic)
	if err != nil {
		return dst, 0, err
	}
	// gjson validates and walks the object without building a map: this
	// is the hot path of every message (see BenchmarkMapperJSON).
	if !gjson.ValidBytes(msg.Payload) {
		return dst, 0, decodeErr(ReasonNotJSON, "payload is not valid JSON")
	}
	// gjson.ParseBytes copies the payload into a string, the one
	// allocation per message left here. A string viewing the bytes is
	// safe: nothing writes to the payload during this call, and no
	// result (keys, string values) outlives it; the encoder copies them.
	obj := gjson.Parse(unsafe.String(unsafe.SliceData(msg.Payload), len(msg.Payload)))
	if !obj.IsObject() {
		return dst, 0, decodeErr(ReasonNotObject, "payload is a JSON %s, want an object", gjsonKind(obj))
	}
	ts := msg.Received
	var fieldBuf [16]jsonField
	fields := fieldBuf[:0]
	var ferr error
	obj.ForEach(func(key, v gjson.Result) bool {
		k := key.Str
		if k == TimestampKey {
			ts, ferr = parseTS(v)
			return ferr == nil
		}
		if !validName(k) {
			ferr = decodeErr(ReasonBadField, "bad field name %q", k)
			return false
		}
		var val lineprotocol.Value
		ok := true
		switch v.Type {
		case gjson.Null:
			return true // null means "no value this time"
		case gjson.Number:
			f, perr := strconv.ParseFloat(v.Raw, 64)
			if perr != nil {
				ferr = decodeErr(ReasonBadField, "field %q: number %s out of range", k, v.Raw)
				return false
			}
			val, ok = lineprotocol.FloatValue(f)
		case gjson.True, gjson.False:
			val = lineprotocol.BoolValue(v.Type == gjson.True)
		case gjson.String:
			val, ok = lineprotocol.StringValue(v.Str)
		default:
			ferr = decodeErr(ReasonBadField, "field %q: %s values are not supported", k, gjsonKind(v))
			return false
		}
		if !ok {
			ferr = decodeErr(ReasonBadField, "field %q: value cannot be stored", k)
			return false
		}
		fields = append(fields, jsonField{k, val})
		return true
	})
	if ferr != nil {
		return dst, 0, ferr
	}
	// A key given twice: the last one wins, as in most JSON decoders.
	slices.SortStableFunc(fields, func(a, b jsonField) int { return strings.Compare(a.key, b.key) })
	fields = dedupLast(fields)
	if len(fields) == 0 {
		return dst, 0, decodeErr(ReasonNoFields, "payload has no fields")
	}
	// The encoder has no way to start a line from already escaped bytes,
	// so it starts one with a placeholder measurement "m" right after all
	// but the last byte of the cached prefix, and that byte replaces the
	// placeholder: the line is the prefix followed by the encoder's fields.
	var enc lineprotocol.Encoder
	at := len(dst) + len(prefix) - 1
	enc.SetBuffer(append(dst, prefix[:len(prefix)-1]...))
	enc.SetPrecision(lineprotocol.Nanosecond)
	// Field names were checked by validName above (the encoder's own
	// rules) and sorted: skip the second check.
	enc.SetLax(true)
	enc.StartLine("m")
	for _, f := range fields {
		enc.AddField(f.key, f.val)
	}
	enc.EndLine(ts)
	if err := enc.Err(); err != nil {
		return dst, 0, decodeErr(ReasonBadField, "%v", err)
	}
	out := enc.Bytes()
	out[at] = prefix[len(prefix)-1]
	return out, 1, nil
}

// parseTS reads the device time: integer unix milliseconds or RFC 3339.
func parseTS(v gjson.Result) (time.Time, error) {
	var t time.Time
	switch v.Type {
	case gjson.Number:
		ms, err := strconv.ParseInt(v.Raw, 10, 64)
		if err != nil {
			return t, decodeErr(ReasonBadTS, "ts %s is not integer unix milliseconds", v.Raw)
		}
		if ms < minTime.UnixMilli() || ms > maxTime.UnixMilli() {
			return t, decodeErr(ReasonBadTS, "ts %d is out of range", ms)
		}
		t = time.UnixMilli(ms)
	case gjson.String:
		var err error
		t, err = time.Parse(time.RFC3339Nano, v.Str)
		if err != nil {
			return t, decodeErr(ReasonBadTS, "ts %q is not RFC 3339", v.Str)
		}
		if t.Before(minTime) || t.After(maxTime) {
			return t, decodeErr(ReasonBadTS, "ts %q is out of range", v.Str)
		}
	default:
		return t, decodeErr(ReasonBadTS, "ts is a %s, want integer unix milliseconds or an RFC 3339 string", gjsonKind(v))
	}
	return t, nil
}

func gjsonKind(v gjson.Result) string {
	switch {
	case v.IsObject():
		return "object"
	case v.IsArray():
		return "array"
	case v.Type == gjson.Null:
		return "null"
	case v.Type == gjson.True || v.Type == gjson.False:
		return "boolean"
	case v.Type == gjson.Number:
		return "number"
	case v.Type == gjson.String:
		return "string"
	}
	return "value"
}

// dedupLast keeps the last of each run of equal keys in a sorted slice.
func dedupLast(fields []jsonField) []jsonField {
	out := fields[:0]
	for i, f := range fields {
		if i+1 < len(fields) && fields[i+1].key == f.key {
			continue
		}
		out = append(out, f)
	}
	return out
}

// appendLine validates line-protocol payloads and re-encodes them with the
// static tags and a fixed timestamp, so a redelivery overwrites the same
// point. A payload with any bad line is rejected whole: half a message in
// the database is harder to reason about than none.
func (m *Mapper) appendLine(dst []byte, msg Message) ([]byte, int, error) {
	dec := lineprotocol.NewDecoderWithBytes(msg.Payload)
	var enc lineprotocol.Encoder
	enc.SetBuffer(dst)
	enc.SetPrecision(lineprotocol.Nanosecond)
	type kv struct{ k, v []byte }
	var tags []kv
	// The decoder's slices are valid only until its next call, so keep
	// the measurement and tags in a scratch arena while sorting them. The
	// arena is reused line after line: the encoder has copied a line's
	// bytes by the time the next one starts. (When it grows, the slices
	// kept so far still point into the old array, which nothing changes.)
	scratch := make([]byte, 0, 256)
	keep := func(b []byte) []byte {
		start := len(scratch)
		scratch = append(scratch, b...)
		return scratch[start:len(scratch):len(scratch)]
	}
	n := 0
	for dec.Next() {
		scratch = scratch[:0]
		meas, err := dec.Measurement()
		if err != nil {
			return dst, 0, decodeErr(ReasonBadLine, "line %d: %v", n+1, err)
		}
		meas = keep(meas)
		tags = tags[:0]
		for {
			k, v, err := dec.NextTag()
			if err != nil {
				return dst, 0, decodeErr(ReasonBadLine, "line %d: %v", n+1, err)
			}
			if k == nil {
				break
			}
			tags = append(tags, kv{keep(k), keep(v)})
		}
		for _, s := range m.staticOnly {
			tags = append(tags, kv{[]byte(s.key), []byte(s.static)})
		}
		slices.SortFunc(tags, func(a, b kv) int { return bytes.Compare(a.k, b.k) })
		enc.StartLineRaw(meas)
		for i, t := range tags {
			if i > 0 && bytes.Equal(tags[i-1].k, t.k) {
				return dst, 0, decodeErr(ReasonBadLine, "line %d: tag %q given twice", n+1, t.k)
			}
			enc.AddTagRaw(t.k, t.v)
		}
		fields := 0
		for {
			k, v, err := dec.NextField()
			if err != nil {
				return dst, 0, decodeErr(ReasonBadLine, "line %d: %v", n+1, err)
			}
			if k == nil {
				break
			}
			enc.AddFieldRaw(k, v)
			fields++
		}
		if fields == 0 {
			return dst, 0, decodeErr(ReasonBadLine, "line %d: no fields", n+1)
		}
		ts, err := dec.Time(lineprotocol.Nanosecond, msg.Received)
		if err != nil {
			return dst, 0, decodeErr(ReasonBadLine, "line %d: %v", n+1, err)
		}
		enc.EndLine(ts)
		if err := enc.Err(); err != nil {
			return dst, 0, decodeErr(ReasonBadLine, "line %d: %v", n+1, err)
		}
		n++
	}
	if err := dec.Err(); err != nil {
		return dst, 0, decodeErr(ReasonBadLine, "%v", err)
	}
	if n == 0 {
		return dst, 0, decodeErr(ReasonNoFields, "payload has no lines")
	}
	return enc.Bytes(), n, nil
}
