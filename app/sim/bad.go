package sim

import (
	"bytes"
	"strconv"
	"time"
)

// Kinds of malformed message, as counted in Report.Bad.
const (
	BadNotJSON    = "not-json"   // plain text or truncated JSON
	BadUTF8       = "bad-utf8"   // JSON-shaped but with invalid UTF-8 bytes
	BadTSType     = "ts-type"    // ts is a boolean or an array
	BadTSGarbage  = "ts-garbage" // ts is a string that is no time at all
	BadNested     = "nested"     // a field holds an object
	BadEmpty      = "empty"      // {}
	BadOversized  = "oversized"  // valid JSON larger than MaxPayload
	MaxPayload    = 64 << 10     // largest payload the gateway accepts
	oversizedSize = MaxPayload + 1024
)

// filler pads oversized payloads.
var filler = bytes.Repeat([]byte("0123456789abcdef"), oversizedSize/16)

var badKinds = []string{
	BadNotJSON, BadUTF8, BadTSType, BadTSGarbage, BadNested, BadEmpty, BadOversized,
}

// BadKinds lists the malformed kinds in the order the fleet cycles through them.
func BadKinds() []string { return append([]string(nil), badKinds...) }

// badPayload builds a malformed payload of the given kind; variant picks
// among a few shapes of the same fault so the gateway sees more than one.
func badPayload(kind string, variant int, now time.Time) []byte {
	ts := strconv.FormatInt(now.UnixMilli(), 10)
	switch kind {
	case BadNotJSON:
		if variant%2 == 0 {
			return []byte("temperature=21.37 humidity=48.2 ts=" + ts)
		}
		return []byte(`{"ts":` + ts + `,"temperature":21.`) // cut short
	case BadUTF8:
		return []byte(`{"ts":` + ts + `,"temperature":21.37,"note":"` + "\xff\xfe\xc3\x28" + `"}`)
	case BadTSType:
		if variant%2 == 0 {
			return []byte(`{"ts":true,"temperature":21.37}`)
		}
		return []byte(`{"ts":[` + ts + `],"temperature":21.37}`)
	case BadTSGarbage:
		if variant%2 == 0 {
			return []byte(`{"ts":"soon","temperature":21.37}`)
		}
		return []byte(`{"ts":"12:00 o'clock","temperature":21.37}`)
	case BadNested:
		return []byte(`{"ts":` + ts + `,"temperature":{"value":21.37,"unit":"C"},"humidity":48.2}`)
	case BadEmpty:
		return []byte(`{}`)
	case BadOversized:
		b := make([]byte, 0, oversizedSize+16)
		b = append(b, `{"ts":`+ts+`,"temperature":21.37,"blob":"`...)
		b = append(b, filler[:oversizedSize-2-len(b)]...)
		return append(b, `"}`...)
	}
	panic("sim: unknown malformed kind " + kind)
}
