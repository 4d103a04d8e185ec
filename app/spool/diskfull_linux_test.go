package spool

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
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
