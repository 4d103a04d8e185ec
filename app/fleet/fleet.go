// Package fleet watches the devices behind the gateway: when each was last
// heard from, how often it usually publishes, how many of its messages were
// rejected, and which have fallen silent for longer than their own habit
// allows. Memory is bounded by a device count, and per device it is a few
// dozen bytes, so a million devices fit in about sixty megabytes.
package fleet

import (
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/iot-gateway/iot-gateway/app/internal/tagtable"
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
// It lives in a chunk of Watch's words, followed by its id.
type device struct {
	last     int64   // unix nanoseconds
	interval float32 // smoothed seconds between messages
	messages uint32
	rejected uint32
	idLen    uint16
	silent   bool
}

// deviceWords is a device's size in 8-byte words.
const deviceWords = uint32((unsafe.Sizeof(device{}) + 7) / 8)

// Devices are stored in chunks that never move, so a device's place (its
// offset: chunk<<chunkShift | word) stays valid as the fleet grows, and a
// growing fleet is never copied.
const (
	chunkShift = 14 // 16,384 words, 128 KiB: room for the longest id
	chunkWords = 1 << chunkShift
	chunkMask  = chunkWords - 1
)

// minSamples is how many messages a device must have sent before its
// habit is known well enough to call it silent.
const minSamples = 3

// Watch tracks devices. Its methods are safe for concurrent use.
type Watch struct {
	opts Options

	mu   sync.Mutex
	seed maphash.Seed
	// slots find a device by the hash of its id: each holds the high half
	// of the hash and the device's offset + 1 (0 is an empty slot). Open
	// addressing, at most half full, so a lookup, found or not (a device
	// beyond MaxDevices), ends within a probe or two of one cache line.
	slots []uint64
	// chunks hold every device followed by its id (padded to a word), back
	// to back: a lookup touches one slot and one place in a chunk. Nothing
	// here holds a pointer the collector must follow per device: with a map
	// of strings, a hundred thousand pointers were scanned at every
	// collection, a cost every message paid.
	chunks [][]uint64
	count  int
	// pending messages, recorded in batches (see flush); their ids are
	// copied into pendingIDs, as the caller's may view a reused buffer.
	pending    []seen
	pendingIDs []byte
	sink       uint64 // keeps flush's early loads from being optimized away
	silent     int
	untracked  uint64
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
	return &Watch{opts: o, seed: maphash.MakeSeed()}
}

// dev returns the device at off.
func (w *Watch) dev(off uint32) *device {
	c := w.chunks[off>>chunkShift]
	return (*device)(unsafe.Pointer(&c[off&chunkMask]))
}

// id returns the id of the device at off, viewing its chunk (whose id
// bytes never change).
func (w *Watch) id(off uint32) string {
	d := w.dev(off)
	if d.idLen == 0 {
		return ""
	}
	c := w.chunks[off>>chunkShift]
	return unsafe.String((*byte)(unsafe.Pointer(&c[off&chunkMask+deviceWords])), int(d.idLen))
}

// size is how many words the device at off takes with its id.
func (w *Watch) size(off uint32) uint32 {
	return deviceWords + (uint32(w.dev(off).idLen)+7)/8
}

// each calls f with the offset of every device, in the order first heard.
func (w *Watch) each(f func(off uint32)) {
	for k, c := range w.chunks {
		for i := uint32(0); i < uint32(len(c)); {
			off := uint32(k)<<chunkShift | i
			f(off)
			i += w.size(off)
		}
	}
}

// find returns the offset of device id; w.mu is held.
func (w *Watch) find(h uint64, id string) (uint32, bool) {
	if len(w.slots) == 0 {
		return 0, false
	}
	mask := uint64(len(w.slots) - 1)
	tag := h >> 32
	for i := tag & mask; ; i = (i + 1) & mask {
		sl := w.slots[i]
		if sl == 0 {
			return 0, false
		}
		// The same half of the hash: this id, or another one's.
		if sl>>32 == tag && w.id(uint32(sl)-1) == id {
			return uint32(sl) - 1, true
		}
	}
}

// add tracks a new device; w.mu is held. ok is false when the chunks are
// out of offsets.
func (w *Watch) add(h uint64, id string, now int64) (uint32, bool) {
	need := deviceWords + (uint32(len(id))+7)/8
	k := len(w.chunks) - 1
	if k < 0 || uint32(len(w.chunks[k]))+need > chunkWords {
		if len(w.chunks) >= 1<<(32-chunkShift) {
			return 0, false
		}
		w.chunks = append(w.chunks, make([]uint64, 0, chunkWords))
		k++
	}
	c := w.chunks[k]
	at := uint32(len(c))
	c = c[:at+need]
	clear(c[at:])
	w.chunks[k] = c
	off := uint32(k)<<chunkShift | at
	*w.dev(off) = device{last: now, idLen: uint16(len(id))}
	if len(id) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&c[at+deviceWords])), len(id)), id)
	}
	if (w.count+1)*2 > len(w.slots) {
		w.slots = tagtable.Grow(w.slots, 64)
	}
	w.slots[tagtable.Free(w.slots, h>>32)] = h>>32<<32 | uint64(off+1)
	w.count++
	return off, true
}

// Seen records a message from the device at time at. id may point into a
// buffer the caller reuses: it is copied when the device is new.
func (w *Watch) Seen(id string, at time.Time) { w.record(id, at, false) }

// Rejected records a message from the device that could not be stored.
func (w *Watch) Rejected(id string, at time.Time) { w.record(id, at, true) }

func (w *Watch) record(id string, at time.Time, rejected bool) {
	now := at.UnixNano()
	w.mu.Lock()
	if len(id) > maxIDLen {
		w.untracked++
		w.mu.Unlock()
		return
	}
	w.pending = append(w.pending, seen{at: now, idOff: uint32(len(w.pendingIDs)), idLen: uint16(len(id)), rejected: rejected})
	w.pendingIDs = append(w.pendingIDs, id...)
	if len(w.pending) >= batchSize || now-w.pending[0].at > int64(batchAge) {
		w.flush()
	}
	w.mu.Unlock()
}

// Messages are recorded in batches: with a large fleet each device's slot
// and record are a cache miss in the CPU, taken one at a time when every
// message looks its device up between decoding it and spooling it. Looked
// up together, a batch's misses overlap. Every reader (Sweep, Known,
// Stats, List, Bytes) records what is pending first, so none sees a
// message missing.
const (
	batchSize = 64
	batchAge  = 20 * time.Millisecond
)

// seen is a message waiting in the batch; its id is in pendingIDs.
type seen struct {
	at       int64
	idOff    uint32
	idLen    uint16
	rejected bool
}

// flush records the pending messages; w.mu is held.
func (w *Watch) flush() {
	var hashes [batchSize]uint64
	for from := 0; from < len(w.pending); from += batchSize {
		batch := w.pending[from:min(from+batchSize, len(w.pending))]
		// First the hashes and a load of each one's first slot, which do
		// not depend on each other: the CPU has their misses in flight at
		// once, and the lookups below find the slots in its cache.
		var touch uint64
		mask := uint64(len(w.slots) - 1)
		for k := range batch {
			hashes[k] = maphash.String(w.seed, w.pendingID(&batch[k]))
			if len(w.slots) > 0 {
				touch += w.slots[hashes[k]>>32&mask]
			}
		}
		w.sink = touch
		for k := range batch {
			w.apply(hashes[k], w.pendingID(&batch[k]), batch[k].at, batch[k].rejected)
		}
	}
	// Both kept for the next batch: recording allocates nothing.
	w.pending, w.pendingIDs = w.pending[:0], w.pendingIDs[:0]
}

// pendingID is the id of a pending message, viewing pendingIDs.
func (w *Watch) pendingID(p *seen) string {
	return unsafe.String(unsafe.SliceData(w.pendingIDs[p.idOff:]), int(p.idLen))
}

// apply records one message; w.mu is held.
func (w *Watch) apply(h uint64, id string, now int64, rejected bool) {
	off, ok := w.find(h, id)
	if !ok {
		if w.count >= w.opts.MaxDevices {
			w.untracked++
			return
		}
		if off, ok = w.add(h, id, now); !ok {
			w.untracked++
			return
		}
	}
	d := w.dev(off)
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
	w.flush()
	w.each(func(off uint32) {
		d := w.dev(off)
		if d.silent || d.messages < minSamples {
			return
		}
		if time.Duration(t-d.last) > w.silenceAfter(d) {
			d.silent = true
			w.silent++
		}
	})
	return w.silent
}

// Known reports whether the device has been heard from (and is tracked).
func (w *Watch) Known(id string) bool {
	h := maphash.String(w.seed, id)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flush()
	_, ok := w.find(h, id)
	return ok
}

// Bytes is the memory the watch holds for its devices (bounded by
// MaxDevices). None of it is pointers: the collector does not scan it.
func (w *Watch) Bytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flush()
	return len(w.chunks)*chunkWords*8 + len(w.slots)*8
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
	w.flush()
	return Stats{Devices: w.count, Silent: w.silent, Untracked: w.untracked}
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
	w.flush()
	w.each(func(off uint32) {
		id := w.id(off)
		if match != "" && !strings.Contains(id, match) {
			return
		}
		e := entry{id, *w.dev(off)}
		if len(picked) == limit && !before(&e, &picked[len(picked)-1]) {
			return
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
	})
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
