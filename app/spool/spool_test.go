package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// payload is record i's content: a line of line protocol of varying length.
func payload(i int) []byte {
	return fmt.Appendf(nil, "env,sensor=s%03d temp=%d.5,hum=%di %d", i%97, i, i%100, 1_700_000_000_000_000_000+int64(i))
}

func payloads(from, to int) [][]byte {
	var rs [][]byte
	for i := from; i < to; i++ {
		rs = append(rs, payload(i))
	}
	return rs
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func open(t testing.TB, o Options) *Spool {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func appendRange(t testing.TB, s *Spool, from, to, batch int) {
	t.Helper()
	for i := from; i < to; i += batch {
		if err := s.Append(payloads(i, min(i+batch, to))); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
}

// readExpect reads records want[0..] in order, in batches of at most
// maxRecords, committing each batch if commit is set.
func readExpect(t testing.TB, s *Spool, from, to, maxRecords int, commit bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := from; i < to; {
		b, err := s.Read(ctx, maxRecords, 0)
		if err != nil {
			t.Fatalf("Read at record %d: %v", i, err)
		}
		for _, r := range b.Records {
			if !bytes.Equal(r, payload(i)) {
				t.Fatalf("record %d: got %q, want %q", i, r, payload(i))
			}
			i++
		}
		if i > to {
			t.Fatalf("read past record %d", to)
		}
		if commit {
			if err := s.Commit(b.End); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
	}
}

// expectEmpty checks that no record is readable.
func expectEmpty(t testing.TB, s *Spool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if b, err := s.Read(ctx, 0, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read on an empty spool: %d records, err %v", len(b.Records), err)
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOptionsValidation(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no dir", Options{}, "Options.Dir"},
		{"negative segment", Options{Dir: dir, SegmentBytes: -1}, "Options.SegmentBytes"},
		{"negative max", Options{Dir: dir, MaxBytes: -5}, "Options.MaxBytes"},
		{"unknown policy", Options{Dir: dir, Policy: "newest"}, "Options.Policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: err %v, want it to name %s", err, tt.want)
			}
		})
	}
}

func TestRoundTripAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	clock := time.Unix(1_800_000_000, 0)
	s := open(t, Options{Dir: dir, SegmentBytes: 1024, Now: func() time.Time { return clock }})
	appendRange(t, s, 0, 500, 10)

	st := s.Stats()
	if st.Records != 500 || st.Segments < 20 || !st.Oldest.Equal(clock) {
		t.Fatalf("Stats after 500 appends: %+v", st)
	}
	if n := len(segFiles(t, dir)); n != st.Segments {
		t.Fatalf("%d segment files, Stats says %d", n, st.Segments)
	}
	var wantBytes int64
	for i := range 500 {
		wantBytes += headerSize + int64(len(payload(i)))
	}
	if st.Bytes != wantBytes {
		t.Fatalf("Stats.Bytes = %d, want %d", st.Bytes, wantBytes)
	}

	readExpect(t, s, 0, 500, 37, true)
	st = s.Stats()
	if st.Records != 0 || st.Bytes != 0 || !st.Oldest.IsZero() || st.Segments != 1 {
		t.Fatalf("Stats after committing everything: %+v", st)
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files left after committing everything, want 1", n)
	}
	expectEmpty(t, s)
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir, SegmentBytes: 2048}
	s := open(t, o)
	appendRange(t, s, 0, 100, 7)
	readExpect(t, s, 0, 40, 40, true)   // delivered
	readExpect(t, s, 40, 60, 20, false) // read, not committed
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, o)
	if st := s.Stats(); st.Records != 60 || st.CorruptRecords != 0 {
		t.Fatalf("Stats after reopen: %+v", st)
	}
	readExpect(t, s, 40, 100, 1000, true)
	expectEmpty(t, s)
	appendRange(t, s, 100, 120, 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, o)
	readExpect(t, s, 100, 120, 1000, true)
	expectEmpty(t, s)
}

func TestRewind(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir(), SegmentBytes: 512})
	appendRange(t, s, 0, 60, 5)
	readExpect(t, s, 0, 10, 10, true)
	readExpect(t, s, 10, 50, 10, false)
	s.Rewind()
	readExpect(t, s, 10, 60, 25, true)
	expectEmpty(t, s)
}

func TestReadLimits(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	big := bytes.Repeat([]byte("x"), 5000)
	if err := s.Append([][]byte{big, []byte("a"), []byte("b"), []byte("c")}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b, err := s.Read(ctx, 10, 100)
	if err != nil || len(b.Records) != 1 || !bytes.Equal(b.Records[0], big) {
		t.Fatalf("Read with maxBytes below the first record: %d records, %v", len(b.Records), err)
	}
	b, err = s.Read(ctx, 2, 100)
	if err != nil || len(b.Records) != 2 || string(b.Records[1]) != "b" {
		t.Fatalf("Read with maxRecords 2: %q, %v", b.Records, err)
	}
	// Appending to a returned record must not clobber the next one.
	for _, r := range b.Records {
		if cap(r) != len(r) {
			t.Fatalf("record %q has spare capacity %d", r, cap(r)-len(r))
		}
	}
}

func TestReadWakesAndCloses(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	got := make(chan Batch)
	go func() {
		b, err := s.Read(context.Background(), 10, 0)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	if err := s.Append(payloads(0, 3)); err != nil {
		t.Fatal(err)
	}
	if b := <-got; len(b.Records) != 3 {
		t.Fatalf("woken Read got %d records, want 3", len(b.Records))
	}

	errc := make(chan error)
	go func() {
		_, err := s.Read(context.Background(), 10, 0)
		errc <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Read blocked across Close: %v, want ErrClosed", err)
	}
	if err := s.Append(payloads(0, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open on the same directory: %v", err)
	}
}

// damage describes a way the end of the last segment can be broken.
type damage struct {
	name string
	hurt func(t *testing.T, path string, size int64)
}

var damages = []damage{
	{"torn mid-payload", func(t *testing.T, path string, size int64) {
		truncate(t, path, size-5)
	}},
	{"torn mid-header", func(t *testing.T, path string, size int64) {
		// The last record of the test is 16+len(payload) bytes long; keep
		// 9 bytes of its header.
		truncate(t, path, size-int64(len(payload(lastRecord)))-headerSize+9)
	}},
	{"flipped payload byte", func(t *testing.T, path string, size int64) {
		flip(t, path, size-3)
	}},
	{"flipped timestamp byte", func(t *testing.T, path string, size int64) {
		flip(t, path, size-int64(len(payload(lastRecord)))-4)
	}},
	{"impossible length", func(t *testing.T, path string, size int64) {
		off := size - int64(len(payload(lastRecord))) - headerSize
		writeAt(t, path, off, []byte{0xff, 0xff, 0xff, 0x7f})
	}},
	{"zeroed tail after crash", func(t *testing.T, path string, size int64) {
		writeAt(t, path, size, make([]byte, 300))
	}},
}

const lastRecord = 59

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x5a
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedTail(t *testing.T) {
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			dir := t.TempDir()
			o := Options{Dir: dir, SegmentBytes: 1500}
			s := open(t, o)
			appendRange(t, s, 0, lastRecord+1, 6)
			readExpect(t, s, 0, 12, 12, true)
			s.Close()

			files := segFiles(t, dir)
			last := files[len(files)-1]
			fi, err := os.Stat(last)
			if err != nil {
				t.Fatal(err)
			}
			d.hurt(t, last, fi.Size())

			var logs bytes.Buffer
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s = open(t, o)
			st := s.Stats()
			if st.CorruptRecords < 1 || st.CorruptBytes <= 0 {
				t.Fatalf("Stats after damage: %+v", st)
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), filepath.Base(last)) {
				t.Fatalf("no warning naming %s in log:\n%s", last, logs.String())
			}
			// Every record but the damaged last one is served, then new
			// appends after the cut read back intact.
			want := lastRecord
			if d.name == "zeroed tail after crash" {
				want = lastRecord + 1
			}
			readExpect(t, s, 12, want, 100, true)
			expectEmpty(t, s)
			appendRange(t, s, 1000, 1030, 10)
			readExpect(t, s, 1000, 1030, 100, false)
			s.Close()

			s = open(t, o)
			if st := s.Stats(); st.CorruptRecords != 0 || st.Records != 30 {
				t.Fatalf("Stats after reopening the repaired spool: %+v", st)
			}
			readExpect(t, s, 1000, 1030, 100, true)
		})
	}
}

// segFirst is the sequence number a segment file is named after.
func segFirst(t testing.TB, path string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".seg"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// recordOff is the offset of record i in the segment whose first record is
// first, when records hold payload(first), payload(first+1), ...
func recordOff(first, i int) int64 {
	var off int64
	for k := first; k < i; k++ {
		off += headerSize + int64(len(payload(k)))
	}
	return off
}

func recordSize(i int) int64 { return headerSize + int64(len(payload(i))) }

// without is the records from..to-1 minus the ranges in skip (pairs of
// [from, to)).
func without(from, to int, skip ...int) []int {
	var idx []int
	for i := from; i < to; i++ {
		out := false
		for k := 0; k+1 < len(skip); k += 2 {
			out = out || (i >= skip[k] && i < skip[k+1])
		}
		if !out {
			idx = append(idx, i)
		}
	}
	return idx
}

// readIndexes reads until nothing is left and checks that the records are
// payload(idx[0]), payload(idx[1]), ..., committing each batch if commit
// is set.
func readIndexes(t testing.TB, s *Spool, idx []int, maxRecords int, commit bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // return what is there, then context.Canceled
	j := 0
	for {
		b, err := s.Read(ctx, maxRecords, 0)
		if errors.Is(err, context.Canceled) {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d records: %v", j, err)
		}
		for _, r := range b.Records {
			if j >= len(idx) {
				t.Fatalf("extra record %q", r)
			}
			if !bytes.Equal(r, payload(idx[j])) {
				t.Fatalf("record %d: got %q, want %q", j, r, payload(idx[j]))
			}
			j++
		}
		if commit {
			if err := s.Commit(b.End); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
	}
	if j != len(idx) {
		t.Fatalf("read %d records, want %d", j, len(idx))
	}
}

func logTo(buf *bytes.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(buf, nil)) }

func TestBitFlipInSealedSegment(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir, SegmentBytes: 500}
	s := open(t, o)
	appendRange(t, s, 0, 60, 5)
	s.Close()
	files := segFiles(t, dir)
	if len(files) < 4 {
		t.Fatalf("only %d segments", len(files))
	}
	first := segFirst(t, files[1])
	victim := first + 2 // a record in the middle of a sealed segment
	flip(t, files[1], recordOff(first, victim)+headerSize+5)

	var logs bytes.Buffer
	o.Logger = logTo(&logs)
	s = open(t, o)
	st := s.Stats()
	if st.CorruptRecords != 1 || st.CorruptBytes != recordSize(victim) || st.Segments != len(files) {
		t.Fatalf("Stats: %+v, want 1 record of %d bytes skipped and %d segments", st, recordSize(victim), len(files))
	}
	if n := len(segFiles(t, dir)); n != len(files) {
		t.Fatalf("%d segment files left, want %d", n, len(files))
	}
	line := fmt.Sprintf("offset=%d", recordOff(first, victim))
	if !strings.Contains(logs.String(), filepath.Base(files[1])) || !strings.Contains(logs.String(), line) {
		t.Fatalf("no warning naming %s and %s:\n%s", files[1], line, logs.String())
	}
	readIndexes(t, s, without(0, 60, victim, victim+1), 7, true)
	if st := s.Stats(); st.Records != 0 || st.Bytes != 0 || st.CorruptRecords != 1 {
		t.Fatalf("Stats after reading everything: %+v", st)
	}
	appendRange(t, s, 200, 210, 10)
	readIndexes(t, s, without(200, 210), 100, true)
}

func TestBitFlipInNewestSegment(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir, SegmentBytes: 1 << 20}
	s := open(t, o)
	appendRange(t, s, 0, 30, 5)
	readExpect(t, s, 0, 5, 5, true)
	s.Close()
	files := segFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("%d segments, want 1", len(files))
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	flip(t, files[0], recordOff(0, 12)+10) // timestamp of record 12; 13..29 follow

	s = open(t, o)
	if st := s.Stats(); st.CorruptRecords != 1 || st.CorruptBytes != recordSize(12) || st.Records != 25 {
		t.Fatalf("Stats: %+v", st)
	}
	if fi2, err := os.Stat(files[0]); err != nil || fi2.Size() != fi.Size() {
		t.Fatalf("segment changed size: %v", err)
	}
	readIndexes(t, s, without(5, 30, 12, 13), 4, false)
	appendRange(t, s, 30, 40, 10)
	readIndexes(t, s, without(30, 40), 100, false)
	s.Close()

	// Nothing was committed: the damaged record is met and skipped again.
	s = open(t, o)
	if st := s.Stats(); st.CorruptRecords != 1 || st.Records != 35 {
		t.Fatalf("Stats after second reopen: %+v", st)
	}
	readIndexes(t, s, without(5, 40, 12, 13), 1000, true)
	s.Close()
	s = open(t, o)
	if st := s.Stats(); st.CorruptRecords != 0 || st.Records != 0 {
		t.Fatalf("Stats after committing past the damage: %+v", st)
	}
	expectEmpty(t, s)
}

func TestBitFlipAtRunTime(t *testing.T) {
	for _, segBytes := range []int64{1 << 20, 400} {
		t.Run(fmt.Sprint(segBytes), func(t *testing.T) {
			dir := t.TempDir()
			var logs bytes.Buffer
			s := open(t, Options{Dir: dir, SegmentBytes: segBytes, Logger: logTo(&logs)})
			appendRange(t, s, 0, 40, 4)
			readExpect(t, s, 0, 8, 8, true)

			// The disk changes an unread record under the running spool.
			var path string
			var first int
			for _, p := range segFiles(t, dir) {
				if f := segFirst(t, p); f <= 20 {
					path, first = p, f
				}
			}
			flip(t, path, recordOff(first, 20)+headerSize+1)

			// Read a batch, deliver nothing, read again: the damage is
			// counted and logged once.
			ctx := context.Background()
			if _, err := s.Read(ctx, 30, 0); err != nil {
				t.Fatalf("Read: %v", err)
			}
			s.Rewind()
			readIndexes(t, s, without(8, 40, 20, 21), 5, true)
			st := s.Stats()
			if st.CorruptRecords != 1 || st.CorruptBytes != recordSize(20) || st.Records != 0 || st.Bytes != 0 {
				t.Fatalf("Stats: %+v", st)
			}
			if n := strings.Count(logs.String(), "damaged record skipped"); n != 1 {
				t.Fatalf("%d warnings, want 1:\n%s", n, logs.String())
			}
			expectEmpty(t, s)
			appendRange(t, s, 100, 110, 5)
			readIndexes(t, s, without(100, 110), 100, true)
			s.Close()
			s = open(t, Options{Dir: dir, SegmentBytes: segBytes})
			if st := s.Stats(); st.CorruptRecords != 0 || st.Records != 0 {
				t.Fatalf("Stats after reopen: %+v", st)
			}
		})
	}
}

func TestImpossibleLengthInSealedSegment(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir, SegmentBytes: 500}
	s := open(t, o)
	appendRange(t, s, 0, 60, 5)
	s.Close()
	files := segFiles(t, dir)
	if len(files) < 4 {
		t.Fatalf("only %d segments", len(files))
	}
	first, next := segFirst(t, files[1]), segFirst(t, files[2])
	victim := first + 2
	fi, err := os.Stat(files[1])
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, files[1], recordOff(first, victim), []byte{0xff, 0xff, 0xff, 0x7f})

	s = open(t, o)
	lost := fi.Size() - recordOff(first, victim)
	if st := s.Stats(); st.CorruptRecords != 1 || st.CorruptBytes != lost || st.Segments != len(files) {
		t.Fatalf("Stats: %+v, want 1 damaged stretch of %d bytes, %d segments", st, lost, len(files))
	}
	if fi, err := os.Stat(files[1]); err != nil || fi.Size() != recordOff(first, victim) {
		t.Fatalf("damaged segment not cut at the damage: %v", err)
	}
	if n := len(segFiles(t, dir)); n != len(files) {
		t.Fatalf("%d segment files left, want %d", n, len(files))
	}
	readIndexes(t, s, without(0, 60, victim, next), 6, true)
	if st := s.Stats(); st.Records != 0 || st.Bytes != 0 {
		t.Fatalf("Stats after reading everything: %+v", st)
	}
	appendRange(t, s, 200, 210, 10)
	readIndexes(t, s, without(200, 210), 100, true)
}

// A damaged length in the segment being appended to, found by Read: the
// rest of the segment is skipped, and appends move to a new segment so that
// the next Open, which cuts that segment at the damage, keeps them.
func TestImpossibleLengthAtRunTimeInTail(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir, SegmentBytes: 1 << 20}
	s := open(t, o)
	appendRange(t, s, 0, 30, 5)
	readExpect(t, s, 0, 5, 5, true)
	path := segFiles(t, dir)[0]
	writeAt(t, path, recordOff(0, 10), []byte{0xff, 0xff, 0xff, 0x0f})

	readIndexes(t, s, without(5, 30, 10, 30), 100, false)
	if st := s.Stats(); st.CorruptRecords != 1 || st.CorruptBytes != recordOff(10, 30) {
		t.Fatalf("Stats: %+v", st)
	}
	appendRange(t, s, 30, 40, 5)
	if n := len(segFiles(t, dir)); n != 2 {
		t.Fatalf("%d segments after the damage, want 2", n)
	}
	readIndexes(t, s, without(30, 40), 100, false)
	s.Close()

	s = open(t, o)
	if st := s.Stats(); st.CorruptRecords != 1 || st.Segments != 2 {
		t.Fatalf("Stats after reopen: %+v", st)
	}
	readIndexes(t, s, without(5, 40, 10, 30), 7, true)
	expectEmpty(t, s)
}

func TestCheckpointProblems(t *testing.T) {
	tests := []struct {
		name string
		ck   []byte // nil: remove the checkpoint
	}{
		{"missing", nil},
		{"garbled", []byte("v1 0 12 \x00\x01 zz\n")},
		{"bad checksum", []byte("v1 0 10 0 deadbeef\n")},
		{"off a record boundary", encodeCheckpoint(Position{seg: 0, off: 7, seq: 1})},
		{"segment gone", encodeCheckpoint(Position{seg: 12345, off: 0, seq: 12345})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			o := Options{Dir: dir, SegmentBytes: 1 << 20}
			s := open(t, o)
			appendRange(t, s, 0, 30, 10)
			readExpect(t, s, 0, 20, 20, true)
			s.Close()
			ck := filepath.Join(dir, checkpointName)
			if tt.ck == nil {
				os.Remove(ck)
			} else if err := os.WriteFile(ck, tt.ck, 0o600); err != nil {
				t.Fatal(err)
			}
			s = open(t, o)
			readExpect(t, s, 0, 30, 100, true) // replay from the start
			expectEmpty(t, s)
		})
	}
}

func TestBlockWhenFull(t *testing.T) {
	rec := bytes.Repeat([]byte("r"), 100)
	s := open(t, Options{Dir: t.TempDir(), MaxBytes: 10 * (headerSize + 100)})
	for range 10 {
		if err := s.Append([][]byte{rec}); err != nil {
			t.Fatal(err)
		}
	}
	before := s.Stats()
	if err := s.Append([][]byte{rec}); !errors.Is(err, ErrFull) {
		t.Fatalf("Append over the cap: %v, want ErrFull", err)
	}
	if after := s.Stats(); after != before {
		t.Fatalf("failed Append changed Stats: %+v -> %+v", before, after)
	}
	b, err := s.Read(context.Background(), 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append([][]byte{rec}); !errors.Is(err, ErrFull) {
		t.Fatalf("Append after Read but before Commit: %v, want ErrFull", err)
	}
	if err := s.Commit(b.End); err != nil {
		t.Fatal(err)
	}
	if err := s.Append([][]byte{rec, rec, rec, rec}); err != nil {
		t.Fatalf("Append after Commit freed room: %v", err)
	}
	// An empty record still takes its header's bytes.
	if err := s.Append(make([][]byte, 1)); !errors.Is(err, ErrFull) {
		t.Fatalf("Append of an empty record to a full spool: %v, want ErrFull", err)
	}
}

func TestDropOldest(t *testing.T) {
	dir := t.TempDir()
	var size int64
	for i := range 10 {
		size += headerSize + int64(len(payload(i)))
	}
	s := open(t, Options{Dir: dir, SegmentBytes: 300, MaxBytes: size, Policy: DropOldest})
	appendRange(t, s, 0, 10, 5)
	// The reader holds a batch when the oldest records are dropped.
	b, err := s.Read(context.Background(), 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, s, 10, 35, 1)
	st := s.Stats()
	// Records 0-2 left the disk too, but the reader holds them: they count
	// as dropped only if it gives them up.
	if st.Dropped < 22 || st.Records > 10 || st.Bytes > size {
		t.Fatalf("Stats after overflow: %+v", st)
	}
	if err := s.Commit(b.End); err != nil {
		t.Fatalf("Commit of a batch that was dropped meanwhile: %v", err)
	}
	first := 35 - int(st.Records)
	if d := s.Stats().Dropped; int64(first-3) != st.Dropped || d != st.Dropped {
		t.Fatalf("discarded records 0-%d of which 0-2 were delivered, but Dropped is %d before the commit and %d after",
			first-1, st.Dropped, d)
	}
	readExpect(t, s, first, 35, 100, true)
	expectEmpty(t, s)
	if err := s.Append([][]byte{make([]byte, int(size))}); !errors.Is(err, ErrFull) {
		t.Fatalf("batch larger than MaxBytes: %v, want ErrFull", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, Options{Dir: dir, SegmentBytes: 300, MaxBytes: size, Policy: DropOldest})
	expectEmpty(t, s)
}

// dirWritable reports whether the test process can create files in dir
// despite its mode (root can).
func dirWritable(dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}

func TestUnwritableDirectory(t *testing.T) {
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(parent, 0o700)
	if dirWritable(parent) {
		t.Skip("mode 0500 does not stop this user from writing (running as root)")
	}
	dir := filepath.Join(parent, "spool")
	_, err := Open(Options{Dir: dir, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), dir) || !errors.Is(err, os.ErrPermission) {
		t.Fatalf("Open in an unwritable directory: %v", err)
	}

	os.Chmod(parent, 0o700)
	s := open(t, Options{Dir: dir, SegmentBytes: 100})
	appendRange(t, s, 0, 5, 5) // fills the first segment past SegmentBytes
	os.Chmod(dir, 0o500)
	if err := s.Append(payloads(5, 10)); err == nil || !errors.Is(err, os.ErrPermission) {
		t.Fatalf("Append needing a new segment in a read-only directory: %v", err)
	}
	os.Chmod(dir, 0o700)
	appendRange(t, s, 5, 10, 5)
	readExpect(t, s, 0, 10, 100, true)
}

// TestDirectoryGone covers what root can test too: the directory vanishes
// under a running spool (replaced by a file), then comes back.
func TestDirectoryGone(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "spool")
	s := open(t, Options{Dir: dir, SegmentBytes: 100})
	appendRange(t, s, 0, 5, 5)
	moved := filepath.Join(parent, "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := s.Append(payloads(5, 10))
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Append with the directory gone: %v, want an error naming %s", err, dir)
	}
	os.Remove(dir)
	if err := os.Rename(moved, dir); err != nil {
		t.Fatal(err)
	}
	appendRange(t, s, 5, 10, 5)
	readExpect(t, s, 0, 10, 100, true)

	file := filepath.Join(parent, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Options{Dir: filepath.Join(file, "spool"), Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Open below a file: %v", err)
	}
}

func TestConcurrentAppendRead(t *testing.T) {
	tests := []struct {
		policy Policy
		max    int64
	}{
		{Block, 0},
		{DropOldest, 20_000},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			const n = 20_000
			s := open(t, Options{Dir: t.TempDir(), SegmentBytes: 8 << 10, MaxBytes: tt.max, Policy: tt.policy})
			var wg sync.WaitGroup
			stop := make(chan struct{})
			wg.Go(func() {
				for i := 0; i < n; {
					k := min(1+i%53, n-i)
					if err := s.Append(payloads(i, i+k)); err != nil {
						t.Errorf("Append: %v", err)
						return
					}
					i += k
				}
			})
			wg.Go(func() { // Stats from a third goroutine
				for {
					select {
					case <-stop:
						return
					default:
						if st := s.Stats(); st.Records < 0 || st.Bytes < 0 {
							t.Errorf("negative Stats: %+v", st)
						}
					}
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			next, seen := 0, 0
			for next < n {
				b, err := s.Read(ctx, 500, 0)
				if err != nil {
					t.Fatalf("Read after %d records: %v", seen, err)
				}
				for _, r := range b.Records {
					var i int
					for i = next; i < n && !bytes.Equal(r, payload(i)); i++ {
						if tt.policy == Block {
							t.Fatalf("record %d: got %q", next, r)
						}
					}
					if i == n {
						t.Fatalf("record out of order or damaged after %d: %q", next, r)
					}
					next = i + 1
					seen++
				}
				if err := s.Commit(b.End); err != nil {
					t.Fatal(err)
				}
			}
			close(stop)
			wg.Wait()
			if tt.policy == Block && seen != n {
				t.Fatalf("read %d records, appended %d", seen, n)
			}
			// Every record is either delivered (read and committed) or
			// counted as dropped, never both.
			st := s.Stats()
			if st.Records != 0 || int64(seen)+st.Dropped != n {
				t.Fatalf("read %d, Stats %+v", seen, st)
			}
		})
	}
}

func TestOldest(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	calls := 0
	now := func() time.Time { calls++; return t0.Add(time.Duration(calls-1) * time.Second) }
	dir := t.TempDir()
	s := open(t, Options{Dir: dir, SegmentBytes: 200, Now: now})
	if st := s.Stats(); !st.Oldest.IsZero() {
		t.Fatalf("empty spool has Oldest %v", st.Oldest)
	}
	appendRange(t, s, 0, 9, 3) // three Appends: t0, t0+1s, t0+2s
	if st := s.Stats(); !st.Oldest.Equal(t0) {
		t.Fatalf("Stats.Oldest = %v, want %v", st.Oldest, t0)
	}
	b, err := s.Read(context.Background(), 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Oldest.Equal(t0) {
		t.Fatalf("Batch.Oldest = %v, want %v", b.Oldest, t0)
	}
	if err := s.Commit(b.End); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); !st.Oldest.Equal(t0.Add(time.Second)) || st.Records != 5 {
		t.Fatalf("after committing 4 records: %+v", st)
	}
	s.Close()
	s = open(t, Options{Dir: dir, SegmentBytes: 200})
	if st := s.Stats(); !st.Oldest.Equal(t0.Add(time.Second)) || st.Records != 5 {
		t.Fatalf("after reopening: %+v", st)
	}
}

// Read recycles the memory of batches once they are given up, and only
// then: a batch still held keeps its records when the reader reads ahead.
func TestReadRecyclesGivenUpBatches(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	appendRange(t, s, 0, 300, 50)
	ctx := context.Background()
	read := func(from, n int) Batch {
		t.Helper()
		b, err := s.Read(ctx, n, 0)
		if err != nil || len(b.Records) != n {
			t.Fatalf("Read: %d records, %v", len(b.Records), err)
		}
		for i, r := range b.Records {
			if !bytes.Equal(r, payload(from+i)) {
				t.Fatalf("record %d = %q", from+i, r)
			}
		}
		return b
	}
	check := func(b Batch, from int, what string) {
		t.Helper()
		for i, r := range b.Records {
			if !bytes.Equal(r, payload(from+i)) {
				t.Fatalf("%s: record %d changed to %q", what, from+i, r)
			}
		}
	}
	first := read(0, 100)
	if err := s.Commit(first.End); err != nil {
		t.Fatal(err)
	}
	second := read(100, 100)
	if &second.Records[0][0] != &first.Records[0][0] {
		t.Fatal("the memory of a committed batch was not reused")
	}
	// Read ahead: second is held while third is read, so third must not
	// take second's memory; committing second alone, with third still
	// held, must not recycle either.
	third := read(200, 50)
	check(second, 100, "second while third was read")
	if err := s.Commit(second.End); err != nil {
		t.Fatal(err)
	}
	fourth := read(250, 50)
	check(third, 200, "third while fourth was read")
	// Rewind gives up both held batches: reading again reuses memory and
	// returns the same records.
	s.Rewind()
	again := read(200, 50)
	_ = fourth
	check(again, 200, "after Rewind")
}
