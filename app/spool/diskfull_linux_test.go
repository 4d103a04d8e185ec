package spool

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFileSizeLimit stands in for a full disk: with RLIMIT_FSIZE just above
// the segment's size, the write of a batch stops part way with EFBIG (the
// Go runtime ignores SIGXFSZ). Append must report it, leave no partial
// records behind, and work again once there is room.
func TestFileSizeLimit(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Options{Dir: dir, SegmentBytes: 1 << 20})
	appendRange(t, s, 0, 10, 10)
	seg := filepath.Join(dir, "00000000000000000000.seg")
	before, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}

	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &orig); err != nil {
		t.Fatal(err)
	}
	limited := orig
	limited.Cur = uint64(before.Size()) + 100
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		t.Skipf("cannot lower RLIMIT_FSIZE: %v", err)
	}
	err = s.Append(payloads(10, 30))
	if rerr := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &orig); rerr != nil {
		t.Fatal(rerr)
	}
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("Append over the file size limit: %v, want EFBIG", err)
	}
	after, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() != before.Size() {
		t.Fatalf("failed Append left %d bytes behind", after.Size()-before.Size())
	}
	if st := s.Stats(); st.Records != 10 {
		t.Fatalf("failed Append changed Stats: %+v", st)
	}

	appendRange(t, s, 10, 30, 20)
	readExpect(t, s, 0, 30, 100, true)
}

// smallDisk mounts a tmpfs of size bytes on a fresh directory for the
// test; it needs root (and a mount namespace that allows it).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "spool")
}

// A disk that fills before MaxBytes is reached is a full spool under
// Block: Append reports ErrFull (so the caller holds its messages instead
// of treating the disk as broken), writes nothing, and works again once
// commits free segments. Open warns that the cap exceeds the free space.
func TestDiskFullBlock(t *testing.T) {
	dir := smallDisk(t, "512k")
	var logs bytes.Buffer
	s := open(t, Options{Dir: dir, SegmentBytes: 32 << 10, Logger: logTo(&logs)})
	if free := s.Stats().DiskFree; free <= 0 || free > 512<<10 {
		t.Fatalf("DiskFree at Open = %d, want within the 512 KiB filesystem", free)
	}
	if !strings.Contains(logs.String(), "less free disk space than MaxBytes") {
		t.Fatalf("no warning that MaxBytes exceeds the free space; log:\n%s", logs.String())
	}
	n := 0
	var err error
	for ; n < 100_000; n += 100 {
		if err = s.Append(payloads(n, n+100)); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append on a full disk after %d records: %v, want ErrFull wrapping ENOSPC", n, err)
	}
	if st := s.Stats(); st.Records != int64(n) || st.DiskFree >= 16<<10 {
		t.Fatalf("after the failed Append: %+v, want %d records and the disk nearly full", st, n)
	}
	// Until a commit passes a whole segment the checkpoint cannot be saved
	// either (Commit says so and advances all the same).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	half := n / 200 * 100
	for i := 0; i < half; {
		b, err := s.Read(ctx, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range b.Records {
			if !bytes.Equal(r, payload(i)) {
				t.Fatalf("record %d: %q", i, r)
			}
			i++
		}
		if err := s.Commit(b.End); err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Commit: %v", err)
		}
	}
	if err := s.Append(payloads(n, n+100)); err != nil {
		t.Fatalf("Append after commits freed segments: %v", err)
	}
	readExpect(t, s, half, n+100, 100, true)
	expectEmpty(t, s)
}

// Under DropOldest a full disk starts the policy: whole segments of the
// oldest records go, every Append succeeds, and what is read is exactly
// the newest records, counted drops and all.
func TestDiskFullDropOldest(t *testing.T) {
	dir := smallDisk(t, "512k")
	s := open(t, Options{Dir: dir, SegmentBytes: 32 << 10, Policy: DropOldest})
	const total = 30_000 // several times what the disk holds
	for i := 0; i < total; i += 100 {
		if err := s.Append(payloads(i, i+100)); err != nil {
			t.Fatalf("Append %d on a full disk under DropOldest: %v", i, err)
		}
	}
	st := s.Stats()
	if st.Dropped == 0 || st.Dropped+st.Records != total {
		t.Fatalf("after %d records: %+v, want drops and dropped+waiting = %d", total, st, total)
	}
	readExpect(t, s, int(st.Dropped), total, 500, true)
	expectEmpty(t, s)
}

// A reader holding a batch of the oldest segment when the disk fills: the
// segment is dropped from disk, the batch stays whole and is committed, and
// nothing it held is counted as dropped.
func TestDiskFullDropOldestWhileHeld(t *testing.T) {
	dir := smallDisk(t, "512k")
	s := open(t, Options{Dir: dir, SegmentBytes: 32 << 10, Policy: DropOldest})
	appendRange(t, s, 0, 200, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := s.Read(ctx, 200, 0)
	if err != nil || len(held.Records) != 200 {
		t.Fatalf("Read: %d records, %v", len(held.Records), err)
	}
	const total = 20_000
	appendRange(t, s, 200, total, 100)
	for i, r := range held.Records {
		if !bytes.Equal(r, payload(i)) {
			t.Fatalf("held record %d changed: %q", i, r)
		}
	}
	if err := s.Commit(held.End); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Dropped == 0 || 200+st.Dropped+st.Records != total {
		t.Fatalf("%+v: want drops, and 200 held + dropped + waiting = %d", st, total)
	}
	readExpect(t, s, 200+int(st.Dropped), total, 500, true)
	expectEmpty(t, s)
}
