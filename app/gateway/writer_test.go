package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// The writer loop against drop-oldest, with an HTTP stand-in for InfluxDB's
// write endpoint whose outages and slow answers the test controls.

// fakeInflux answers /api/v2/write: 503 while down; while a gate is set,
// each request waits for it to close first.
type fakeInflux struct {
	mu       sync.Mutex
	up       bool
	gate     chan struct{}
	requests int
	lines    map[string]bool
	arrived  chan struct{} // one send per request, dropped if nobody listens
}

func newFakeInflux(t *testing.T, up bool) (*fakeInflux, string) {
	f := &fakeInflux{up: up, lines: map[string]bool{}, arrived: make(chan struct{}, 1)}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *fakeInflux) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v2/write" {
		http.NotFound(w, r)
		return
	}
	var body bytes.Buffer
	if _, err := body.ReadFrom(r.Body); err != nil {
		return
	}
	f.mu.Lock()
	f.requests++
	gate := f.gate
	f.mu.Unlock()
	select {
	case f.arrived <- struct{}{}:
	default:
	}
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"code":"unavailable","message":"test outage"}`)
		return
	}
	sc := bufio.NewScanner(&body)
	for sc.Scan() {
		f.lines[sc.Text()] = true
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeInflux) set(up bool, gate chan struct{}) {
	f.mu.Lock()
	f.up, f.gate = up, gate
	f.mu.Unlock()
}

// written returns the reading numbers InfluxDB accepted, sorted.
func (f *fakeInflux) written() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var got []int
	for l := range f.lines {
		var i, ts int
		if _, err := fmt.Sscanf(l, "env v=%di %d", &i, &ts); err == nil {
			got = append(got, i)
		}
	}
	sort.Ints(got)
	return got
}

// reading is reading i as the spool holds it: all the same size.
func reading(i int) []byte {
	return fmt.Appendf(nil, "env v=%04di %d\n", i, 1_700_000_000_000_000_000+int64(i))
}

const readingSize = 16 + 32 // spool record header + len(reading(i))

// writerGateway is a gateway over a drop-oldest spool with room for
// capReadings readings, writing to url; only its writer loop is run.
func writerGateway(t *testing.T, url string, capReadings, batch int) *Gateway {
	t.Helper()
	if n := len(reading(0)); n != readingSize-16 {
		t.Fatalf("reading is %d bytes, want %d", n, readingSize-16)
	}
	cfg := config.Default()
	cfg.Spool.Dir = t.TempDir()
	cfg.Spool.MaxBytes = int64(capReadings) * readingSize
	cfg.Spool.SegmentBytes = 8 * readingSize
	cfg.Spool.Policy = string(spool.DropOldest)
	cfg.Influx.URL = url
	cfg.Influx.Gzip = config.GzipOff
	cfg.Influx.BatchSize = batch
	cfg.Influx.FlushInterval = config.Duration{Duration: time.Millisecond}
	cfg.Influx.MaxRetryInterval = config.Duration{Duration: 20 * time.Millisecond}
	g, err := FromConfig(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *Gateway) appendReadings(t *testing.T, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := g.spool.Append([][]byte{reading(i)}); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func interval(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// The writer holds batch 0-19 while InfluxDB is away (down, or slow to
// answer a write already on the wire) and drop-oldest discards 0-149 from
// the spool. The batch is still written, not re-read, and not counted as
// dropped: iotgw_spool_dropped_total is exactly the readings that never
// reach InfluxDB. Given up instead (shutdown), the batch's discarded
// readings are counted then.
func TestWriterDropOldestWhileRetrying(t *testing.T) {
	const (
		capReadings = 50
		batch       = 20
		n           = 200
	)
	for _, mode := range []string{"down", "on the wire", "given up"} {
		t.Run(mode, func(t *testing.T) {
			fake, url := newFakeInflux(t, false)
			var gate chan struct{}
			var openGate sync.Once
			if mode == "on the wire" {
				gate = make(chan struct{})
				fake.set(true, gate) // up, but the answer waits for the gate
				defer openGate.Do(func() { close(gate) })
			}
			g := writerGateway(t, url, capReadings, batch)
			g.appendReadings(t, 0, batch)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				g.writeLoop(ctx, make(chan struct{}))
			}()
			defer func() {
				cancel()
				<-done
				g.closeState()
			}()
			<-fake.arrived // the writer has sent batch 0-19 at least once

			g.appendReadings(t, batch, n) // discards 0-149; the writer holds 0-19
			if st := g.spool.Stats(); st.Bytes > int64(capReadings)*readingSize || st.Records != capReadings {
				t.Fatalf("spool over its cap: %+v", st)
			}
			discarded := n - capReadings
			if d := g.spool.Stats().Dropped; d != int64(discarded-batch) {
				t.Fatalf("Dropped = %d while the writer holds 0-%d, want %d", d, batch-1, discarded-batch)
			}

			if mode == "given up" {
				cancel()
				<-done
				if d := g.spool.Stats().Dropped; d != int64(discarded) {
					t.Fatalf("Dropped = %d after the writer gave its batch up, want %d", d, discarded)
				}
				if w := fake.written(); len(w) != 0 {
					t.Fatalf("written while InfluxDB was down: %v", w)
				}
				return
			}
			fake.set(true, nil)
			if gate != nil {
				openGate.Do(func() { close(gate) })
			}
			waitUntil(t, "the spool to drain", func() bool { return g.spool.Stats().Records == 0 })
			want := append(interval(0, batch), interval(discarded, n)...)
			waitUntil(t, "InfluxDB to have every kept reading", func() bool { return len(fake.written()) >= len(want) })
			got := fake.written()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("InfluxDB has %v,\nwant %v", got, want)
			}
			d := g.spool.Stats().Dropped
			if d != int64(discarded-batch) || int64(len(got))+d != n {
				t.Fatalf("%d readings written, Dropped = %d; appended %d", len(got), d, n)
			}
			if v := metricValue(t, g, "iotgw_spool_dropped_total"); v != float64(d) {
				t.Fatalf("iotgw_spool_dropped_total = %v, want %d", v, d)
			}
		})
	}
}

func metricValue(t *testing.T, g *Gateway, name string) float64 {
	t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
