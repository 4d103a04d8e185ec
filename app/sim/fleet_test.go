package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var t0 = time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)

// generate returns n messages, one every step from t0.
func generate(t testing.TB, o Options, n int, step time.Duration) []Message {
	t.Helper()
	f, err := NewFleet(o)
	if err != nil {
		t.Fatalf("NewFleet(%+v): %v", o, err)
	}
	ms := make([]Message, n)
	for i := range ms {
		ms[i] = f.Next(t0.Add(time.Duration(i) * step))
	}
	return ms
}

func TestFleetDeterministic(t *testing.T) {
	base := Options{Devices: 7, Sites: 3, BadRatio: 0.1, Seed: 42}
	tests := []struct {
		name string
		a, b Options
		same bool
	}{
		{"same seed", base, base, true},
		{"zero seed is a seed too", Options{Seed: 0}, Options{Seed: 0}, true},
		{"different seed", base, func() Options { o := base; o.Seed = 43; return o }(), false},
		{"different bad ratio keeps device streams", base, func() Options { o := base; o.BadRatio = 0; return o }(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := generate(t, tc.a, 3000, 250*time.Millisecond)
			b := generate(t, tc.b, 3000, 250*time.Millisecond)
			identical := true
			for i := range a {
				if a[i].Topic != b[i].Topic || !bytes.Equal(a[i].Payload, b[i].Payload) || a[i].Bad != b[i].Bad {
					identical = false
					if tc.same {
						t.Fatalf("message %d differs:\n%s %q\n%s %q", i, a[i].Topic, a[i].Payload, b[i].Topic, b[i].Payload)
					}
					break
				}
			}
			if identical && !tc.same {
				t.Fatal("streams are identical, want them to differ")
			}
		})
	}

	// Replacing messages by malformed ones must not shift the good ones.
	bad := generate(t, base, 3000, time.Second)
	o := base
	o.BadRatio = 0
	good := generate(t, o, 3000, time.Second)
	for i := range bad {
		if bad[i].Bad == "" && !bytes.Equal(bad[i].Payload, good[i].Payload) {
			t.Fatalf("good message %d changed with BadRatio: %q vs %q", i, bad[i].Payload, good[i].Payload)
		}
	}
}

// reading is the union of both measurements' fields.
type reading struct {
	TS          *int64   `json:"ts"`
	Temperature *float64 `json:"temperature"`
	Humidity    *float64 `json:"humidity"`
	Pressure    *float64 `json:"pressure"`
	Battery     *float64 `json:"battery"`
	Charging    *bool    `json:"charging"`
	Status      *string  `json:"status"`
}

func decode(t testing.TB, m Message) reading {
	t.Helper()
	var r reading
	d := json.NewDecoder(bytes.NewReader(m.Payload))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		t.Fatalf("%s %q: %v", m.Topic, m.Payload, err)
	}
	return r
}

func TestFleetWireFormatAndBounds(t *testing.T) {
	// A minute apart over 60 days: long enough for batteries to run down
	// and charge, and for every rare event to happen.
	const n = 60 * 24 * 30
	ms := generate(t, Options{Devices: 3, Sites: 2, Seed: 7}, n, 2*time.Minute)
	perMeasurement := map[string]int{}
	sawCharging, sawLow := false, false
	for _, m := range ms {
		want := fmt.Sprintf("sensors/%s/%s/%s", m.Site, m.Device, m.Measurement)
		if m.Topic != want {
			t.Fatalf("topic %q, want %q", m.Topic, want)
		}
		if m.Bad != "" {
			t.Fatalf("BadRatio 0 produced %s", m.Bad)
		}
		r := decode(t, m)
		if r.TS == nil || *r.TS != m.Time.UnixMilli() {
			t.Fatalf("%q: ts must be the device time %d", m.Payload, m.Time.UnixMilli())
		}
		perMeasurement[m.Measurement]++
		switch m.Measurement {
		case MeasurementEnvironment:
			if r.Temperature == nil || r.Humidity == nil || r.Pressure == nil || r.Battery != nil {
				t.Fatalf("environment fields wrong: %q", m.Payload)
			}
			in(t, m, "temperature", *r.Temperature, tempMin, tempMax)
			in(t, m, "humidity", *r.Humidity, 0, 100)
			in(t, m, "pressure", *r.Pressure, pressMin, pressMax)
		case MeasurementPower:
			if r.Battery == nil || r.Charging == nil || r.Status == nil || r.Temperature != nil {
				t.Fatalf("power fields wrong: %q", m.Payload)
			}
			in(t, m, "battery", *r.Battery, 0, 100)
			switch *r.Status {
			case "ok", "low", "charging":
			default:
				t.Fatalf("status %q", *r.Status)
			}
			sawCharging = sawCharging || *r.Charging
			sawLow = sawLow || *r.Status == "low"
		default:
			t.Fatalf("measurement %q", m.Measurement)
		}
	}
	if !sawCharging || !sawLow {
		t.Errorf("over 60 days a battery should run low and charge: low=%v charging=%v", sawLow, sawCharging)
	}
	if got := float64(perMeasurement[MeasurementPower]) / n; math.Abs(got-0.1) > 0.01 {
		t.Errorf("power share %.3f, want about 1 in %d", got, powerEvery)
	}
}

func in(t testing.TB, m Message, field string, v, lo, hi float64) {
	t.Helper()
	if !(v >= lo && v <= hi) {
		t.Fatalf("%s %s = %v outside [%v, %v]: %q", m.Device, field, v, lo, hi, m.Payload)
	}
}

func TestFleetDailyCycle(t *testing.T) {
	const devices = 5
	ms := generate(t, Options{Devices: devices, Seed: 3}, 10*24*60*devices/5, 5*time.Minute/devices)
	type acc struct{ sum, n float64 }
	at := map[string]map[int]*acc{} // device → hour → temperatures
	humAt := map[int]*acc{}
	for _, m := range ms {
		if m.Measurement != MeasurementEnvironment {
			continue
		}
		r := decode(t, m)
		h := m.Time.UTC().Hour()
		if at[m.Device] == nil {
			at[m.Device] = map[int]*acc{}
		}
		for _, mp := range []map[int]*acc{at[m.Device], humAt} {
			if mp[h] == nil {
				mp[h] = &acc{}
			}
		}
		at[m.Device][h].sum += *r.Temperature
		at[m.Device][h].n++
		humAt[h].sum += *r.Humidity
		humAt[h].n++
	}
	if len(at) != devices {
		t.Fatalf("%d devices reported, want %d", len(at), devices)
	}
	for dev, hours := range at {
		warm, cold := hours[14].sum/hours[14].n, hours[4].sum/hours[4].n
		if warm-cold < 1.5 {
			t.Errorf("%s: mean 14:00 %.2f °C, 04:00 %.2f °C; want clearly warmer in the afternoon", dev, warm, cold)
		}
	}
	if hum14, hum4 := humAt[14].sum/humAt[14].n, humAt[4].sum/humAt[4].n; hum14 >= hum4 {
		t.Errorf("humidity should fall as it warms: 14:00 %.1f%%, 04:00 %.1f%%", hum14, hum4)
	}
}

// malformed checks that a payload really is of its malformed kind.
func malformed(kind string, p []byte) error {
	var obj map[string]any
	jsonErr := json.Unmarshal(p, &obj)
	switch kind {
	case BadNotJSON:
		if json.Valid(p) {
			return errors.New("is valid JSON")
		}
	case BadUTF8:
		if utf8.Valid(p) {
			return errors.New("is valid UTF-8")
		}
	case BadTSType, BadTSGarbage:
		if jsonErr != nil {
			return fmt.Errorf("should be valid JSON with a bad ts: %v", jsonErr)
		}
		switch ts := obj["ts"].(type) {
		case float64:
			return errors.New("ts is a number")
		case string:
			if kind == BadTSType {
				return errors.New("ts is a string, want another wrong type")
			}
			if _, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				return errors.New("ts is a parseable time")
			}
		case nil:
			return errors.New("ts missing")
		}
	case BadNested:
		if jsonErr != nil {
			return jsonErr
		}
		nested := false
		for _, v := range obj {
			_, isObj := v.(map[string]any)
			nested = nested || isObj
		}
		if !nested {
			return errors.New("no nested object")
		}
	case BadEmpty:
		if jsonErr != nil || len(obj) != 0 {
			return errors.New("not an empty object")
		}
	case BadOversized:
		if len(p) <= MaxPayload {
			return fmt.Errorf("only %d bytes", len(p))
		}
		if jsonErr != nil {
			return fmt.Errorf("should be valid JSON, only too big: %v", jsonErr)
		}
	default:
		return fmt.Errorf("unknown kind")
	}
	return nil
}

func TestFleetBadRatio(t *testing.T) {
	const n = 10000
	for _, ratio := range []float64{0, 0.01, 0.05, 0.5, 1} {
		t.Run(fmt.Sprint(ratio), func(t *testing.T) {
			ms := generate(t, Options{Devices: 4, BadRatio: ratio, Seed: 9}, n, time.Second)
			kinds := map[string]int{}
			for _, m := range ms {
				if m.Bad == "" {
					continue
				}
				kinds[m.Bad]++
				if kinds[m.Bad] > 50 {
					continue // checked enough of this kind
				}
				if err := malformed(m.Bad, m.Payload); err != nil {
					t.Fatalf("%s payload %.80q: %v", m.Bad, m.Payload, err)
				}
				if !strings.HasPrefix(m.Topic, "sensors/site-") {
					t.Fatalf("malformed message on topic %q", m.Topic)
				}
			}
			bad := 0
			for _, c := range kinds {
				bad += c
			}
			got := float64(bad) / n
			// Binomial: 4 standard deviations.
			if tol := 4*math.Sqrt(ratio*(1-ratio)/n) + 1e-9; math.Abs(got-ratio) > tol {
				t.Errorf("bad share %.4f, want %.4f ± %.4f", got, ratio, tol)
			}
			if ratio > 0 {
				for _, k := range BadKinds() {
					if kinds[k] == 0 {
						t.Errorf("kind %s never produced", k)
					}
				}
			}
		})
	}
}

func TestBadPayloadVariants(t *testing.T) {
	for _, kind := range BadKinds() {
		for v := range 4 {
			if err := malformed(kind, badPayload(kind, v, t0)); err != nil {
				t.Errorf("%s variant %d: %v", kind, v, err)
			}
		}
	}
}

func TestFleetSitesAndDropouts(t *testing.T) {
	f, err := NewFleet(Options{Devices: 5, Sites: 2, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	sites := map[string]map[string]bool{}
	count := map[string]int{}
	prev := ""
	skipped := 0
	const n = 30000
	for i := range n {
		m := f.Next(t0.Add(time.Duration(i) * time.Second))
		if sites[m.Site] == nil {
			sites[m.Site] = map[string]bool{}
		}
		sites[m.Site][m.Device] = true
		count[m.Device]++
		// Without dropouts devices come in strict rotation.
		if prev != "" && m.Device != nextDevice(prev, 5) {
			skipped++
		}
		prev = m.Device
	}
	if len(sites["site-01"]) != 3 || len(sites["site-02"]) != 2 || len(sites) != 2 {
		t.Errorf("devices per site: %v", sites)
	}
	if skipped == 0 {
		t.Error("no device ever dropped out")
	}
	for d, c := range count {
		if c < n/5*9/10 {
			t.Errorf("%s sent %d, dropouts should be rare", d, c)
		}
	}
}

func nextDevice(d string, n int) string {
	var i int
	fmt.Sscanf(d, "dev-%d", &i)
	return fmt.Sprintf("dev-%04d", i%n+1)
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		o      Options
		option string // "" means valid
	}{
		{Options{}, ""},
		{Options{Devices: 1}, ""},
		{Options{Devices: -1}, "Devices"},
		{Options{Devices: maxDevices + 1}, "Devices"},
		{Options{Devices: 2, Sites: 3}, "Sites"},
		{Options{Sites: -1}, "Sites"},
		{Options{Rate: -1}, "Rate"},
		{Options{Rate: math.NaN()}, "Rate"},
		{Options{Rate: math.Inf(1)}, "Rate"},
		{Options{TotalRate: -5}, "TotalRate"},
		{Options{Rate: 1, TotalRate: 10}, "TotalRate"},
		{Options{TotalRate: 10}, ""},
		{Options{Duration: -time.Second}, "Duration"},
		{Options{Count: -1}, "Count"},
		{Options{QoS: 2}, ""},
		{Options{QoS: 3}, "QoS"},
		{Options{BadRatio: 1.5}, "BadRatio"},
		{Options{BadRatio: -0.1}, "BadRatio"},
		{Options{BadRatio: math.NaN()}, "BadRatio"},
		{Options{TopicPrefix: "lab/sensors"}, ""},
		{Options{TopicPrefix: "sensors/#"}, "TopicPrefix"},
		{Options{TopicPrefix: "a/+/b"}, "TopicPrefix"},
		{Options{TopicPrefix: "/sensors"}, "TopicPrefix"},
		{Options{TopicPrefix: "sensors/"}, "TopicPrefix"},
		{Options{MaxInFlight: -1}, "MaxInFlight"},
		{Options{DrainTimeout: -1}, "DrainTimeout"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%+v", tc.o), func(t *testing.T) {
			_, err := NewFleet(tc.o)
			var oe *OptionError
			switch {
			case tc.option == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.option != "" && !errors.As(err, &oe):
				t.Fatalf("error %v, want an OptionError for %s", err, tc.option)
			case tc.option != "" && (oe.Option != tc.option || !strings.Contains(err.Error(), tc.option)):
				t.Fatalf("error %q names %s, want %s", err, oe.Option, tc.option)
			}
		})
	}

	f, _ := NewFleet(Options{})
	got := f.Options()
	if got.Devices != 10 || got.Sites != 2 || got.Rate != 1 || got.TopicPrefix != "sensors" ||
		got.MaxInFlight != 1000 || got.DrainTimeout != 10*time.Second {
		t.Errorf("defaults: %+v", got)
	}
	if f, _ := NewFleet(Options{Devices: 1}); f.Options().Sites != 1 {
		t.Errorf("one device gets one site, got %d", f.Options().Sites)
	}
}

func BenchmarkFleetNext(b *testing.B) {
	for _, ratio := range []float64{0, 0.05} {
		b.Run(fmt.Sprintf("bad=%v", ratio), func(b *testing.B) {
			f, err := NewFleet(Options{Devices: 100, Sites: 4, BadRatio: ratio, Seed: 1})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var bytes int
			i := 0
			for b.Loop() {
				bytes += len(f.Next(t0.Add(time.Duration(i) * time.Millisecond)).Payload)
				i++
			}
			b.ReportMetric(float64(bytes)/float64(i), "B/msg")
		})
	}
}
