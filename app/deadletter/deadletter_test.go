package deadletter

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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
