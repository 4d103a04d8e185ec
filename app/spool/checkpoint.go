package spool

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	checkpointName = "checkpoint"
	checkpointTemp = "checkpoint.tmp"
)

// The checkpoint is one text line, readable with cat:
//
//	v1 <segment> <offset> <sequence> <crc32c-hex of everything before it>
//
// It is written to a temporary file and renamed over the old one, without
// fsync. That is enough: a checkpoint lost or garbled by a crash only makes
// Open start from an older position (or from the oldest segment), and the
// records replayed from there are written to InfluxDB again with the same
// timestamps, which overwrites the same points. Skipping the fsync keeps a
// Commit cheap.

func encodeCheckpoint(p Position) []byte {
	line := fmt.Sprintf("v1 %d %d %d", p.seg, p.off, p.seq)
	return fmt.Appendf(nil, "%s %08x\n", line, crc32.Checksum([]byte(line), castagnoli))
}

func decodeCheckpoint(b []byte) (Position, error) {
	s := strings.TrimSuffix(string(b), "\n")
	i := strings.LastIndexByte(s, ' ')
	if i < 0 {
		return Position{}, errors.New("no checksum")
	}
	line, sum := s[:i], s[i+1:]
	want, err := strconv.ParseUint(sum, 16, 32)
	if err != nil || uint32(want) != crc32.Checksum([]byte(line), castagnoli) {
		return Position{}, errors.New("checksum mismatch")
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "v1" {
		return Position{}, fmt.Errorf("unknown format %q", line)
	}
	var p Position
	var e1, e2, e3 error
	p.seg, e1 = strconv.ParseUint(f[1], 10, 64)
	p.off, e2 = strconv.ParseInt(f[2], 10, 64)
	p.seq, e3 = strconv.ParseUint(f[3], 10, 64)
	if err := errors.Join(e1, e2, e3); err != nil {
		return Position{}, err
	}
	if p.off < 0 || p.seq < p.seg {
		return Position{}, fmt.Errorf("impossible position %q", line)
	}
	return p, nil
}

// readCheckpoint returns the saved position; ok is false when there is none.
// A checkpoint that cannot be decoded is reported as err with ok false.
func readCheckpoint(dir string) (p Position, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, checkpointName))
	if errors.Is(err, fs.ErrNotExist) {
		return Position{}, false, nil
	}
	if err != nil {
		return Position{}, false, err
	}
	p, err = decodeCheckpoint(b)
	if err != nil {
		return Position{}, false, fmt.Errorf("%s: %w", filepath.Join(dir, checkpointName), err)
	}
	return p, true, nil
}

func writeCheckpoint(dir string, p Position) error {
	tmp := filepath.Join(dir, checkpointTemp)
	if err := os.WriteFile(tmp, encodeCheckpoint(p), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, checkpointName))
}
