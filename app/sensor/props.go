package sensor

import (
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// maxPropertyName bounds the name of the timestamp property in the
// configuration; maxTSProperty bounds the value read from a device, which
// is checked before any parsing. The longest RFC 3339 time with
// nanoseconds and an offset is 35 bytes.
const (
	maxPropertyName = 128
	maxTSProperty   = 64
)

// setTimestampProperty configures the timestamp property; unit is the
// precision of integer values ("" means milliseconds).
func (m *Mapper) setTimestampProperty(name, unit string) error {
	if unit == "" {
		unit = "ms"
	}
	p, err := ParsePrecision(unit)
	if err != nil {
		return fmt.Errorf("timestamp_property_precision: %w", err)
	}
	m.tsPropUnit = p
	if name == "" {
		return nil
	}
	if len(name) > maxPropertyName || !validName(name) {
		return fmt.Errorf("timestamp_property %q: want a name of printable UTF-8, at most %d bytes", name, maxPropertyName)
	}
	m.tsProp = name
	return nil
}

// propertyTime reads the timestamp property of a message: ok is false when
// the message does not carry it. One that is present but is not a time is
// an error, never replaced by the receive time: the device said when, and
// storing another time would put the reading somewhere it was not.
func (m *Mapper) propertyTime(props Props) (t time.Time, ok bool, err error) {
	v, n := props.UserProperty(m.tsProp)
	switch {
	case n == 0:
		return t, false, nil
	case n > 1:
		// Which one is right is a guess either way.
		return t, false, decodeErr(ReasonBadTSProperty, "user property %q given %d times", m.tsProp, n)
	case len(v) > maxTSProperty:
		return t, false, decodeErr(ReasonBadTSProperty, "user property %q is %d bytes, longer than any time (%d)", m.tsProp, len(v), maxTSProperty)
	case !utf8.Valid(v):
		return t, false, decodeErr(ReasonBadTSProperty, "user property %q is not valid UTF-8", m.tsProp)
	}
	s := unsafeString(v)
	if isInteger(s) {
		i, perr := strconv.ParseInt(s, 10, 64)
		d := int64(m.tsPropUnit.Duration())
		if perr != nil || i > math.MaxInt64/d || i < math.MinInt64/d+1 {
			return t, false, decodeErr(ReasonBadTSProperty, "user property %s=%s is out of range (unit %s)", m.tsProp, s, m.tsPropUnit)
		}
		return time.Unix(0, i*d), true, nil
	}
	t, perr := time.Parse(time.RFC3339Nano, s)
	if perr != nil {
		return t, false, decodeErr(ReasonBadTSProperty, "user property %s=%q is neither an integer (unit %s) nor an RFC 3339 time", m.tsProp, s, m.tsPropUnit)
	}
	if t.Before(minTime) || t.After(maxTime) {
		return t, false, decodeErr(ReasonBadTSProperty, "user property %s=%q is out of range", m.tsProp, s)
	}
	return t, true, nil
}

// isInteger reports whether s is an optional minus and decimal digits
// only: no plus sign, spaces, fraction or exponent.
func isInteger(s string) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
