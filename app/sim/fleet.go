// Package sim is a deterministic fleet of simulated sensors that publishes
// readings over MQTT in the gateway's wire format.
//
// A Fleet is the pure generator: given the same Options and the same
// sequence of times it yields byte-identical messages. Run paces a fleet
// with a ticker and hands the messages to a Publisher; PahoPublisher is the
// MQTT implementation. See README.md for the wire format and every option.
package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Measurement names used in topics.
const (
	MeasurementEnvironment = "environment" // temperature, humidity, pressure
	MeasurementPower       = "power"       // battery, charging, status
)

// powerEvery makes every tenth reading of a device a power message.
const powerEvery = 10

// maxDevices bounds the fleet so a typo cannot allocate gigabytes.
const maxDevices = 1_000_000

// Options configures a Fleet and Run. The zero value is usable: 10 devices
// on 2 sites, 1 message per second per device, QoS 0, until ctx is done.
type Options struct {
	Devices int // simulated devices; 0 means 10
	Sites   int // sites the devices are spread over; 0 means min(2, Devices)

	// Rate is messages per second per device; TotalRate is messages per
	// second for the whole fleet. Set at most one; both zero means Rate 1.
	Rate, TotalRate float64

	// Run stops after Duration of schedule time (exactly
	// ceil(Duration×rate) messages) or after Count messages, whichever
	// comes first; zero means no limit.
	Duration time.Duration
	Count    int

	QoS      byte    // MQTT QoS 0, 1 or 2
	BadRatio float64 // share of malformed messages, 0..1
	Seed     uint64  // same seed, same messages

	TopicPrefix string    // first topic level; "" means "sensors"
	Start       time.Time // device clock at the first message; zero means now

	MaxInFlight int // publishes awaiting completion; 0 means 1000
	// Controls, when set, make the devices obey commands (a Responder
	// applies them): a device with an interval set gives up its turns
	// until the interval has passed, and a switched relay is reported.
	Controls     *Controls
	DrainTimeout time.Duration // wait for outstanding acks at the end; 0 means 10s
}

// Message is one MQTT publish produced by the fleet.
type Message struct {
	Topic   string
	Payload []byte
	Bad     string // "" for a well-formed reading, else one of BadKinds()

	Device, Site, Measurement string
	Time                      time.Time // device time, also the payload's ts
}

// OptionError reports an invalid option. Option is the Options field name,
// so callers with their own flag names can map it back.
type OptionError struct {
	Option string
	Value  any
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("sim: invalid %s %v: %s", e.Option, e.Value, e.Reason)
}

// Fleet generates readings for a set of devices in round-robin order.
// It is not safe for concurrent use.
type Fleet struct {
	opts    Options
	devices []*device
	next    int // index of the device whose turn is next

	bad    *rand.Rand // decides which messages are malformed
	badSeq int        // round-robin over the malformed kinds
}

// NewFleet validates o, fills in defaults and builds the devices.
func NewFleet(o Options) (*Fleet, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	f := &Fleet{
		opts:    o,
		devices: make([]*device, o.Devices),
		// The stream constants only need to differ from the devices' ones.
		bad: rand.New(rand.NewPCG(o.Seed, 0xbad0_0000_0000_0000)),
	}
	for i := range f.devices {
		d := newDevice(o, i)
		if o.Controls != nil {
			d.ctl = o.Controls.register(d.site + "/" + d.name)
		}
		f.devices[i] = d
	}
	return f, nil
}

// Options returns the options in effect, defaults filled in.
func (f *Fleet) Options() Options { return f.opts }

// Next returns the next device's reading stamped with device time now.
// A device in a dropout gives up its turn to the next one, so every call
// returns a message, unless every device is held back by an interval set
// by command: then Message.Topic is empty.
func (f *Fleet) Next(now time.Time) Message {
	var d *device
	held := 0
	for {
		d = f.devices[f.next]
		f.next++
		if f.next == len(f.devices) {
			f.next = 0
		}
		if d.ctl != nil && !d.ctl.due() {
			if held++; held == len(f.devices) {
				return Message{}
			}
			continue
		}
		if !d.skipTurn() {
			break
		}
	}
	m := d.reading(now)
	if d.ctl != nil {
		d.ctl.published(d.battery)
	}
	// Draw for every message, so the good readings do not depend on
	// which ones were replaced.
	if f.opts.BadRatio > 0 && f.bad.Float64() < f.opts.BadRatio {
		m.Bad = badKinds[f.badSeq%len(badKinds)]
		m.Payload = badPayload(m.Bad, f.badSeq/len(badKinds), now)
		f.badSeq++
	}
	return m
}

func (o Options) normalize() (Options, error) {
	bad := func(opt string, v any, reason string) (Options, error) {
		return o, &OptionError{Option: opt, Value: v, Reason: reason}
	}
	switch {
	case o.Devices < 0 || o.Devices > maxDevices:
		return bad("Devices", o.Devices, fmt.Sprintf("must be between 1 and %d", maxDevices))
	case o.Devices == 0:
		o.Devices = 10
	}
	switch {
	case o.Sites < 0:
		return bad("Sites", o.Sites, "must be at least 1")
	case o.Sites == 0:
		o.Sites = min(2, o.Devices)
	case o.Sites > o.Devices:
		return bad("Sites", o.Sites, fmt.Sprintf("must not exceed the number of devices (%d): a site needs a device", o.Devices))
	}
	if !finiteNonNeg(o.Rate) {
		return bad("Rate", o.Rate, "must be a positive number of messages per second")
	}
	if !finiteNonNeg(o.TotalRate) {
		return bad("TotalRate", o.TotalRate, "must be a positive number of messages per second")
	}
	switch {
	case o.Rate > 0 && o.TotalRate > 0:
		return bad("TotalRate", o.TotalRate, "cannot be combined with a per-device rate; set one of them")
	case o.Rate == 0 && o.TotalRate == 0:
		o.Rate = 1
	}
	if o.Duration < 0 {
		return bad("Duration", o.Duration, "must not be negative")
	}
	if o.Count < 0 {
		return bad("Count", o.Count, "must not be negative")
	}
	if o.QoS > 2 {
		return bad("QoS", o.QoS, "must be 0, 1 or 2")
	}
	if !(o.BadRatio >= 0 && o.BadRatio <= 1) { // also rejects NaN
		return bad("BadRatio", o.BadRatio, "must be between 0 and 1")
	}
	if o.TopicPrefix == "" {
		o.TopicPrefix = "sensors"
	}
	if strings.ContainsAny(o.TopicPrefix, "+#\x00") || strings.HasPrefix(o.TopicPrefix, "/") ||
		strings.HasSuffix(o.TopicPrefix, "/") || strings.Contains(o.TopicPrefix, "//") {
		return bad("TopicPrefix", strconv.Quote(o.TopicPrefix), "must be topic levels without wildcards or empty levels")
	}
	switch {
	case o.MaxInFlight < 0:
		return bad("MaxInFlight", o.MaxInFlight, "must not be negative")
	case o.MaxInFlight == 0:
		o.MaxInFlight = 1000
	}
	switch {
	case o.DrainTimeout < 0:
		return bad("DrainTimeout", o.DrainTimeout, "must not be negative")
	case o.DrainTimeout == 0:
		o.DrainTimeout = 10 * time.Second
	}
	return o, nil
}

func finiteNonNeg(v float64) bool { return v >= 0 && !math.IsInf(v, 1) }

// Physical ranges of the simulated sensors; readings never leave them.
const (
	tempMin, tempMax   = -40.0, 85.0
	pressMin, pressMax = 980.0, 1040.0
)

// Rare events, per turn of a device.
const (
	spikeChance   = 0.002
	dropoutChance = 0.001
)

// device is one sensor's state. All randomness comes from its own PCG
// stream, so adding devices does not change the existing ones' readings.
type device struct {
	name, site         string
	envTopic, powTopic string
	rng                *rand.Rand

	baseTemp, amplitude, drift float64 // °C
	baseHumidity               float64 // %RH
	pressure                   float64 // hPa, a bounded random walk
	battery, drainPerHour      float64 // %
	charging                   bool

	turns   uint64 // readings produced
	dropout int    // turns still to skip
	last    time.Time

	ctl *control // nil unless the fleet obeys commands
}

func newDevice(o Options, i int) *device {
	rng := rand.New(rand.NewPCG(o.Seed, uint64(i)+1))
	name := fmt.Sprintf("dev-%04d", i+1)
	site := fmt.Sprintf("site-%02d", i%o.Sites+1)
	base := o.TopicPrefix + "/" + site + "/" + name + "/"
	return &device{
		name:         name,
		site:         site,
		envTopic:     base + MeasurementEnvironment,
		powTopic:     base + MeasurementPower,
		rng:          rng,
		baseTemp:     16 + 8*rng.Float64(),
		amplitude:    2 + 4*rng.Float64(),
		baseHumidity: 35 + 25*rng.Float64(),
		pressure:     995 + 30*rng.Float64(),
		battery:      60 + 40*rng.Float64(),
		drainPerHour: 0.5 + 1.5*rng.Float64(),
	}
}

// skipTurn reports whether the device is silent this turn.
func (d *device) skipTurn() bool {
	if d.dropout > 0 {
		d.dropout--
		return true
	}
	if d.rng.Float64() < dropoutChance {
		d.dropout = 4 + d.rng.IntN(45) // 5..49 turns in all
		return true
	}
	return false
}

func (d *device) reading(now time.Time) Message {
	d.advance(now)
	m := Message{Device: d.name, Site: d.site, Time: now}
	d.turns++
	if d.turns%powerEvery == 0 {
		m.Topic, m.Measurement = d.powTopic, MeasurementPower
		m.Payload = d.power(now)
	} else {
		m.Topic, m.Measurement = d.envTopic, MeasurementEnvironment
		m.Payload = d.environment(now)
	}
	return m
}

// advance moves the slow state (drift, pressure, battery) forward.
func (d *device) advance(now time.Time) {
	d.drift = clamp(0.999*d.drift+0.02*d.rng.NormFloat64(), -3, 3)

	d.pressure += 0.08 * d.rng.NormFloat64()
	if d.pressure < pressMin { // reflect at the bounds
		d.pressure = 2*pressMin - d.pressure
	} else if d.pressure > pressMax {
		d.pressure = 2*pressMax - d.pressure
	}
	d.pressure = clamp(d.pressure, pressMin, pressMax)

	var hours float64
	if !d.last.IsZero() {
		hours = clamp(now.Sub(d.last).Hours(), 0, 24)
	}
	d.last = now
	if d.charging {
		d.battery += 25 * hours
	} else {
		d.battery -= d.drainPerHour * hours
	}
	// Hysteresis: plug in when low, unplug when nearly full.
	if d.battery <= 15 {
		d.charging = true
	} else if d.battery >= 95 {
		d.charging = false
	}
	d.battery = clamp(d.battery, 0, 100)
}

// dailyCycle is -1 at 02:00 UTC and +1 at 14:00 UTC.
func dailyCycle(t time.Time) float64 {
	const day = 24 * time.Hour
	since := t.Sub(t.Truncate(day)) // Truncate works in absolute (UTC) time
	hours := since.Hours()
	return math.Sin(2 * math.Pi * (hours - 8) / 24)
}

func (d *device) environment(now time.Time) []byte {
	temp := d.baseTemp + d.amplitude*dailyCycle(now) + d.drift + 0.15*d.rng.NormFloat64()
	// Air holds more water when warm, so relative humidity falls as it warms.
	hum := clamp(d.baseHumidity-2.5*(temp-d.baseTemp)+0.8*d.rng.NormFloat64(), 0, 100)
	if d.rng.Float64() < spikeChance {
		spike := 8 + 12*d.rng.Float64()
		if d.rng.IntN(2) == 0 {
			spike = -spike
		}
		temp += spike
	}
	temp = clamp(temp, tempMin, tempMax)

	b := make([]byte, 0, 96)
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, `,"temperature":`...)
	b = strconv.AppendFloat(b, temp, 'f', 2, 64)
	b = append(b, `,"humidity":`...)
	b = strconv.AppendFloat(b, hum, 'f', 1, 64)
	b = append(b, `,"pressure":`...)
	b = strconv.AppendFloat(b, d.pressure, 'f', 1, 64)
	return append(b, '}')
}

func (d *device) power(now time.Time) []byte {
	status := "ok"
	switch {
	case d.charging:
		status = "charging"
	case d.battery < 20:
		status = "low"
	}
	b := make([]byte, 0, 80)
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, `,"battery":`...)
	b = strconv.AppendFloat(b, d.battery, 'f', 1, 64)
	b = append(b, `,"charging":`...)
	b = strconv.AppendBool(b, d.charging)
	b = append(b, `,"status":"`...)
	b = append(b, status...)
	b = append(b, '"')
	if d.ctl != nil {
		if r := d.ctl.relay.Load(); r != 0 {
			b = append(b, `,"relay":`...)
			b = strconv.AppendBool(b, r == 2)
		}
	}
	return append(b, '}')
}

func clamp(v, lo, hi float64) float64 { return max(lo, min(hi, v)) }
