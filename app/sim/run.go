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
	rate := o.TotalRate
	if rate == 0 {
		rate = o.Rate * float64(o.Devices)
	}
	limit := int64(math.MaxInt64)
	if o.Count > 0 {
		limit = int64(o.Count)
	}
	if o.Duration > 0 {
		limit = min(limit, int64(math.Ceil(o.Duration.Seconds()*rate)))
	}

	started := time.Now()
	origin := o.Start
	if origin.IsZero() {
		origin = started
	}
	rep := Report{Bad: make(map[string]int64)}

	async, _ := p.(AsyncPublisher)

	// The channel's capacity bounds the publishes in flight; one reaper
	// collects completions in order.
	pending := make(chan Token, o.MaxInFlight)
	abort := make(chan struct{})
	reaped := make(chan struct{})
	var acked, failed int64
	var firstErr error
	account := func(t Token) {
		if err := t.Error(); err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
		} else {
			acked++
		}
	}
	go func() {
		defer close(reaped)
		for t := range pending {
			select {
			case <-t.Done():
				account(t)
			case <-abort:
				// Count what has completed; the rest stays unacked.
				for _, t := range append([]Token{t}, drain(pending)...) {
					select {
					case <-t.Done():
						account(t)
					default:
					}
				}
				return
			}
		}
	}()

	interval := time.Duration(float64(time.Second) / rate)
	ticker := time.NewTicker(min(max(interval, time.Millisecond), 100*time.Millisecond))
	defer ticker.Stop()

produce:
	for rep.Sent < limit {
		due := min(limit, int64(time.Since(started).Seconds()*rate)+1)
		for rep.Sent < due {
			if ctx.Err() != nil {
				break produce
			}
			at := origin.Add(time.Duration(math.Round(float64(rep.Sent) * float64(time.Second) / rate)))
			m := f.Next(at)
			if m.Topic == "" {
				break // every device is held back by its interval: wait for the ticker
			}
			if observe != nil {
				observe(m)
			}
			var t Token
			if async != nil {
				t = async.PublishAsync(m.Topic, o.QoS, m.Payload)
			} else {
				t = syncPublish(ctx, p, m, o.QoS)
			}
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
				break produce // t stays unacked
			}
		}
		if rep.Sent == limit {
			break
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			break produce
		}
	}

	close(pending)
	drainTimer := time.NewTimer(o.DrainTimeout)
	defer drainTimer.Stop()
	select {
	case <-reaped:
	case <-drainTimer.C:
		close(abort)
		<-reaped
	}
	rep.Acked, rep.Failed = acked, failed
	rep.Unacked = rep.Sent - acked - failed
	rep.Elapsed = time.Since(started)

	switch {
	case rep.Failed > 0:
		return rep, fmt.Errorf("sim: %d of %d publishes failed, %d unacknowledged; first error: %w",
			rep.Failed, rep.Sent, rep.Unacked, firstErr)
	case rep.Unacked > 0:
		return rep, fmt.Errorf("sim: %d of %d publishes unacknowledged after %v drain",
			rep.Unacked, rep.Sent, o.DrainTimeout)
	}
	return rep, nil
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
