package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

func seeded() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

// Each wait lies between half and all of a step that doubles up to Max.
func TestDoublesWithEqualJitter(t *testing.T) {
	b := &Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Rand: seeded()}
	steps := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	var below, above bool // the jitter uses both halves of its range
	for i, s := range steps {
		s *= time.Millisecond
		if s > time.Second {
			s = time.Second
		}
		w := b.Next()
		if w < s/2 || w > s {
			t.Fatalf("wait %d = %s, want between %s and %s", i, w, s/2, s)
		}
		if w < s*3/4 {
			below = true
		} else {
			above = true
		}
	}
	if !below || !above {
		t.Errorf("the waits do not spread over [step/2, step]: below %v above %v", below, above)
	}
}

// The same seed gives the same schedule; another seed another one.
func TestSeededIsDeterministic(t *testing.T) {
	run := func(r *rand.Rand) []time.Duration {
		b := &Backoff{Initial: time.Second, Max: time.Minute, Rand: r}
		var out []time.Duration
		for range 8 {
			out = append(out, b.Next())
		}
		return out
	}
	a, b, c := run(seeded()), run(seeded()), run(rand.New(rand.NewPCG(3, 4)))
	same := true
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("wait %d: %s and %s from the same seed", i, a[i], b[i])
		}
		same = same && a[i] == c[i]
	}
	if same {
		t.Error("two seeds gave the same schedule: the waits are not jittered")
	}
}

// A floor (Retry-After, an overload code) is never undercut, is jittered
// above, and the schedule continues from it, even past Max.
func TestNextAtLeast(t *testing.T) {
	b := &Backoff{Initial: 50 * time.Millisecond, Max: time.Second, Rand: seeded()}
	for range 20 {
		b.Reset()
		if w := b.NextAtLeast(5 * time.Second); w < 5*time.Second || w > 7500*time.Millisecond {
			t.Fatalf("wait %s, want between the 5s floor and 7.5s", w)
		}
		if w := b.Next(); w > time.Second {
			t.Fatalf("after the floor the wait is %s, beyond Max", w)
		}
	}
	b.Reset()
	if w := b.NextAtLeast(10 * time.Millisecond); w < 25*time.Millisecond || w > 50*time.Millisecond {
		t.Fatalf("a floor below the step changed the wait: %s", w)
	}
}

// The schedule starts over only after a healthy spell of StableAfter.
func TestHealthyResetsOnlyAfterStableAfter(t *testing.T) {
	b := &Backoff{Initial: 100 * time.Millisecond, Max: time.Minute, StableAfter: 10 * time.Second, Rand: seeded()}
	for range 5 {
		b.Next()
	}
	b.Healthy(9 * time.Second)
	if w := b.Next(); w < 1600*time.Millisecond {
		t.Fatalf("a short spell reset the schedule: wait %s, want at least 1.6s", w)
	}
	b.Healthy(10 * time.Second)
	if w := b.Next(); w > 100*time.Millisecond {
		t.Fatalf("a stable spell did not reset the schedule: wait %s", w)
	}
}
