package deadletter

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAddAndRotate(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	if err := d.Add(now, "sensors/a/b/c", "bad_utf8", errors.New("payload is not valid UTF-8"), []byte{0xff, 0xfe}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(now, "sensors/a/b/c", "too_large", errors.New("big"), []byte(strings.Repeat("x", 5000))); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []Entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 2 || !got[0].Base64 || got[0].Reason != "bad_utf8" || got[1].Size != 5000 || len(got[1].Payload) != excerptBytes {
		t.Fatalf("entries: %+v", got)
	}
	for i := 0; i < 10; i++ {
		if err := d.Add(now, "t", "not_json", errors.New("x"), []byte(strings.Repeat("y", 900))); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{FileName, FileName + ".1"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 4096 {
			t.Fatalf("%s is %d bytes, over the bound", name, st.Size())
		}
	}
}

// A rotation that fails (the rename, then the reopen) loses only the
// entries it could not write, each reported; the file works again as soon
// as the state directory does, instead of answering "closed" for good.
func TestRotationRecovers(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := Open(dir, 200)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	now := time.Now()
	add := func(i int) error {
		return d.Add(now, "t", "not_json", errors.New("x"), []byte(strings.Repeat("y", 100)+strconv.Itoa(i)))
	}
	if err := add(0); err != nil {
		t.Fatal(err)
	}
	// The rename fails: ".1" is a directory that is not empty.
	if err := os.MkdirAll(filepath.Join(dir, FileName+".1", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := add(i); err != nil {
			t.Fatalf("Add %d with the rename failing: %v", i, err)
		}
	}
	if n := countEntries(t, filepath.Join(dir, FileName)); n != 4 {
		t.Fatalf("%d entries kept while rotation fails, want 4", n)
	}
	// Rotation works again.
	if err := os.RemoveAll(filepath.Join(dir, FileName+".1")); err != nil {
		t.Fatal(err)
	}
	if err := add(4); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, filepath.Join(dir, FileName+".1")); n != 4 {
		t.Fatalf("%d entries rotated, want 4", n)
	}
	// The whole directory goes away: rename and reopen fail, and each Add
	// says so rather than writing into a removed file.
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	if err := add(5); err == nil {
		t.Fatal("Add succeeded with the state directory gone")
	}
	if err := add(6); err == nil {
		t.Fatal("Add succeeded with the state directory gone")
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := add(7); err != nil {
		t.Fatalf("Add once the directory is back: %v", err)
	}
	if n := countEntries(t, filepath.Join(dir, FileName)); n != 1 {
		t.Fatalf("%d entries after recovery, want 1", n)
	}
	d.Close()
	if err := add(8); err == nil {
		t.Fatal("Add after Close succeeded")
	}
}

func countEntries(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}
