package sensor

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/influxdata/line-protocol/v2/lineprotocol"
	"github.com/tidwall/gjson"
)

// Message is one MQTT message as the gateway received it.
type Message struct {
	// Topic is valid while the message is handled (it may view the
	// session's read buffer): copy it to keep it.
	Topic    string
	Payload  []byte
	Received time.Time // when the gateway took it; the last fallback timestamp
	// Cached is what the topic cache had for Topic when the message was
	// read (the zero Topic when it was not looked up), so that the mapper
	// does not look it up again.
	Cached Topic
	// Props are the user properties of the MQTT 5 PUBLISH (nil for MQTT
	// 3.1.1), valid as long as Payload is. The mapper reads only those its
	// configuration names (MapperConfig.TimestampProperty).
	Props Props
}

// Props reads a message's MQTT 5 user properties. It is an interface so
// that the MQTT package keeps the encoding, and a pointer fits it without
// an allocation per message.
type Props interface {
	// UserProperty returns the value of the first user property named key
	// and how many user properties carry that key (MQTT 5 lets a key
	// repeat). The value is valid only as long as the message.
	UserProperty(key string) (value []byte, n int)
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
	// ReasonBadTSProperty: the user property named by
	// MapperConfig.TimestampProperty is present but is not a time.
	ReasonBadTSProperty = "bad_ts_property"
	ReasonBadField      = "bad_field"
	ReasonNoFields      = "no_fields"
	ReasonBadTopic      = "bad_topic"
	ReasonBadLine       = "bad_line_protocol"
	// ReasonNewline: a string value holds a newline. Line protocol ends a
	// point at a newline and has no escape InfluxDB turns back into one, so
	// the value cannot be stored as sent.
	ReasonNewline  = "newline_in_string"
	ReasonRejected = "rejected_by_database" // InfluxDB answered 400 for the point
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
	precisions  []linePrecision
	tsProp      string                 // user property holding the device time; "" when off
	tsPropUnit  lineprotocol.Precision // unit of an integer tsProp value

	// topics caches, per topic, the escaped start of its lines
	// ("measurement,tag=value,..."): escaping the same names for every
	// message was a tenth of the gateway's CPU. The broker session shares
	// it (Topics), so a message costs one lookup.
	topics *TopicCache
}

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
	// TopicCacheBytes bounds the memory of the topic cache (Topics);
	// 0 means DefaultTopicCacheBytes.
	TopicCacheBytes int
	// LinePrecision maps topic filters to the unit of the timestamps in
	// line-protocol payloads on matching topics: "ns" (the default), "us",
	// "ms" or "s". When several filters match, the first in sorted order wins.
	LinePrecision map[string]string
	// TimestampProperty names an MQTT 5 user property whose value is the
	// device time of the message's points: an integer in
	// TimestampPropertyPrecision or an RFC 3339 time. It stands in for the
	// receive time; a payload's own timestamp still wins. "" turns it off.
	TimestampProperty string
	// TimestampPropertyPrecision is the unit of an integer
	// TimestampProperty: "ns", "us", "ms" (the default, as for a JSON
	// "ts") or "s".
	TimestampPropertyPrecision string
}

// linePrecision is one LinePrecision entry.
type linePrecision struct {
	filter []string // levels
	prec   lineprotocol.Precision
}

// ParsePrecision reads "ns", "us" (or "µs"), "ms" or "s".
func ParsePrecision(s string) (lineprotocol.Precision, error) {
	switch s {
	case "ns":
		return lineprotocol.Nanosecond, nil
	case "us", "µs":
		return lineprotocol.Microsecond, nil
	case "ms":
		return lineprotocol.Millisecond, nil
	case "s":
		return lineprotocol.Second, nil
	}
	return 0, fmt.Errorf("precision %q is not ns, us, ms or s", s)
}

// linePrecision returns the timestamp unit of line-protocol payloads on topic.
func (m *Mapper) linePrecision(topic string) lineprotocol.Precision {
	for _, lp := range m.precisions {
		if matchFilter(lp.filter, topic) {
			return lp.prec
		}
	}
	return lineprotocol.Nanosecond
}

// matchFilter reports whether an MQTT topic filter (split into levels,
// without a $share/group/ prefix) matches topic.
func matchFilter(filter []string, topic string) bool {
	if strings.HasPrefix(topic, "$") && len(filter) > 0 && (filter[0] == "#" || filter[0] == "+") {
		return false // wildcards do not match $SYS-style topics
	}
	for i, f := range filter {
		if f == "#" {
			return true
		}
		level, rest, more := strings.Cut(topic, "/")
		if f != "+" && f != level {
			return false
		}
		if !more {
			return i == len(filter)-1 || (i == len(filter)-2 && filter[i+1] == "#")
		}
		topic = rest
	}
	return false
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
	if strings.HasPrefix(cfg.Measurement, "#") {
		// A line starting with # is a comment, and no escape changes that.
		return nil, fmt.Errorf("measurement %q: a name starting with # cannot be written in line protocol", cfg.Measurement)
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
	for _, f := range slices.Sorted(maps.Keys(cfg.LinePrecision)) {
		p, err := ParsePrecision(cfg.LinePrecision[f])
		if err != nil {
			return nil, fmt.Errorf("line_precision %q: %w", f, err)
		}
		levels := strings.Split(f, "/")
		if levels[0] == "$share" {
			if len(levels) < 3 {
				return nil, fmt.Errorf("line_precision: filter %q has no topic after $share/<group>/", f)
			}
			levels = levels[2:]
		}
		for i, l := range levels {
			if (l == "#" && i != len(levels)-1) || (l != "#" && l != "+" && strings.ContainsAny(l, "#+")) || f == "" {
				return nil, fmt.Errorf("line_precision: %q is not a topic filter", f)
			}
		}
		m.precisions = append(m.precisions, linePrecision{filter: levels, prec: p})
	}
	if err := m.setTimestampProperty(cfg.TimestampProperty, cfg.TimestampPropertyPrecision); err != nil {
		return nil, err
	}
	byKey := func(a, b tagSource) int { return strings.Compare(a.key, b.key) }
	slices.SortFunc(m.tags, byKey)
	slices.SortFunc(m.staticOnly, byKey)
	m.topics = NewTopicCache(m, cfg.TopicCacheBytes)
	return m, nil
}

// validName reports whether s can be a measurement, tag key, tag value or
// field key that InfluxDB stores exactly as it is: printable UTF-8, and no
// backslash before a comma, space or equals sign, or at the end. InfluxDB's
// parser reads a backslash and the next byte as a pair in some places and
// takes a delimiter after a backslash for an escaped one in others, so such
// a backslash followed by the encoder's own escape changes where the name
// ends, or makes the line unparsable. (A measurement does not escape "=",
// but the same rule keeps it simple.)
func validName(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c == 0x7f:
			return false
		case c == '\\':
			if i+1 == len(s) {
				return false
			}
			if n := s[i+1]; n == ',' || n == ' ' || n == '=' {
				return false
			}
		}
	}
	return true
}

func validNameBytes(b []byte) bool { return validName(unsafe.String(unsafe.SliceData(b), len(b))) }

// appendName appends a measurement (escaping comma and space) or a key or
// tag value (also equals) as line protocol; validName has checked it.
func appendName(dst []byte, s string, equals bool) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ',' || c == ' ' || (equals && c == '=') {
			dst = append(dst, '\\')
		}
		dst = append(dst, c)
	}
	return dst
}

// AppendString appends s as a line-protocol string field value that
// InfluxDB stores byte for byte. Its parser undoes only the escapes of
// backslash and double quote (not the \\n, \\t, \\r the line-protocol
// library writes), so every other byte, tab, carriage return and newline
// included, is written as it is. (The mapper refuses newlines before: see
// ReasonNewline.)
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			dst = append(dst, '\\')
		}
		dst = append(dst, s[i])
	}
	return append(dst, '"')
}

// AppendKey appends a field key, escaping comma, space and equals sign; it
// reports false for a key ValidName refuses.
func AppendKey(dst []byte, k string) ([]byte, bool) {
	if !validName(k) {
		return dst, false
	}
	return appendName(dst, k, true), true
}

// ValidName reports whether s can be a measurement, tag key, tag value or
// field key that InfluxDB stores exactly as it is (see validName).
func ValidName(s string) bool { return validName(s) }

// appendValue appends a field value.
func appendValue(dst []byte, v lineprotocol.Value) ([]byte, bool) {
	if v.Kind() == lineprotocol.String {
		if strings.IndexByte(v.StringV(), '\n') >= 0 {
			return dst, false
		}
		return AppendString(dst, v.StringV()), true
	}
	return v.AppendBytes(dst), true
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
	// The time of points whose payload gives none: the device's, from the
	// timestamp property, else the receive time.
	at := msg.Received
	if m.tsProp != "" && msg.Props != nil {
		t, ok, err := m.propertyTime(msg.Props)
		if err != nil {
			return dst, 0, err
		}
		if ok {
			at = t
		}
	}
	if format == FormatLine {
		return m.appendLine(dst, msg, at)
	}
	return m.appendJSON(dst, msg, at)
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

// Topics is the mapper's topic cache, for the broker session to share.
func (m *Mapper) Topics() *TopicCache { return m.topics }

// maxStackPrefix is the longest line prefix built without an allocation.
const maxStackPrefix = 256

// linePrefix returns the escaped "measurement,tag=value,..." of a topic's
// lines, from the cache when it can; buf is scratch space for one that is
// not cached.
func (m *Mapper) linePrefix(topic string, cached Topic, format Format, buf *[maxStackPrefix]byte) ([]byte, error) {
	if p, ok := m.carriedPrefix(topic, cached); ok {
		return p, nil
	}
	if cached.passing && cached.cache == m.topics && cached.Name == topic {
		// Declined by a frozen shard a moment ago: build, do not look
		// again.
		return m.buildPrefix(buf[:0], topic)
	}
	t, ok := m.topics.lookupString(topic)
	if ok && t.prefix != nil {
		return t.prefix, nil
	}
	p, err := m.buildPrefix(buf[:0], topic)
	if err != nil {
		return nil, err
	}
	if !ok {
		if t, ok := m.topics.add(maphash.String(m.topics.seed, topic), unsafe.Slice(unsafe.StringData(topic), len(topic)), format, p, false); ok {
			return t.prefix, nil
		}
	}
	return p, nil
}

// carriedPrefix returns the prefix of the Topic a message carries, when
// that entry can stand for this topic here: it must come from this
// mapper's cache (another mapper's static tags and pattern make other
// prefixes), be for this very topic name (an entry says nothing about any
// other), and have a prefix (nil: the topic does not match the pattern,
// which buildPrefix reports with its reason).
func (m *Mapper) carriedPrefix(topic string, cached Topic) ([]byte, bool) {
	if cached.cache == m.topics && cached.prefix != nil && cached.Name == topic {
		return cached.prefix, true
	}
	return nil, false
}

// buildPrefix appends the escaped "measurement,tag=value,..." of topic's
// lines to dst. Every name was checked by validName (the encoder's own
// rules) and the tags are sorted.
func (m *Mapper) buildPrefix(dst []byte, topic string) ([]byte, error) {
	var lv [8]string
	meas, levels, err := m.topicValues(topic, &lv)
	if err != nil {
		return nil, err
	}
	dst = appendName(dst, meas, false)
	for _, t := range m.tags {
		v := t.static
		if t.level >= 0 {
			v = levels[t.level]
		}
		dst = appendName(append(dst, ','), t.key, true)
		dst = appendName(append(dst, '='), v, true)
	}
	return dst, nil
}

// appendJSON appends the one point of a JSON object payload: the topic's
// line prefix, the object's fields and its timestamp.
func (m *Mapper) appendJSON(dst []byte, msg Message, at time.Time) ([]byte, int, error) {
	var buf [maxStackPrefix]byte
	prefix, err := m.linePrefix(msg.Topic, msg.Cached, FormatJSON, &buf)
	if err != nil {
		return dst, 0, err
	}
	// The fields live on the stack while a message has no more than
	// this many: the hot path allocates nothing.
	var fieldBuf [16]jsonField
	fields, ts, err := decodeJSONFields(fieldBuf[:0], msg.Payload, at)
	if err != nil {
		return dst, 0, err
	}
	return encodeJSONPoint(dst, prefix, fields, ts)
}

// decodeJSONFields reads a JSON object payload into fields, sorted by key
// with one value per key, and its time ("ts", else at).
func decodeJSONFields(fields []jsonField, payload []byte, at time.Time) ([]jsonField, time.Time, error) {
	// gjson validates and walks the object without building a map: this
	// is the hot path of every message (see BenchmarkMapperJSON).
	if !gjson.ValidBytes(payload) {
		return nil, time.Time{}, decodeErr(ReasonNotJSON, "payload is not valid JSON")
	}
	// gjson.ParseBytes copies the payload into a string, the one
	// allocation per message left here. A string viewing the bytes is
	// safe: nothing writes to the payload during this call, and no
	// result (keys, string values) outlives it; the encoder copies them.
	obj := gjson.Parse(unsafe.String(unsafe.SliceData(payload), len(payload)))
	if !obj.IsObject() {
		return nil, time.Time{}, decodeErr(ReasonNotObject, "payload is a JSON %s, want an object", gjsonKind(obj))
	}
	ts := at
	var ferr error
	obj.ForEach(func(key, v gjson.Result) bool {
		k := key.Str
		if k == TimestampKey {
			ts, ferr = parseTS(v)
			return ferr == nil
		}
		val, keep, err := jsonFieldValue(k, v)
		if err != nil {
			ferr = err
			return false
		}
		if keep {
			fields = append(fields, jsonField{k, val})
		}
		return true
	})
	if ferr != nil {
		return nil, time.Time{}, ferr
	}
	// A key given twice: the last one wins, as in most JSON decoders.
	slices.SortStableFunc(fields, func(a, b jsonField) int { return strings.Compare(a.key, b.key) })
	fields = dedupLast(fields)
	if len(fields) == 0 {
		return nil, time.Time{}, decodeErr(ReasonNoFields, "payload has no fields")
	}
	return fields, ts, nil
}

// jsonFieldValue converts the JSON value of field k; keep is false for a
// null, which means "no value this time" and is left out.
func jsonFieldValue(k string, v gjson.Result) (val lineprotocol.Value, keep bool, err error) {
	if !validName(k) {
		return val, false, decodeErr(ReasonBadField, "bad field name %q", k)
	}
	ok := true
	switch v.Type {
	case gjson.Null:
		return val, false, nil
	case gjson.Number:
		f, perr := strconv.ParseFloat(v.Raw, 64)
		if perr != nil {
			return val, false, decodeErr(ReasonBadField, "field %q: number %s out of range", k, v.Raw)
		}
		val, ok = lineprotocol.FloatValue(f)
	case gjson.True, gjson.False:
		val = lineprotocol.BoolValue(v.Type == gjson.True)
	case gjson.String:
		val, ok = lineprotocol.StringValue(v.Str)
	default:
		return val, false, decodeErr(ReasonBadField, "field %q: %s values are not supported", k, gjsonKind(v))
	}
	if !ok {
		return val, false, decodeErr(ReasonBadField, "field %q: value cannot be stored", k)
	}
	return val, true, nil
}

// encodeJSONPoint appends one line: prefix, the fields (sorted, names
// checked) and ts in nanoseconds. On error dst is returned unchanged, so a
// refused message leaves nothing half-written in the batch.
func encodeJSONPoint(dst, prefix []byte, fields []jsonField, ts time.Time) ([]byte, int, error) {
	out := append(dst, prefix...)
	for i, f := range fields {
		sep := byte(',')
		if i == 0 {
			sep = ' '
		}
		out = appendName(append(out, sep), f.key, true)
		var ok bool
		if out, ok = appendValue(append(out, '='), f.val); !ok {
			return dst, 0, decodeErr(ReasonNewline, "field %q: a newline in a string value cannot be stored in line protocol", f.key)
		}
	}
	out = append(strconv.AppendInt(append(out, ' '), ts.UnixNano(), 10), '\n')
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
// the database is harder to reason about than none. Values are stored as
// InfluxDB would store the same lines written to it directly.
func (m *Mapper) appendLine(dst []byte, msg Message, at time.Time) ([]byte, int, error) {
	e := lineEncoder{
		dec:        lineprotocol.NewDecoderWithBytes(serverEscapes(msg.Payload)),
		prec:       m.linePrecision(msg.Topic),
		untimedAt:  at,
		staticOnly: m.staticOnly,
		scratch:    make([]byte, 0, 256),
	}
	out := dst
	n := 0
	for e.dec.Next() {
		var err error
		if out, err = e.appendPoint(out); err != nil {
			return dst, 0, atLine(n+1, err)
		}
		n++
	}
	if err := e.dec.Err(); err != nil {
		return dst, 0, decodeErr(ReasonBadLine, "%v", err)
	}
	if n == 0 {
		return dst, 0, decodeErr(ReasonNoFields, "payload has no lines")
	}
	return out, n, nil
}

// atLine puts the number of the line that failed into a DecodeError.
func atLine(n int, err error) error {
	reason := ReasonBadLine
	if de, ok := err.(*DecodeError); ok {
		reason, err = de.Reason, de.Err
	}
	return decodeErr(reason, "line %d: %s", n, err.Error())
}

// lineEncoder re-encodes the lines of one line-protocol payload.
type lineEncoder struct {
	dec        *lineprotocol.Decoder
	prec       lineprotocol.Precision // unit of the payload's timestamps
	untimedAt  time.Time              // the time of a line without one
	staticOnly []tagSource
	tags       []lineTag
	// The decoder's slices are valid only until its next call, so the
	// measurement and tags are kept in scratch while they are sorted. It
	// is reused line after line: they are copied into the output by the
	// time the next one starts. (When it grows, the slices kept so far
	// still point into the old array, which nothing changes.)
	scratch []byte
	// untimed counts, per series, the lines without a timestamp so far.
	untimed map[string]int64
}

type lineTag struct{ k, v []byte }

// keep copies b into scratch, to outlive the decoder's next call.
func (e *lineEncoder) keep(b []byte) []byte {
	start := len(e.scratch)
	e.scratch = append(e.scratch, b...)
	return e.scratch[start:len(e.scratch):len(e.scratch)]
}

// appendPoint appends the decoder's current line, re-encoded.
func (e *lineEncoder) appendPoint(out []byte) ([]byte, error) {
	lineStart := len(out)
	out, err := e.appendSeries(out)
	if err != nil {
		return out, err
	}
	// series views the bytes written so far; they do not change even if
	// appending the fields moves out to a new array.
	series := out[lineStart:]
	if out, err = e.appendFields(out); err != nil {
		return out, err
	}
	ts, err := e.timestamp(series)
	if err != nil {
		return out, err
	}
	return append(strconv.AppendInt(append(out, ' '), ts, 10), '\n'), nil
}

// appendSeries appends the line's measurement and its tags with the static
// ones, sorted, after checking that each is stored as it is written.
func (e *lineEncoder) appendSeries(out []byte) ([]byte, error) {
	e.scratch = e.scratch[:0]
	meas, err := e.dec.Measurement()
	if err != nil {
		return out, decodeErr(ReasonBadLine, "%v", err)
	}
	if !validNameBytes(meas) {
		return out, decodeErr(ReasonBadLine, "measurement %q cannot be stored as it is", meas)
	}
	meas = e.keep(meas)
	e.tags = e.tags[:0]
	for {
		k, v, err := e.dec.NextTag()
		if err != nil {
			return out, decodeErr(ReasonBadLine, "%v", err)
		}
		if k == nil {
			break
		}
		if !validNameBytes(k) || !validNameBytes(v) {
			return out, decodeErr(ReasonBadLine, "tag %q=%q cannot be stored as it is", k, v)
		}
		e.tags = append(e.tags, lineTag{e.keep(k), e.keep(v)})
	}
	for _, s := range e.staticOnly {
		// Views of the strings, not copies: tags are only read.
		e.tags = append(e.tags, lineTag{unsafeBytes(s.key), unsafeBytes(s.static)})
	}
	slices.SortFunc(e.tags, func(a, b lineTag) int { return bytes.Compare(a.k, b.k) })
	out = appendName(out, unsafeString(meas), false)
	for i, t := range e.tags {
		if i > 0 && bytes.Equal(e.tags[i-1].k, t.k) {
			return out, decodeErr(ReasonBadLine, "tag %q given twice", t.k)
		}
		out = appendName(append(out, ','), unsafeString(t.k), true)
		out = appendName(append(out, '='), unsafeString(t.v), true)
	}
	return out, nil
}

// appendFields appends the line's fields; a line needs at least one.
func (e *lineEncoder) appendFields(out []byte) ([]byte, error) {
	fields := 0
	for {
		k, v, err := e.dec.NextField()
		if err != nil {
			return out, decodeErr(ReasonBadLine, "%v", err)
		}
		if k == nil {
			break
		}
		if !validNameBytes(k) {
			return out, decodeErr(ReasonBadLine, "field key %q cannot be stored as it is", k)
		}
		sep := byte(',')
		if fields == 0 {
			sep = ' '
		}
		out = appendName(append(out, sep), unsafeString(k), true)
		var ok bool
		if out, ok = appendValue(append(out, '='), v); !ok {
			return out, decodeErr(ReasonNewline, "field %q: a newline in a string value cannot be stored in line protocol", k)
		}
		fields++
	}
	if fields == 0 {
		return out, decodeErr(ReasonBadLine, "no fields")
	}
	return out, nil
}

// timestamp returns the line's time in nanoseconds: its own, in the
// topic's precision, or untimedAt for a line without one.
func (e *lineEncoder) timestamp(series []byte) (int64, error) {
	raw, err := e.dec.TimeBytes()
	if err != nil {
		return 0, decodeErr(ReasonBadLine, "%v", err)
	}
	if raw == nil {
		// A second line of the same series in the message would overwrite
		// the first at the same time, so the k-th is stamped k-1 ns later.
		if e.untimed == nil {
			e.untimed = map[string]int64{}
		}
		k := e.untimed[string(series)]
		e.untimed[string(series)] = k + 1
		return e.untimedAt.UnixNano() + k, nil
	}
	ts, err := strconv.ParseInt(unsafeString(raw), 10, 64)
	d := int64(e.prec.Duration())
	if err != nil || ts > math.MaxInt64/d || ts < math.MinInt64/d+1 {
		return 0, decodeErr(ReasonBadLine, "timestamp %s (precision %s) is out of range", raw, e.prec)
	}
	return ts * d, nil
}

func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// serverEscapes makes the line-protocol library read string field values
// as InfluxDB does. InfluxDB's parser turns only \\ and \" back into one
// byte, so a device's "C:\new" is stored with its backslash; the library
// also turns \n, \r and \t into control characters. Inside quoted field
// values, such a backslash is doubled, which the library reads back as the
// backslash InfluxDB would have kept. Everything else is left alone, and a
// payload without a backslash is not copied.
func serverEscapes(p []byte) []byte {
	if bytes.IndexByte(p, '\\') < 0 {
		return p
	}
	var out []byte // nil until the first change
	copied := 0    // p[:copied] is in out
	// toEOL moves i past the end of the line.
	toEOL := func(i int) int {
		if j := bytes.IndexByte(p[min(i, len(p)):], '\n'); j >= 0 {
			return i + j + 1
		}
		return len(p)
	}
	for i := 0; i < len(p); {
		// A comment or blank line runs to its end.
		if p[i] == '#' || p[i] == '\n' {
			i = toEOL(i)
			continue
		}
		// Measurement and tags, up to the first unescaped space.
		for i < len(p) && p[i] != ' ' && p[i] != '\n' {
			if p[i] == '\\' {
				i++
			}
			i++
		}
		for i < len(p) && p[i] == ' ' {
			i++
		}
		// Fields: key=value pairs up to the next unescaped space.
		for i < len(p) && p[i] != ' ' && p[i] != '\n' {
			switch {
			case p[i] == '\\':
				i += 2
			case p[i] != '=':
				i++
			case i+1 < len(p) && p[i+1] == '"':
				// A quoted string: \ and the next byte are a pair; the
				// pairs \n, \r, \t get their backslash doubled.
				for i += 2; i < len(p) && p[i] != '"'; i++ {
					if p[i] != '\\' || i+1 >= len(p) {
						continue
					}
					if c := p[i+1]; c == 'n' || c == 'r' || c == 't' {
						if out == nil {
							out = make([]byte, 0, len(p)+8)
						}
						out = append(append(out, p[copied:i+1]...), '\\')
						copied = i + 1
					}
					i++
				}
				i++ // the closing quote
			default:
				// Any other value runs to the next comma or space.
				for i++; i < len(p) && p[i] != ',' && p[i] != ' ' && p[i] != '\n'; i++ {
				}
			}
			if i < len(p) && p[i] == ',' {
				i++
			}
		}
		// The timestamp, to the end of the line.
		i = toEOL(i)
	}
	if out == nil {
		return p
	}
	return append(out, p[copied:]...)
}
