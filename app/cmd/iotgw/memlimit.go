package main

import (
	"context"
	"runtime/debug"
	"time"
)

// followFleetEvery is how often the memory limit is brought up to date.
const followFleetEvery = 2 * time.Second

// followFleet keeps the runtime's soft memory limit at base (what
// gateway.memory_limit allows the gateway's working memory) plus what the
// fleet watch and the topic cache hold (held). Those two grow with the
// number of devices, each bounded by its own setting, and hold no
// pointers. Counted inside a fixed limit they would shrink the room the
// collector has for garbage, and a fleet of 100,000 devices made it run
// about twice as often per message as a fleet of 100. It returns when ctx
// ends.
func followFleet(ctx context.Context, base int64, held func() int64, set func(int64) int64) {
	t := time.NewTicker(followFleetEvery)
	defer t.Stop()
	last := int64(-1)
	for {
		if l := fleetLimit(base, held()); l != last {
			set(l)
			last = l
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fleetLimit is base plus held, rounded up to a MiB so that a fleet that
// grows by a device does not move the limit each time.
func fleetLimit(base, held int64) int64 {
	const mib = 1 << 20
	return base + (held+mib-1)/mib*mib
}

// setMemoryLimit is debug.SetMemoryLimit, as followFleet's setter.
func setMemoryLimit(l int64) int64 { return debug.SetMemoryLimit(l) }
