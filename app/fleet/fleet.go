// Package fleet watches the devices behind the gateway: when each was last
// heard from, how often it usually publishes, how many of its messages were
// rejected, and which have fallen silent for longer than their own habit
// allows. Memory is bounded by a device count, and per device it is a few
// dozen bytes, so a million devices fit in about a hundred megabytes.
package fleet

import (
	"math"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Defaults of Options.
const (
	DefaultMaxDevices   = 100_000
	DefaultSilentFactor = 5
	DefaultMinSilence   = 30 * time.Second
)

// Options configure a Watch. The zero value uses the defaults.
type Options struct {
	// MaxDevices bounds the devices tracked; devices first heard from
	// after it is reached are counted (Stats.Untracked) but not tracked.
	MaxDevices int
	// SilentFactor: a device is silent when it has not been heard from for
	// SilentFactor times its usual interval (and at least MinSilence).
	SilentFactor float64
	MinSilence   time.Duration
}

// device is one tracked device, kept small: it is multiplied by the fleet.
type device struct {
	last     int64   // unix nanoseconds
	interval float32 // smoothed seconds between messages
	messages uint32
	rejected uint32
	silent   bool
}

// minSamples is how many messages a device must have sent before its
// habit is known well enough to call it silent.
const minSamples = 3

// Watch tracks devices. Its methods are safe for concurrent use.
type Watch struct {
	opts Options

	mu        sync.Mutex
	index     map[string]int32
	devices   []device
	arena     []byte // holds the map's key bytes; chunks are never moved
	silent    int
	untracked uint64
}

// arenaChunk is the size of each block device names are copied into, so a
// name costs its bytes and not an allocation of its own.
const arenaChunk = 64 << 10

// New returns an empty Watch.
func New(o Options) *Watch {
	if o.MaxDevices <= 0 {
		o.MaxDevices = DefaultMaxDevices
	}
	if o.SilentFactor <= 0 {
		o.SilentFactor = DefaultSilentFactor
	}
	if o.MinSilence <= 0 {
		o.MinSilence = DefaultMinSilence
	}
	return &Watch{opts: o, index: map[string]int32{}}
}

// Seen records a message from the device at time at. id may point into a
// buffer the caller reuses: it is copied when the device is new.
func (w *Watch) Seen(id string, at time.Time) { w.record(id, at, false) }

// Rejected records a message from the device that could not be stored.
func (w *Watch) Rejected(id string, at time.Time) { w.record(id, at, true) }

func (w *Watch) record(id string, at time.Time, rejected bool) {
	now := at.UnixNano()
	w.mu.Lock()
	defer w.mu.Unlock()
	i, ok := w.index[id]
	if !ok {
		if len(w.devices) >= w.opts.MaxDevices {
			w.untracked++
			return
		}
		i = int32(len(w.devices))
		w.index[w.intern(id)] = i
		w.devices = append(w.devices, device{last: now})
	}
	d := &w.devices[i]
	if d.messages > 0 && now > d.last {
		gap := float32(float64(now-d.last) / 1e9)
		if d.messages == 1 {
			d.interval = gap
		} else {
			d.interval += (gap - d.interval) / 8
		}
	}
	if now > d.last {
		d.last = now
	}
	d.messages++
	if rejected {
		d.rejected++
	}
	if d.silent {
		d.silent = false
		w.silent--
	}
}

// intern copies id into the arena and returns a string over the copy.
func (w *Watch) intern(id string) string {
	if len(id) > arenaChunk/4 {
		return strings.Clone(id)
	}
	if cap(w.arena)-len(w.arena) < len(id) {
		w.arena = make([]byte, 0, arenaChunk)
	}
	start := len(w.arena)
	w.arena = append(w.arena, id...)
	b := w.arena[start:len(w.arena):len(w.arena)]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// silenceAfter is how long device d may be quiet before it is silent.
func (w *Watch) silenceAfter(d *device) time.Duration {
	habit := time.Duration(float64(d.interval) * w.opts.SilentFactor * 1e9)
	return max(habit, w.opts.MinSilence)
}

// Sweep flags the devices that have fallen silent by now and returns how
// many are silent. A silent device returns to normal by itself with its
// next message.
func (w *Watch) Sweep(now time.Time) int {
	t := now.UnixNano()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.devices {
		d := &w.devices[i]
		if d.silent || d.messages < minSamples {
			continue
		}
		if time.Duration(t-d.last) > w.silenceAfter(d) {
			d.silent = true
			w.silent++
		}
	}
	return w.silent
}

// Known reports whether the device has been heard from (and is tracked).
func (w *Watch) Known(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.index[id]
	return ok
}

// Stats is the fleet in numbers.
type Stats struct {
	Devices   int    // tracked
	Silent    int    // flagged at the last Sweep (or since, and not heard from)
	Untracked uint64 // messages from devices beyond MaxDevices
}

// Stats returns the current counts.
func (w *Watch) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Stats{Devices: len(w.devices), Silent: w.silent, Untracked: w.untracked}
}

// Device is one device as List reports it.
type Device struct {
	ID       string    `json:"id"`
	LastSeen time.Time `json:"last_seen"`
	// PerMinute is the device's usual rate, from its smoothed interval.
	PerMinute float64 `json:"per_minute"`
	Messages  uint32  `json:"messages"`
	Rejected  uint32  `json:"rejected"`
	Silent    bool    `json:"silent"`
}

// List returns up to limit devices whose id contains match (all when match
// is empty): silent ones first, then those heard from longest ago. It keeps
// only the best limit while it scans, so asking for a page of a large fleet
// costs one pass and no copy of it.
func (w *Watch) List(match string, limit int) []Device {
	type entry struct {
		id string
		d  device
	}
	if limit <= 0 {
		return []Device{}
	}
	before := func(a, b *entry) bool {
		if a.d.silent != b.d.silent {
			return a.d.silent
		}
		if a.d.last != b.d.last {
			return a.d.last < b.d.last
		}
		return a.id < b.id
	}
	picked := make([]entry, 0, min(limit, 1024))
	w.mu.Lock()
	for id, i := range w.index {
		if match != "" && !strings.Contains(id, match) {
			continue
		}
		e := entry{id, w.devices[i]}
		if len(picked) == limit && !before(&e, &picked[len(picked)-1]) {
			continue
		}
		at, _ := slices.BinarySearchFunc(picked, e, func(x, y entry) int {
			if before(&x, &y) {
				return -1
			}
			return 1
		})
		if len(picked) < limit {
			picked = append(picked, entry{})
		}
		copy(picked[at+1:], picked[at:len(picked)-1])
		picked[at] = e
	}
	w.mu.Unlock()
	out := make([]Device, 0, min(limit, len(picked)))
	for _, e := range picked[:min(limit, len(picked))] {
		perMin := 0.0
		if e.d.interval > 0 {
			perMin = math.Round(60/float64(e.d.interval)*100) / 100
		}
		out = append(out, Device{
			ID: strings.Clone(e.id), LastSeen: time.Unix(0, e.d.last).UTC(), PerMinute: perMin,
			Messages: e.d.messages, Rejected: e.d.rejected, Silent: e.d.silent,
		})
	}
	return out
}
