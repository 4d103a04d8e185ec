// Package fleet watches the devices behind the gateway: when each was last
// heard from, how often it usually publishes, how many of its messages were
// rejected, and which have fallen silent for longer than their own habit
// allows. Memory is bounded by a device count, and per device it is a few
// dozen bytes, so a million devices fit in about a hundred megabytes.
package fleet

import (
	"hash/maphash"
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
	idOff    uint32 // the id is ids[idOff:idOff+idLen]
	idLen    uint16
	silent   bool
}

// minSamples is how many messages a device must have sent before its
// habit is known well enough to call it silent.
const minSamples = 3

// Watch tracks devices. Its methods are safe for concurrent use.
type Watch struct {
	opts Options

	mu sync.Mutex
	// index finds a device by the hash of its id. Neither it nor ids nor
	// devices holds a pointer, so a large fleet gives the garbage
	// collector nothing to scan: with string keys, the map's hundred
	// thousand pointers were scanned at every collection, a cost every
	// message paid.
	index map[uint64]int32
	// collide holds the ids whose hash an earlier id has (rare).
	collide   map[string]int32
	seed      maphash.Seed
	ids       []byte // every tracked id, back to back
	devices   []device
	silent    int
	untracked uint64
}

// maxIDLen is the longest id tracked; longer ones are counted as untracked.
const maxIDLen = 0xffff

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
	return &Watch{opts: o, index: map[uint64]int32{}, seed: maphash.MakeSeed()}
}

// id returns device i's id, viewing w.ids (whose bytes never change; a
// view outlives a reallocation of w.ids).
func (w *Watch) id(i int32) string {
	d := &w.devices[i]
	return unsafe.String(unsafe.SliceData(w.ids[d.idOff:]), int(d.idLen))
}

// find returns the index of device id; w.mu is held.
func (w *Watch) find(h uint64, id string) (int32, bool) {
	if i, ok := w.index[h]; ok && w.id(i) == id {
		return i, true
	}
	if w.collide != nil {
		i, ok := w.collide[id]
		return i, ok
	}
	return 0, false
}

// add tracks a new device; w.mu is held.
func (w *Watch) add(h uint64, id string, now int64) int32 {
	i := int32(len(w.devices))
	w.devices = append(w.devices, device{last: now, idOff: uint32(len(w.ids)), idLen: uint16(len(id))})
	w.ids = append(w.ids, id...)
	if _, taken := w.index[h]; taken {
		if w.collide == nil {
			w.collide = map[string]int32{}
		}
		w.collide[strings.Clone(id)] = i
	} else {
		w.index[h] = i
	}
	return i
}

// Seen records a message from the device at time at. id may point into a
// buffer the caller reuses: it is copied when the device is new.
func (w *Watch) Seen(id string, at time.Time) { w.record(id, at, false) }

// Rejected records a message from the device that could not be stored.
func (w *Watch) Rejected(id string, at time.Time) { w.record(id, at, true) }

func (w *Watch) record(id string, at time.Time, rejected bool) {
	now := at.UnixNano()
	h := maphash.String(w.seed, id)
	w.mu.Lock()
	defer w.mu.Unlock()
	i, ok := w.find(h, id)
	if !ok {
		if len(w.devices) >= w.opts.MaxDevices || len(id) > maxIDLen || uint64(len(w.ids)+len(id)) > math.MaxUint32 {
			w.untracked++
			return
		}
		i = w.add(h, id, now)
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
	h := maphash.String(w.seed, id)
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.find(h, id)
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
	for i := range w.devices {
		id := w.id(int32(i))
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
