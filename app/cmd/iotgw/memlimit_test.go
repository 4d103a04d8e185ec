package main

import (
	"context"
	"testing"
)

func TestFleetLimit(t *testing.T) {
	const base, mib = 16 << 20, 1 << 20
	for _, tc := range []struct{ held, want int64 }{
		{0, base},
		{1, base + mib},
		{mib, base + mib},
		{6*mib + 5, base + 7*mib},
	} {
		if got := fleetLimit(base, tc.held); got != tc.want {
			t.Errorf("fleetLimit(%d) = %d, want %d", tc.held, got, tc.want)
		}
	}
}

// followFleet sets the limit at once (a gateway restarted with a large
// fleet's spool gets its room from the start) and returns when asked.
func TestFollowFleetSetsAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	set := make(chan int64, 1)
	done := make(chan struct{})
	go func() {
		followFleet(ctx, 16<<20, func() int64 { return 3 << 20 }, func(l int64) int64 { set <- l; return 0 })
		close(done)
	}()
	if got := <-set; got != 19<<20 {
		t.Fatalf("limit set to %d, want %d", got, 19<<20)
	}
	cancel()
	<-done
}
