package spool

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

// DropOldest against a reader that holds batches: Stats.Dropped counts
// exactly the records that are never delivered (read and committed), and
// only once the reader has let go of them.

// rec is record i for these tests: all the same size, so that MaxBytes can
// be given in records.
func rec(i int) []byte { return fmt.Appendf(nil, "r%06d", i) }

const recSize = headerSize + 7

func recs(from, to int) [][]byte {
	var rs [][]byte
	for i := from; i < to; i++ {
		rs = append(rs, rec(i))
	}
	return rs
}

func recIndex(t testing.TB, r []byte) int {
	t.Helper()
	i, err := strconv.Atoi(string(bytes.TrimPrefix(r, []byte("r"))))
	if err != nil || !bytes.Equal(r, rec(i)) {
		t.Fatalf("unexpected record %q", r)
	}
	return i
}

// dropSpool opens a DropOldest spool with room for capRecords records.
func dropSpool(t testing.TB, capRecords, segRecords int) *Spool {
	t.Helper()
	return open(t, Options{Dir: t.TempDir(), MaxBytes: int64(capRecords) * recSize,
		SegmentBytes: int64(segRecords) * recSize, Policy: DropOldest})
}

func appendRecs(t testing.TB, s *Spool, from, to, batch int) {
	t.Helper()
	for i := from; i < to; i += batch {
		if err := s.Append(recs(i, min(i+batch, to))); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if st := s.Stats(); st.Bytes > s.maxBytes {
			t.Fatalf("after Append %d: %d bytes, MaxBytes %d", i, st.Bytes, s.maxBytes)
		}
	}
}

// readRecs reads one batch of at most max records and checks it holds
// records from to to-1.
func readRecs(t testing.TB, s *Spool, max, from, to int) Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := s.Read(ctx, max, 0)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	var got []int
	for _, r := range b.Records {
		got = append(got, recIndex(t, r))
	}
	ok := len(got) == to-from
	for k := 0; ok && k < len(got); k++ {
		ok = got[k] == from+k
	}
	if !ok {
		t.Fatalf("Read: records %v, want %d to %d", got, from, to-1)
	}
	return b
}

func commit(t testing.TB, s *Spool, b Batch) {
	t.Helper()
	if err := s.Commit(b.End); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func expectDropped(t testing.TB, s *Spool, want int64, when string) {
	t.Helper()
	if st := s.Stats(); st.Dropped != want {
		t.Fatalf("%s: Dropped = %d, want %d (%+v)", when, st.Dropped, want, st)
	}
}

// A batch the reader holds while DropOldest discards its records: counted
// only if the reader gives it up.
func TestDropOldestHeldBatch(t *testing.T) {
	for _, giveUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("rewind=%v", giveUp), func(t *testing.T) {
			s := dropSpool(t, 10, 1000)
			appendRecs(t, s, 0, 10, 10)
			b := readRecs(t, s, 4, 0, 4)
			appendRecs(t, s, 10, 12, 2) // discards 0 and 1: held
			expectDropped(t, s, 0, "records 0-1 of the batch in hand discarded")
			if st := s.Stats(); st.Records != 10 || st.Bytes != 10*recSize {
				t.Fatalf("the discarded records still take room: %+v", st)
			}
			appendRecs(t, s, 12, 18, 6) // discards 2-3 (held) and 4-7 (never read)
			expectDropped(t, s, 4, "records 0-7 discarded, 0-3 of them held")
			if giveUp {
				s.Rewind()
				expectDropped(t, s, 8, "after Rewind")
				b = readRecs(t, s, 100, 8, 18)
			} else {
				// Delivered from memory after all: not lost.
				commit(t, s, b)
				expectDropped(t, s, 4, "after committing the batch")
				b = readRecs(t, s, 100, 8, 18)
			}
			commit(t, s, b)
			expectEmpty(t, s)
			if giveUp {
				expectDropped(t, s, 8, "at the end")
			} else {
				expectDropped(t, s, 4, "at the end")
			}
		})
	}
}

// A reader that reads ahead holds several batches: a discard counts against
// the batch it hit, not against the others.
func TestDropOldestReadAhead(t *testing.T) {
	s := dropSpool(t, 10, 1000)
	appendRecs(t, s, 0, 10, 10)
	b1 := readRecs(t, s, 3, 0, 3)
	readRecs(t, s, 3, 3, 6)     // b2, given up below
	appendRecs(t, s, 10, 12, 2) // discards 0-1, in b1 only
	if len(s.held) != 2 || s.held[0].dropped != 2 || s.held[1].dropped != 0 {
		t.Fatalf("held batches %+v, want 2 discarded from the first and none from the second", s.held)
	}
	commit(t, s, b1)
	expectDropped(t, s, 0, "b1 committed")
	// b2 was untouched: giving it up loses nothing, and it is read again.
	s.Rewind()
	expectDropped(t, s, 0, "b2 rewound")
	b2 := readRecs(t, s, 3, 3, 6)
	readRecs(t, s, 3, 6, 9)     // b3
	appendRecs(t, s, 12, 16, 4) // on disk 3-11; discards 3-5, all of b2
	if len(s.held) != 2 || s.held[0].dropped != 3 || s.held[1].dropped != 0 {
		t.Fatalf("held batches %+v, want 3 discarded from the first and none from the second", s.held)
	}
	commit(t, s, b2) // behind the committed position now, still delivered
	expectDropped(t, s, 0, "b2 committed after it was discarded")
	appendRecs(t, s, 16, 19, 3) // discards 6-8, all of b3
	expectDropped(t, s, 0, "b3 discarded while held")
	s.Rewind()
	expectDropped(t, s, 3, "b3 rewound")
	b := readRecs(t, s, 100, 9, 19)
	commit(t, s, b)
	expectEmpty(t, s)
	if len(s.held) != 0 {
		t.Fatalf("held batches left: %+v", s.held)
	}
}

// DropOldest discards records of the segment a Read is walking: those that
// end up in the batch are held like the rest of it, the others are
// counted.
func TestDropOldestWhileReading(t *testing.T) {
	tests := []struct {
		name                 string
		segRecords, appendBy int
		extra                int  // records the hook appends, one at a time: each discards one
		max                  int  // records per Read
		giveUp               bool // Rewind instead of Commit
		batch                []int
		dropped              int64 // after the first Read
		droppedEnd           int64
	}{
		// The hook's Appends discard 0-3 while the walk reads 0-5.
		{name: "in batch", segRecords: 1000, appendBy: 10, extra: 4, max: 6, batch: seq(0, 6), dropped: 0, droppedEnd: 0},
		// ... while it reads 0-1: 2-3 are never read.
		{name: "past batch", segRecords: 1000, appendBy: 10, extra: 4, max: 2, batch: seq(0, 2), dropped: 2, droppedEnd: 2},
		{name: "past batch, rewound", segRecords: 1000, appendBy: 10, extra: 4, max: 2, giveUp: true, batch: seq(0, 2), dropped: 2, droppedEnd: 4},
		// Segments of 4 records: the discards (0-5) run into the second
		// segment, which the walk of the first cannot return; the next
		// walk starts after them.
		{name: "next segment", segRecords: 4, appendBy: 1, extra: 6, max: 100, batch: append(seq(0, 4), seq(6, 16)...), dropped: 2, droppedEnd: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dropSpool(t, 10, tt.segRecords)
			appendRecs(t, s, 0, 10, tt.appendBy)
			extra := tt.extra
			s.readHook = func() {
				s.readHook = nil
				appendRecs(t, s, 10, 10+extra, 1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			b, err := s.Read(ctx, tt.max, 0)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, r := range b.Records {
				got = append(got, recIndex(t, r))
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.batch) {
				t.Fatalf("batch %v, want %v", got, tt.batch)
			}
			expectDropped(t, s, tt.dropped, "after the Read")
			delivered := 0
			if tt.giveUp {
				s.Rewind()
			} else {
				commit(t, s, b)
				delivered += len(b.Records)
			}
			// Whatever is left is read and committed.
			for s.Stats().Records > 0 {
				b := readRecs(t, s, 100, int(s.committed.seq), 10+extra)
				commit(t, s, b)
				delivered += len(b.Records)
			}
			expectDropped(t, s, tt.droppedEnd, "at the end")
			if int64(delivered)+tt.droppedEnd != int64(10+extra) {
				t.Fatalf("delivered %d, dropped %d, appended %d", delivered, tt.droppedEnd, 10+extra)
			}
		})
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

// A writer that sometimes gives its batch up, against an appender that
// keeps the spool overflowing: every record is delivered at most once, and
// delivered plus Dropped is exactly what was appended.
func TestDropOldestConcurrentRewind(t *testing.T) {
	const n = 20_000
	s := dropSpool(t, 100, 16)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := 0; i < n; {
			k := min(1+i%61, n-i)
			if err := s.Append(recs(i, i+k)); err != nil {
				t.Errorf("Append: %v", err)
				return
			}
			i += k
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	delivered := make([]bool, n)
	count := 0
	for reads := 0; ; reads++ {
		select {
		case <-done:
			if s.Stats().Records == 0 {
				wg.Wait()
				d := s.Stats().Dropped
				if int64(count)+d != n {
					t.Fatalf("delivered %d, Dropped %d, appended %d", count, d, n)
				}
				t.Logf("delivered %d, dropped %d", count, d)
				return
			}
		default:
		}
		rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		b, err := s.Read(rctx, 1+reads%150, 0)
		rcancel()
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			continue
		}
		if reads%3 == 0 {
			s.Rewind()
			continue
		}
		for _, r := range b.Records {
			i := recIndex(t, r)
			if delivered[i] {
				t.Fatalf("record %d delivered twice", i)
			}
			delivered[i] = true
			count++
		}
		commit(t, s, b)
	}
}
