package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to Open as a segment file. Open must not
// fail or panic, and the records it then serves must be exactly those that
// are really in the file with a valid checksum, in file order: records with
// a bad checksum are skipped when a valid record follows them, and the file
// is cut where damage starts that no valid record follows. Stats must count
// the skipped and cut bytes.
func FuzzOpen(f *testing.F) {
	var valid []byte
	for i := range 5 {
		valid = appendRecord(valid, payload(i), int64(i)*1e9)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-7])
	f.Add(append(bytes.Clone(valid), make([]byte, 40)...))
	flipped := bytes.Clone(valid)
	flipped[len(flipped)/2] ^= 1
	f.Add(flipped)
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	zeroed := bytes.Clone(valid)
	clear(zeroed[20:60])
	f.Add(zeroed)

	table := crc32.MakeTable(crc32.Castagnoli)
	f.Fuzz(func(t *testing.T, data []byte) {
		// What should be served, skipped and kept, walked independently.
		var want [][]byte
		var skipped int64
		keep, bad := len(data), -1
		for off := 0; ; {
			if off == len(data) {
				if bad >= 0 {
					keep = bad
				}
				break
			}
			n := -1
			if len(data)-off >= headerSize {
				n = int(binary.LittleEndian.Uint32(data[off:]))
			}
			if n < 0 || n > MaxRecordBytes || n > len(data)-off-headerSize {
				keep = off
				if bad >= 0 {
					keep = bad
				}
				break
			}
			if crc32.Checksum(data[off+8:off+headerSize+n], table) != binary.LittleEndian.Uint32(data[off+4:]) {
				if bad < 0 {
					bad = off
				}
			} else {
				if bad >= 0 {
					skipped += int64(off - bad)
					bad = -1
				}
				want = append(want, data[off+headerSize:off+headerSize+n])
			}
			off += headerSize + n
		}

		dir := t.TempDir()
		path := filepath.Join(dir, "00000000000000000000.seg")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(Options{Dir: dir, Logger: quiet()})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		st := s.Stats()
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // Read returns what is there, then context.Canceled
		var got [][]byte
		for {
			b, err := s.Read(ctx, 0, 0)
			if errors.Is(err, context.Canceled) {
				break
			}
			if err != nil {
				t.Fatalf("Read after %d records: %v", len(got), err)
			}
			got = append(got, b.Records...)
		}
		if len(got) != len(want) {
			t.Fatalf("served %d records, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("record %d: served %q, want %q", i, got[i], want[i])
			}
		}
		if st.Bytes != int64(keep) || st.CorruptBytes != skipped+int64(len(data)-keep) {
			t.Fatalf("file %d bytes, %d skipped, %d kept; Stats %+v", len(data), skipped, keep, st)
		}
		if fi, err := os.Stat(path); err != nil {
			t.Fatal(err)
		} else if fi.Size() != int64(keep) {
			t.Fatalf("segment is %d bytes, want it cut to %d", fi.Size(), keep)
		}
		if (st.CorruptBytes > 0) != (st.CorruptRecords > 0) {
			t.Fatalf("inconsistent corruption counters: %+v", st)
		}
	})
}

// A damaged length field above 2 GiB is an impossible record on every
// architecture; on 32-bit builds it must not turn into a negative length.
func TestParseHeaderHugeLength(t *testing.T) {
	for _, n := range []uint32{MaxRecordBytes + 1, 1<<31 - 1, 1 << 31, 1<<31 + 5, 0xffffffff} {
		b := make([]byte, headerSize)
		binary.LittleEndian.PutUint32(b, n)
		h, err := parseHeader(b, 0, 1<<40)
		var ce *corruptError
		if !errors.As(err, &ce) || ce.size != 0 {
			t.Fatalf("length %d: header %+v, err %v; want an impossible-length error", n, h, err)
		}
	}
}

// FuzzCheckpoint feeds arbitrary bytes to the checkpoint decoder: it must
// never panic, whatever it accepts must be a possible position, and that
// position must encode back to bytes that decode to it again.
func FuzzCheckpoint(f *testing.F) {
	f.Add(encodeCheckpoint(Position{seg: 3, off: 4096, seq: 77}))
	f.Add(encodeCheckpoint(Position{}))
	f.Add([]byte("v1 1 2 3 00000000\n"))
	f.Add([]byte("v1 1 -2 3 deadbeef"))
	f.Add([]byte(""))
	f.Add([]byte(" "))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeCheckpoint(b)
		if err != nil {
			return
		}
		if p.off < 0 || p.seq < p.seg {
			t.Fatalf("%q: accepted impossible position %+v", b, p)
		}
		again, err := decodeCheckpoint(encodeCheckpoint(p))
		if err != nil || again != p {
			t.Fatalf("%q: %+v re-encodes to %+v (%v)", b, p, again, err)
		}
	})
}
