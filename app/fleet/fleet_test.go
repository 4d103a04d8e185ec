package fleet

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_800_000_000, 0)

// every publishes n messages from id, one per interval, starting at start.
func every(w *Watch, id string, start time.Time, interval time.Duration, n int) time.Time {
	at := start
	for range n {
		w.Seen(id, at)
		at = at.Add(interval)
	}
	return at.Add(-interval)
}

func TestSilentAfterItsOwnHabit(t *testing.T) {
	w := New(Options{SilentFactor: 5, MinSilence: time.Second})
	fastLast := every(w, "s/fast", t0, time.Second, 10) // every second
	slowLast := every(w, "s/slow", t0, time.Minute, 10) // every minute
	every(w, "s/new", t0, time.Second, 2)               // too few to know its habit
	now := slowLast.Add(10 * time.Second)
	if fastLast.After(now) {
		t.Fatal("test clock wrong")
	}
	// Fast has been quiet for minutes (≫ 5 × 1 s): silent. Slow, 10 s
	// into a 5 × 1 min allowance: not. New: unknown habit, not.
	if got := w.Sweep(now); got != 1 {
		t.Fatalf("Sweep = %d silent, want 1", got)
	}
	list := w.List("", 10)
	if !list[0].Silent || list[0].ID != "s/fast" {
		t.Fatalf("first listed %+v, want s/fast silent", list[0])
	}
	for _, d := range list[1:] {
		if d.Silent {
			t.Errorf("%s flagged silent", d.ID)
		}
	}
	if list[0].PerMinute != 60 {
		t.Errorf("fast rate %v/min, want 60", list[0].PerMinute)
	}
	// Slow passes its allowance too.
	if got := w.Sweep(slowLast.Add(5*time.Minute + time.Second)); got != 2 {
		t.Fatalf("Sweep = %d, want 2 (slow past 5 minutes)", got)
	}
	// A message brings a device back by itself.
	w.Seen("s/fast", now)
	if st := w.Stats(); st.Silent != 1 || st.Devices != 3 {
		t.Fatalf("stats %+v, want 1 silent of 3", st)
	}
	if got := w.Sweep(now); got != 1 {
		t.Fatalf("Sweep after fast returned: %d silent, want 1", got)
	}
}

func TestMinSilence(t *testing.T) {
	w := New(Options{SilentFactor: 5, MinSilence: time.Minute})
	last := every(w, "s/d", t0, 100*time.Millisecond, 10)
	if got := w.Sweep(last.Add(30 * time.Second)); got != 0 {
		t.Fatalf("silent after 30 s with MinSilence 1m: %d", got)
	}
	if got := w.Sweep(last.Add(61 * time.Second)); got != 1 {
		t.Fatalf("not silent after 61 s: %d", got)
	}
}

func TestRejectedAndSearch(t *testing.T) {
	w := New(Options{})
	w.Seen("plant-a/d1", t0)
	w.Rejected("plant-a/d1", t0.Add(time.Second))
	w.Seen("plant-b/d2", t0.Add(2*time.Second))
	got := w.List("plant-a", 10)
	if len(got) != 1 || got[0].ID != "plant-a/d1" || got[0].Messages != 2 || got[0].Rejected != 1 {
		t.Fatalf("List(plant-a) = %+v", got)
	}
	if got := w.List("", 1); len(got) != 1 || got[0].ID != "plant-a/d1" {
		t.Fatalf("List limit 1 = %+v, want the one heard from longest ago", got)
	}
}

func TestMaxDevices(t *testing.T) {
	w := New(Options{MaxDevices: 2})
	for i := range 5 {
		w.Seen(fmt.Sprint("d", i), t0)
	}
	if st := w.Stats(); st.Devices != 2 || st.Untracked != 3 {
		t.Fatalf("stats %+v, want 2 tracked and 3 untracked", st)
	}
}

// TestIDCopied: the id passed to Seen may be a view of a reused buffer.
func TestIDCopied(t *testing.T) {
	w := New(Options{})
	buf := []byte("site/dev-1")
	w.Seen(string(buf[:]), t0) // a copy by conversion, as callers with strings do
	view := buf[:]
	w.Seen(unsafeString(view), t0)
	copy(buf, "XXXX/XXX-X")
	if got := w.List("", 10); len(got) != 1 || got[0].ID != "site/dev-1" {
		t.Fatalf("List = %+v after the buffer was reused", got)
	}
}

// BenchmarkMillionDevices reports the memory a million tracked devices
// take (bytes/device) and the cost of recording a message and of a sweep.
func BenchmarkMillionDevices(b *testing.B) {
	const n = 1_000_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("site-%03d/dev-%06d", i%1000, i)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	w := New(Options{MaxDevices: n})
	for i, id := range ids {
		w.Seen(id, t0.Add(time.Duration(i)))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perDevice := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
	b.ResetTimer()
	for i := range b.N {
		w.Seen(ids[i%n], t0.Add(time.Duration(n+i)))
	}
	b.StopTimer()
	start := time.Now()
	w.Sweep(t0.Add(time.Hour))
	b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/sweep")
	b.ReportMetric(perDevice, "bytes/device")
	runtime.KeepAlive(w)
}

// BenchmarkList100k is what the live page asks for: the 20 devices to show
// out of 100,000 (silent first, then longest unheard).
func BenchmarkList100k(b *testing.B) {
	const n = 100_000
	w := New(Options{MaxDevices: n})
	for i := range n {
		w.Seen(fmt.Sprintf("site-%03d/dev-%06d", i%1000, i), t0.Add(time.Duration(i)))
	}
	b.ResetTimer()
	for range b.N {
		if got := w.List("", 20); len(got) != 20 {
			b.Fatal(len(got))
		}
	}
}

// List's bounded scan gives the same first devices as sorting them all.
func TestListKeepsTheBest(t *testing.T) {
	w := New(Options{MinSilence: time.Second})
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		id := fmt.Sprintf("s/d%03d", i)
		start := t0.Add(time.Duration(rng.IntN(100)) * time.Second)
		every(w, id, start, time.Second, 3+rng.IntN(3))
	}
	w.Sweep(t0.Add(110 * time.Second))
	all := w.List("", 1000)
	if len(all) != 500 {
		t.Fatalf("%d devices", len(all))
	}
	sorted := slices.IsSortedFunc(all, func(a, b Device) int {
		if a.Silent != b.Silent {
			if a.Silent {
				return -1
			}
			return 1
		}
		if c := a.LastSeen.Compare(b.LastSeen); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if !sorted || !all[0].Silent {
		t.Fatalf("List is not silent first, then oldest: %v", all[:3])
	}
	for _, k := range []int{1, 7, 20, 499} {
		if got := w.List("", k); !slices.Equal(got, all[:k]) {
			t.Errorf("List(%d) differs from the first %d of all", k, k)
		}
	}
	if got := w.List("d01", 5); len(got) != 5 || !strings.Contains(got[0].ID, "d01") {
		t.Errorf("List(d01, 5) = %v", got)
	}
}

// Two ids with the same hash are still two devices, and a third with
// that hash is not either of them.
func TestHashCollision(t *testing.T) {
	w := New(Options{})
	const h = 0xabcd_0000_0000_0003 // every id the same hash
	a, _ := w.add(h, "s1/a", 1)
	b, _ := w.add(h, "s1/b", 2)
	if a == b {
		t.Fatal("two devices at one place")
	}
	for id, want := range map[string]uint32{"s1/a": a, "s1/b": b} {
		if got, ok := w.find(h, id); !ok || got != want {
			t.Errorf("find(%s) = %d, %v; want %d", id, got, ok, want)
		}
	}
	if _, ok := w.find(h, "s1/c"); ok {
		t.Error("an id never added was found")
	}
	if w.dev(a).last != 1 || w.dev(b).last != 2 {
		t.Error("the devices' records are mixed up")
	}
}

// Devices spread over many chunks, ids of every length up to the longest
// tracked: each keeps its own id and record.
func TestChunks(t *testing.T) {
	w := New(Options{MaxDevices: 1 << 20})
	var ids []string
	for i := range 40_000 {
		ids = append(ids, fmt.Sprintf("s%d/%s", i, strings.Repeat("x", i%97)))
	}
	ids = append(ids, strings.Repeat("L", maxIDLen), "")
	for i, id := range ids {
		for range i%3 + 1 {
			w.Seen(id, t0.Add(time.Duration(i)*time.Second))
		}
	}
	if w.Stats().Devices != len(ids) || len(w.chunks) < 2 {
		t.Fatalf("%d devices in %d chunks", w.Stats().Devices, len(w.chunks))
	}
	got := map[string]uint32{}
	for _, d := range w.List("", len(ids)) {
		got[d.ID] = d.Messages
	}
	for i, id := range ids {
		if got[id] != uint32(i%3+1) {
			t.Fatalf("device %d (%d bytes): %d messages, want %d", i, len(id), got[id], i%3+1)
		}
	}
	w.Seen(strings.Repeat("L", maxIDLen+1), t0)
	if w.Stats().Untracked != 1 {
		t.Fatal("an id longer than the longest tracked was tracked")
	}
}

// Bytes counts what the devices take, and grows with them.
func TestBytes(t *testing.T) {
	w := New(Options{})
	if w.Bytes() != 0 {
		t.Fatalf("an empty watch holds %d bytes", w.Bytes())
	}
	for i := range 50_000 {
		w.Seen(fmt.Sprintf("s1/d%d", i), t0)
	}
	if b := w.Bytes(); b < 50_000*32 || b > 50_000*100 {
		t.Fatalf("50,000 devices hold %d bytes", b)
	}
}

// The watch against a plain map of the same rules, over random messages
// from ids of every length, with reads (which flush the batch) at random
// points, a cap on tracked devices, and times that sometimes go back.
func TestAgainstAModel(t *testing.T) {
	type model struct {
		last               int64
		messages, rejected uint32
	}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		const maxDevices = 300
		w := New(Options{MaxDevices: maxDevices})
		want := map[string]*model{}
		var order []string
		untracked := uint64(0)
		at := t0
		for i := range 5000 {
			id := fmt.Sprintf("s%d/%s%d", rng.IntN(3), strings.Repeat("x", rng.IntN(30)), rng.IntN(400))
			if rng.IntN(10) == 0 {
				at = at.Add(-time.Duration(rng.IntN(1000)) * time.Millisecond)
			} else {
				at = at.Add(time.Duration(rng.IntN(50)) * time.Millisecond)
			}
			rejected := rng.IntN(5) == 0
			if rejected {
				w.Rejected(id, at)
			} else {
				w.Seen(id, at)
			}
			m := want[id]
			if m == nil {
				if len(want) >= maxDevices {
					untracked++
					goto read
				}
				m = &model{last: at.UnixNano()}
				want[id] = m
				order = append(order, id)
			}
			m.messages++
			if rejected {
				m.rejected++
			}
			m.last = max(m.last, at.UnixNano())
		read:
			if rng.IntN(500) == 0 || i == 4999 {
				st := w.Stats()
				if st.Devices != len(want) || st.Untracked != untracked {
					t.Fatalf("seed %d message %d: %d devices, %d untracked; want %d, %d", seed, i, st.Devices, st.Untracked, len(want), untracked)
				}
				got := w.List("", maxDevices)
				if len(got) != len(want) {
					t.Fatalf("seed %d: List has %d devices, want %d", seed, len(got), len(want))
				}
				for _, d := range got {
					m := want[d.ID]
					if m == nil || d.Messages != m.messages || d.Rejected != m.rejected || d.LastSeen.UnixNano() != m.last {
						t.Fatalf("seed %d message %d: %+v, want %+v", seed, i, d, m)
					}
				}
				if !w.Known(order[rng.IntN(len(order))]) {
					t.Fatalf("seed %d: a tracked device is not known", seed)
				}
			}
		}
	}
}

// Recording a message from a known device allocates nothing, batches and
// their flushes included.
func TestSeenDoesNotAllocate(t *testing.T) {
	w := New(Options{})
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("s1/d%d", i)
		w.Seen(ids[i], t0)
	}
	w.Stats()
	i := 0
	// A run is a whole batch, so that one allocation per flush shows.
	if a := testing.AllocsPerRun(100, func() {
		for range batchSize {
			w.Seen(ids[i%len(ids)], t0)
			i++
		}
	}); a != 0 {
		t.Fatalf("%v allocations a batch of %d messages", a, batchSize)
	}
}
