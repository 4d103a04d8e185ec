// Package backoff is the one retry schedule of the gateway's loops: the
// MQTT reconnect, the spool append and read, and the InfluxDB write.
//
// Each wait doubles up to a ceiling, with equal jitter: a wait is drawn
// uniformly between half and all of the current step. Half keeps the
// growth that protects a struggling peer; the random half makes clients
// that failed together (a broker restart, an InfluxDB outage seen by many
// gateways) drift apart instead of retrying in step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is one loop's schedule. The zero value is not usable; set
// Initial and Max. It is not safe for concurrent use: each retry loop owns
// its own.
type Backoff struct {
	// Initial is the first step; the first wait is between Initial/2 and
	// Initial.
	Initial time.Duration
	// Max bounds the steps after the first (Initial, even when larger),
	// and so every wait not raised by NextAtLeast.
	Max time.Duration
	// StableAfter is how long a healthy spell must last (see Healthy) for
	// the schedule to start again from Initial. A peer that accepts and
	// then drops at once (a client id taken over, a broker that closes
	// after CONNACK) keeps backing off instead of being retried at full
	// rate forever.
	StableAfter time.Duration
	// Rand draws the jitter; nil uses math/rand/v2's global source. Tests
	// pass a seeded one.
	Rand *rand.Rand

	step time.Duration // the step of the next wait; 0 = Initial
}

// Next returns the wait before the next attempt and advances the step.
func (b *Backoff) Next() time.Duration { return b.NextAtLeast(0) }

// NextAtLeast is Next for a wait that must not be shorter than floor: the
// peer said when to come back (Retry-After, an MQTT overload reason code).
// The wait is jittered above floor (by up to half the step, which is raised
// to floor), not pinned to it, so clients told the same thing do not come
// back together; the schedule continues from there. Only such a wait may
// exceed Max.
func (b *Backoff) NextAtLeast(floor time.Duration) time.Duration {
	step := b.step
	if step <= 0 {
		step = b.Initial
	}
	step = max(step, floor)
	wait := max(step/2, floor) + b.jitter(step/2)
	b.step = min(2*step, b.Max)
	return wait
}

// Healthy reports a spell of success that lasted d (a session that was up,
// a write that went through); the schedule starts again from Initial only
// if d is at least StableAfter.
func (b *Backoff) Healthy(d time.Duration) {
	if d >= b.StableAfter {
		b.Reset()
	}
}

// Reset starts the schedule again from Initial.
func (b *Backoff) Reset() { b.step = 0 }

// jitter returns a duration in [0, d].
func (b *Backoff) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	if b.Rand != nil {
		return time.Duration(b.Rand.Int64N(int64(d) + 1))
	}
	return rand.N(d + 1)
}
