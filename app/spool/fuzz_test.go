package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to Open as a segment file. Open must not
// fail or panic, and every record it then serves must be one that is
// really in the file with a valid checksum, in file order; the rest of the
// file must be counted as cut.
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

	table := crc32.MakeTable(crc32.Castagnoli)
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "00000000000000000000.seg"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(Options{Dir: dir, Logger: quiet()})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer s.Close()
		st := s.Stats()
		var got [][]byte
		for int64(len(got)) < st.Records {
			b, err := s.Read(context.Background(), 0, 0)
			if err != nil {
				t.Fatalf("Read after %d of %d records: %v", len(got), st.Records, err)
			}
			got = append(got, b.Records...)
		}
		off := 0
		for i, r := range got {
			if len(data)-off < headerSize {
				t.Fatalf("record %d served past the end of the file", i)
			}
			n := int(binary.LittleEndian.Uint32(data[off:]))
			if n > len(data)-off-headerSize {
				t.Fatalf("record %d: served a record whose length runs past the file", i)
			}
			body := data[off+8 : off+headerSize+n]
			if crc32.Checksum(body, table) != binary.LittleEndian.Uint32(data[off+4:]) {
				t.Fatalf("record %d: served a record with a bad checksum", i)
			}
			if !bytes.Equal(r, data[off+headerSize:off+headerSize+n]) {
				t.Fatalf("record %d: payload differs from the file", i)
			}
			off += headerSize + n
		}
		if int64(off)+st.CorruptBytes != int64(len(data)) || st.Bytes != int64(off) {
			t.Fatalf("served %d bytes, Stats %+v, file %d bytes", off, st, len(data))
		}
		if (st.CorruptBytes > 0) != (st.CorruptRecords > 0) {
			t.Fatalf("inconsistent corruption counters: %+v", st)
		}
	})
}
