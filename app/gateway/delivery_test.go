package gateway

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/influx"
	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// Unit tests of delivery over in-memory parts: the spool (memStore), the
// database (memWriter) and the dead-letter file (memDead) are the
// project's own interfaces; the tests against real influxd are in
// reject_test.go and writer_test.go.

// memWriter is an in-memory InfluxDB: answer decides each request (nil
// answer or nil error: accepted).
type memWriter struct {
	mu       sync.Mutex
	answer   func(call int, body []byte) error
	calls    []time.Time
	bodies   [][]byte
	accepted [][]byte // lines
}

func (w *memWriter) Write(_ context.Context, body []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	call := len(w.calls)
	w.calls = append(w.calls, time.Now())
	w.bodies = append(w.bodies, bytes.Clone(body))
	if w.answer != nil {
		if err := w.answer(call, body); err != nil {
			return err
		}
	}
	w.accepted = append(w.accepted, splitLines(nil, [][]byte{bytes.Clone(body)})...)
	return nil
}

func (w *memWriter) Close() {}

func (w *memWriter) snapshot() (calls []time.Time, bodies, accepted [][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls), slices.Clone(w.bodies), slices.Clone(w.accepted)
}

// memDead is an in-memory dead-letter file.
type memDead struct {
	mu      sync.Mutex
	reasons []string
	payload [][]byte
}

func (d *memDead) Add(_ time.Time, _, reason string, _ error, payload []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reasons = append(d.reasons, reason)
	d.payload = append(d.payload, bytes.Clone(payload))
	return nil
}

func (d *memDead) Close() error { return nil }

func (d *memDead) snapshot() ([]string, [][]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.reasons), slices.Clone(d.payload)
}

// countingStore counts the writer's Reads.
type countingStore struct {
	*memStore
	reads atomic.Int64
}

func (s *countingStore) Read(ctx context.Context, maxRecords, maxBytes int) (spool.Batch, error) {
	b, err := s.memStore.Read(ctx, maxRecords, maxBytes)
	s.reads.Add(1)
	return b, err
}

// memGateway assembles a gateway from in-memory parts and runs its writer
// loop until the test ends.
func memGateway(t *testing.T, edit func(*config.Config)) (*Gateway, *countingStore, *memWriter, *memDead) {
	t.Helper()
	cfg := config.Default()
	cfg.Gateway.ID = "gw"
	cfg.HTTP.Addr = ""
	cfg.Influx.MaxRetryInterval = config.Duration{Duration: 20 * time.Millisecond}
	cfg.Influx.FlushInterval = config.Duration{Duration: time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	mapper, err := sensor.NewMapper(cfg.MapperConfig())
	if err != nil {
		t.Fatal(err)
	}
	st, w, d := &countingStore{memStore: newMemStore()}, &memWriter{}, &memDead{}
	g, err := New(OptionsFromConfig(cfg, slog.New(slog.DiscardHandler), mapper, st, w, d))
	if err != nil {
		t.Fatal(err)
	}
	return g, st, w, d
}

func startWriter(t *testing.T, g *Gateway) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.writeLoop(ctx, make(chan struct{}))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// A batch InfluxDB rejects with 400 (an answer that does not say how many
// points it dropped) is split until the one bad point is found: it alone
// is dead-lettered, every other point is written, and the spool advances.
func TestDeliverySplitsRejectedBatch(t *testing.T) {
	g, st, w, d := memGateway(t, func(c *config.Config) { c.Influx.BatchSize = 8 })
	bad := reading(5)
	w.answer = func(_ int, body []byte) error {
		if bytes.Contains(body, bad) {
			return &influx.WriteError{Status: 400, Message: "unable to parse 'env v=0005i': bad timestamp"}
		}
		return nil
	}
	var recs [][]byte
	for i := range 8 {
		recs = append(recs, reading(i))
	}
	if err := st.Append(recs); err != nil {
		t.Fatal(err)
	}
	startWriter(t, g)
	waitUntil(t, "the spool to be committed", func() bool { return st.Stats().Records == 0 })

	reasons, dead := d.snapshot()
	if len(dead) != 1 || !bytes.Equal(dead[0], bytes.TrimSuffix(bad, []byte("\n"))) || reasons[0] != sensor.ReasonRejected {
		t.Fatalf("dead letters %q (%v), want only the bad point as %s", dead, reasons, sensor.ReasonRejected)
	}
	_, _, accepted := w.snapshot()
	var want [][]byte
	for i := range 8 {
		if i != 5 {
			want = append(want, reading(i))
		}
	}
	slices.SortFunc(accepted, bytes.Compare)
	if !slices.EqualFunc(accepted, want, bytes.Equal) {
		t.Fatalf("written %q\nwant %q", accepted, want)
	}
}

// A 503 with Retry-After is retried no sooner than the server asked, even
// with a much shorter influx.max_retry_interval.
func TestDeliveryHonoursRetryAfter(t *testing.T) {
	const after = 300 * time.Millisecond
	g, st, w, _ := memGateway(t, nil)
	w.answer = func(call int, _ []byte) error {
		if call == 0 {
			return &influx.WriteError{Status: 503, Message: "busy", RetryAfter: after}
		}
		return nil
	}
	if err := st.Append([][]byte{reading(1)}); err != nil {
		t.Fatal(err)
	}
	startWriter(t, g)
	waitUntil(t, "the retried write", func() bool { calls, _, _ := w.snapshot(); return len(calls) >= 2 })
	calls, bodies, _ := w.snapshot()
	if gap := calls[1].Sub(calls[0]); gap < after {
		t.Fatalf("retried after %s, want at least the server's Retry-After %s", gap, after)
	}
	if !bytes.Equal(bodies[0], bodies[1]) {
		t.Fatalf("the retry sent %q, want the same body %q", bodies[1], bodies[0])
	}
}

// A batch smaller than influx.batch_size waits up to influx.flush_interval
// for company: readings that arrive meanwhile go in the same request.
func TestDeliveryWaitsForSmallBatch(t *testing.T) {
	g, st, w, _ := memGateway(t, func(c *config.Config) {
		c.Influx.BatchSize = 100
		c.Influx.FlushInterval = config.Duration{Duration: 500 * time.Millisecond}
	})
	if err := st.Append([][]byte{reading(1)}); err != nil {
		t.Fatal(err)
	}
	startWriter(t, g)
	waitUntil(t, "the writer to see the first reading", func() bool { return st.reads.Load() >= 1 })
	if err := st.Append([][]byte{reading(2), reading(3)}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a write", func() bool { calls, _, _ := w.snapshot(); return len(calls) >= 1 })
	_, bodies, _ := w.snapshot()
	if want := slices.Concat(reading(1), reading(2), reading(3)); !bytes.Equal(bodies[0], want) {
		t.Fatalf("first request %q, want the three readings together %q", bodies[0], want)
	}
}

// A rejection without a WriteError (the server is unreachable) is not the
// points' fault: nothing is dead-lettered, and the write is retried.
func TestDeliveryRetriesNetworkErrors(t *testing.T) {
	g, st, w, d := memGateway(t, nil)
	w.answer = func(call int, _ []byte) error {
		if call < 3 {
			return &influx.WriteError{Err: errors.New("connection refused")}
		}
		return nil
	}
	if err := st.Append([][]byte{reading(1)}); err != nil {
		t.Fatal(err)
	}
	startWriter(t, g)
	waitUntil(t, "the spool to be committed", func() bool { return st.Stats().Records == 0 })
	if calls, _, accepted := w.snapshot(); len(calls) != 4 || len(accepted) != 1 {
		t.Fatalf("%d requests, %d points accepted; want 4 and 1", len(calls), len(accepted))
	}
	if _, dead := d.snapshot(); len(dead) != 0 {
		t.Fatalf("dead-lettered %q after network errors", dead)
	}
}
