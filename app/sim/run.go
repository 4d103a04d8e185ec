package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// Publisher sends one message and returns once it is acknowledged (for
// QoS 0: written). Run calls it from a single goroutine.
type Publisher interface {
	Publish(ctx context.Context, topic string, qos byte, payload []byte) error
}

// Token is the completion of an asynchronous publish. paho's mqtt.Token
// satisfies it.
type Token interface {
	Done() <-chan struct{}
	Error() error
}

// AsyncPublisher is a Publisher that can also start a publish and report
// its completion later. Run prefers it, keeping up to Options.MaxInFlight
// publishes outstanding, which is what high rates need.
type AsyncPublisher interface {
	Publisher
	PublishAsync(topic string, qos byte, payload []byte) Token
}

// Report sums up a run. Sent = Acked + Failed + Unacked.
type Report struct {
	Sent    int64            `json:"sent"`    // publishes attempted
	Acked   int64            `json:"acked"`   // completed without error
	Failed  int64            `json:"failed"`  // completed with an error
	Unacked int64            `json:"unacked"` // not completed by the end of the drain
	Bad     map[string]int64 `json:"bad"`     // malformed messages sent, by kind
	Elapsed time.Duration    `json:"elapsed_ns"`
}

// Run publishes the fleet's messages at the configured rate until Count or
// Duration is reached or ctx is done, then waits up to DrainTimeout for
// outstanding publishes. observe, if not nil, sees each message just before
// it is published, on Run's goroutine.
//
// Message i (from 0) is due at i/rate after the start and carries device
// time Start + i/rate, so a run with a fixed Start and Seed publishes the
// same bytes every time. A ticker releases the due messages in batches; a
// publisher that falls behind is caught up, not skipped.
//
// The error is non-nil when options are invalid or when any publish failed
// or stayed unacknowledged; the Report is filled in either way.
func Run(ctx context.Context, o Options, p Publisher, observe func(Message)) (Report, error) {
	f, err := NewFleet(o)
	if err != nil {
		return Report{}, err
	}
	o = f.Options()
	sch := newSchedule(o)
	rep := Report{Bad: make(map[string]int64)}
	r := startReaper(o.MaxInFlight)
	produce(ctx, f, o, p, observe, sch, r.pending, &rep)
	r.finish(o.DrainTimeout)
	rep.Acked, rep.Failed = r.acked, r.failed
	rep.Unacked = rep.Sent - r.acked - r.failed
	rep.Elapsed = time.Since(sch.started)
	return rep, runError(rep, r.firstErr, o.DrainTimeout)
}

// schedule says how many messages are due by now and which device time
// each carries.
type schedule struct {
	rate    float64 // messages per second, the whole fleet
	limit   int64   // messages in the run
	started time.Time
	origin  time.Time // device time of message 0
}

// newSchedule reads the rate and the run's length from o; the run starts
// now.
func newSchedule(o Options) schedule {
	s := schedule{rate: o.TotalRate, limit: math.MaxInt64, started: time.Now(), origin: o.Start}
	if s.rate == 0 {
		s.rate = o.Rate * float64(o.Devices)
	}
	if o.Count > 0 {
		s.limit = int64(o.Count)
	}
	if o.Duration > 0 {
		s.limit = min(s.limit, int64(math.Ceil(o.Duration.Seconds()*s.rate)))
	}
	if s.origin.IsZero() {
		s.origin = s.started
	}
	return s
}

// due is how many messages should have been published by now.
func (s schedule) due() int64 {
	return min(s.limit, int64(time.Since(s.started).Seconds()*s.rate)+1)
}

// deviceTime is the device time of message i: its due time from origin,
// not when it was actually sent, so a run is reproducible.
func (s schedule) deviceTime(i int64) time.Time {
	return s.origin.Add(time.Duration(math.Round(float64(i) * float64(time.Second) / s.rate)))
}

// tick is how often due messages are released: the message interval,
// kept between a millisecond (faster rates go out in batches per tick) and
// a tenth of a second (no message goes out later than that past its due
// time).
func (s schedule) tick() time.Duration {
	interval := time.Duration(float64(time.Second) / s.rate)
	return min(max(interval, time.Millisecond), 100*time.Millisecond)
}

// produce publishes the due messages tick after tick until the schedule's
// limit or ctx's end, handing each publish's Token to pending and counting
// sent and malformed messages in rep.
func produce(ctx context.Context, f *Fleet, o Options, p Publisher, observe func(Message), sch schedule, pending chan<- Token, rep *Report) {
	defer close(pending)
	async, _ := p.(AsyncPublisher)
	ticker := time.NewTicker(sch.tick())
	defer ticker.Stop()
	for rep.Sent < sch.limit {
		for due := sch.due(); rep.Sent < due; {
			if ctx.Err() != nil {
				return
			}
			m := f.Next(sch.deviceTime(rep.Sent))
			if m.Topic == "" {
				break // every device is held back by its interval: wait for the ticker
			}
			if observe != nil {
				observe(m)
			}
			t := publish(ctx, p, async, m, o.QoS)
			rep.Sent++
			if m.Bad != "" {
				rep.Bad[m.Bad]++
			}
			if t == nil {
				continue // cancelled mid-publish: unacked
			}
			select {
			case pending <- t:
			case <-ctx.Done():
				return // t stays unacked
			}
		}
		if rep.Sent == sch.limit {
			return
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// publish starts m's publish when p can do it asynchronously, else runs it;
// nil means ctx ended during a blocking publish.
func publish(ctx context.Context, p Publisher, async AsyncPublisher, m Message, qos byte) Token {
	if async != nil {
		return async.PublishAsync(m.Topic, qos, m.Payload)
	}
	return syncPublish(ctx, p, m, qos)
}

// reaper collects publish completions in order. pending's capacity bounds
// the publishes in flight.
type reaper struct {
	pending  chan Token
	abort    chan struct{}
	reaped   chan struct{}
	acked    int64
	failed   int64
	firstErr error
}

func startReaper(maxInFlight int) *reaper {
	r := &reaper{pending: make(chan Token, maxInFlight), abort: make(chan struct{}), reaped: make(chan struct{})}
	go r.run()
	return r
}

func (r *reaper) run() {
	defer close(r.reaped)
	for t := range r.pending {
		select {
		case <-t.Done():
			r.account(t)
		case <-r.abort:
			// Count what has completed; the rest stays unacked.
			for _, t := range append([]Token{t}, drain(r.pending)...) {
				select {
				case <-t.Done():
					r.account(t)
				default:
				}
			}
			return
		}
	}
}

func (r *reaper) account(t Token) {
	if err := t.Error(); err != nil {
		r.failed++
		if r.firstErr == nil {
			r.firstErr = err
		}
	} else {
		r.acked++
	}
}

// finish waits up to timeout for the outstanding publishes (pending is
// closed), then stops counting; the counts are final when it returns.
func (r *reaper) finish(timeout time.Duration) {
	drainTimer := time.NewTimer(timeout)
	defer drainTimer.Stop()
	select {
	case <-r.reaped:
	case <-drainTimer.C:
		close(r.abort)
		<-r.reaped
	}
}

// runError says why a finished run is not a success: a failed or an
// unacknowledged publish.
func runError(rep Report, firstErr error, drainTimeout time.Duration) error {
	switch {
	case rep.Failed > 0:
		return fmt.Errorf("sim: %d of %d publishes failed, %d unacknowledged; first error: %w",
			rep.Failed, rep.Sent, rep.Unacked, firstErr)
	case rep.Unacked > 0:
		return fmt.Errorf("sim: %d of %d publishes unacknowledged after %v drain",
			rep.Unacked, rep.Sent, drainTimeout)
	}
	return nil
}

// syncPublish runs a blocking Publish and wraps its result as a completed
// Token, or returns nil when ctx was cancelled during the call.
func syncPublish(ctx context.Context, p Publisher, m Message, qos byte) Token {
	err := p.Publish(ctx, m.Topic, qos, m.Payload)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return doneToken{err}
}

type doneToken struct{ err error }

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (doneToken) Done() <-chan struct{} { return closed }
func (t doneToken) Error() error        { return t.err }

// drain empties a closed channel.
func drain(c <-chan Token) []Token {
	var ts []Token
	for t := range c {
		ts = append(ts, t)
	}
	return ts
}
