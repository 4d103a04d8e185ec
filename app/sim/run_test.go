package sim

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a synchronous Publisher that keeps what it is given and
// fails the publishes fail picks.
type recorder struct {
	topics   []string
	payloads [][]byte
	fail     func(i int) error
}

func (r *recorder) Publish(_ context.Context, topic string, _ byte, payload []byte) error {
	i := len(r.topics)
	r.topics = append(r.topics, topic)
	r.payloads = append(r.payloads, payload)
	if r.fail != nil {
		return r.fail(i)
	}
	return nil
}

func TestRunReplaysFleetSchedule(t *testing.T) {
	o := Options{Devices: 4, TotalRate: 20000, Count: 300, BadRatio: 0.05, Seed: 5, Start: t0}
	var rec recorder
	var observed []Message
	rep, err := Run(context.Background(), o, &rec, func(m Message) { observed = append(observed, m) })
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 300 || rep.Acked != 300 || rep.Failed != 0 || rep.Unacked != 0 {
		t.Fatalf("report %+v", rep)
	}
	// Message i carries device time Start + i/rate, whatever the wall clock did.
	f, _ := NewFleet(o)
	var bad int64
	for i := range 300 {
		want := f.Next(t0.Add(time.Duration(i) * 50 * time.Microsecond))
		if rec.topics[i] != want.Topic || !bytes.Equal(rec.payloads[i], want.Payload) {
			t.Fatalf("message %d: got %s %q, want %s %q", i, rec.topics[i], rec.payloads[i], want.Topic, want.Payload)
		}
		if observed[i].Topic != want.Topic || !observed[i].Time.Equal(want.Time) {
			t.Fatalf("observed %d: %+v", i, observed[i])
		}
		if want.Bad != "" {
			bad++
		}
	}
	var counted int64
	for _, c := range rep.Bad {
		counted += c
	}
	if counted != bad || bad == 0 {
		t.Errorf("report counts %d malformed (%v), stream has %d", counted, rep.Bad, bad)
	}
}

func TestRunStops(t *testing.T) {
	tests := []struct {
		name     string
		o        Options
		cancel   time.Duration
		wantSent func(int64) bool
		minTime  time.Duration
	}{
		{"count", Options{TotalRate: 1000, Count: 50}, 0, func(n int64) bool { return n == 50 }, 45 * time.Millisecond},
		{"duration is schedule time", Options{Devices: 2, Rate: 250, Duration: 200 * time.Millisecond}, 0,
			func(n int64) bool { return n == 100 }, 190 * time.Millisecond},
		{"count before duration", Options{TotalRate: 1000, Count: 10, Duration: time.Hour}, 0,
			func(n int64) bool { return n == 10 }, 0},
		{"context", Options{TotalRate: 1000}, 150 * time.Millisecond, func(n int64) bool { return n > 50 && n < 400 }, 140 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.cancel > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.cancel)
				defer cancel()
			}
			start := time.Now()
			rep, err := Run(ctx, tc.o, &recorder{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.wantSent(rep.Sent) || rep.Acked != rep.Sent {
				t.Errorf("report %+v", rep)
			}
			if el := time.Since(start); el < tc.minTime || el > tc.minTime+2*time.Second {
				t.Errorf("took %v, want about %v: pacing is off", el, tc.minTime)
			}
		})
	}
}

func TestRunFailures(t *testing.T) {
	boom := errors.New("broker said no")
	rec := &recorder{fail: func(i int) error {
		if i%3 == 0 {
			return boom
		}
		return nil
	}}
	rep, err := Run(context.Background(), Options{TotalRate: 10000, Count: 30}, rec, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("error %v, want it to wrap the first publish error", err)
	}
	if rep.Sent != 30 || rep.Failed != 10 || rep.Acked != 20 {
		t.Errorf("report %+v", rep)
	}

	if _, err := Run(context.Background(), Options{Devices: -1}, rec, nil); err == nil {
		t.Error("invalid options: want an error")
	}
}

// asyncPub completes tokens when released, to test in-flight accounting.
type asyncPub struct {
	mu       sync.Mutex
	tokens   []*chanToken
	inFlight atomic.Int64
	maxSeen  atomic.Int64
	complete bool // complete each token on its own goroutine after a moment
}

type chanToken struct {
	done chan struct{}
	err  error
}

func (t *chanToken) Done() <-chan struct{} { return t.done }
func (t *chanToken) Error() error          { return t.err }

func (p *asyncPub) Publish(context.Context, string, byte, []byte) error {
	panic("Run should use PublishAsync")
}

func (p *asyncPub) PublishAsync(string, byte, []byte) Token {
	t := &chanToken{done: make(chan struct{})}
	n := p.inFlight.Add(1)
	for {
		m := p.maxSeen.Load()
		if n <= m || p.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if p.complete {
		go func() {
			time.Sleep(time.Millisecond)
			p.inFlight.Add(-1)
			close(t.done)
		}()
	}
	p.mu.Lock()
	p.tokens = append(p.tokens, t)
	p.mu.Unlock()
	return t
}

func TestRunAsync(t *testing.T) {
	t.Run("completes", func(t *testing.T) {
		p := &asyncPub{complete: true}
		rep, err := Run(context.Background(), Options{TotalRate: 100000, Count: 2000, MaxInFlight: 50}, p, nil)
		if err != nil || rep.Acked != 2000 {
			t.Fatalf("report %+v, error %v", rep, err)
		}
		// The reaper holds one more and the producer one more than the queue.
		if m := p.maxSeen.Load(); m > 52 {
			t.Errorf("%d publishes in flight, want at most MaxInFlight+2", m)
		}
	})
	t.Run("never acked", func(t *testing.T) {
		p := &asyncPub{}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		rep, err := Run(ctx, Options{TotalRate: 100000, Count: 1000, MaxInFlight: 10, DrainTimeout: 50 * time.Millisecond}, p, nil)
		if err == nil {
			t.Fatal("want an error for missing acks")
		}
		if rep.Sent > 12 || rep.Unacked != rep.Sent || rep.Acked != 0 {
			t.Errorf("report %+v: want the producer blocked at MaxInFlight, all unacked", rep)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("took %v: the drain timeout was not honoured", el)
		}
	})
	t.Run("acked after the drain timeout fired counts what completed", func(t *testing.T) {
		p := &asyncPub{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Complete all but the first token once they exist.
			for {
				p.mu.Lock()
				n := len(p.tokens)
				p.mu.Unlock()
				if n == 20 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			for _, tok := range p.tokens[1:] {
				close(tok.done)
			}
		}()
		rep, err := Run(context.Background(), Options{TotalRate: 100000, Count: 20, DrainTimeout: 300 * time.Millisecond}, p, nil)
		<-done
		if err == nil || rep.Acked != 19 || rep.Unacked != 1 {
			t.Errorf("report %+v, error %v; want 19 acked and the stuck one unacked", rep, err)
		}
	})
}
