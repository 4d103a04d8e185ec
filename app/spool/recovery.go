// Recovery: Open scans the segments from the checkpoint, skipping or
// cutting damaged records (see the package comment).

package spool

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// listSegments returns the first sequence numbers of the segment files in
// dir, sorted.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var firsts []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok || len(name) != 20 || !e.Type().IsRegular() {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		firsts = append(firsts, n)
	}
	slices.Sort(firsts)
	return firsts, nil
}

// recover rebuilds the in-memory state from the directory.
func (s *Spool) recover() error {
	firsts, err := listSegments(s.dir)
	if err != nil {
		return err
	}
	ck, haveCk, ckErr := readCheckpoint(s.dir)
	if ckErr != nil {
		s.log.Warn("spool: checkpoint unreadable, replaying from the oldest segment", "err", ckErr)
	}

	// Where does uncommitted data start?
	startIdx := 0
	var start Position
	if len(firsts) > 0 {
		start = Position{seg: firsts[0], seq: firsts[0]}
	}
	switch {
	case !haveCk:
		if ckErr == nil && len(firsts) > 0 {
			s.log.Info("spool: no checkpoint, replaying from the oldest segment", "segment", s.segPath(firsts[0]))
		}
	case len(firsts) == 0:
		start = Position{seg: ck.seq, seq: ck.seq}
	default:
		i, found := slices.BinarySearch(firsts, ck.seg)
		switch {
		case !found && ck.seg < firsts[0]:
			// Commit deletes consumed segments before a crash could save the
			// checkpoint that points past them: everything left is newer.
		case !found:
			s.log.Warn("spool: checkpoint names a missing segment, replaying from the oldest segment", "checkpoint", ck.String())
		default:
			startIdx = i
			ok, err := s.onBoundary(ck)
			if err != nil {
				return err
			}
			if ok {
				start = ck
			} else {
				start = Position{seg: ck.seg, seq: ck.seg}
				s.log.Warn("spool: checkpoint is not on a record boundary, replaying its whole segment", "checkpoint", ck.String())
			}
		}
	}
	for _, first := range firsts[:startIdx] {
		if err := os.Remove(s.segPath(first)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	firsts = firsts[startIdx:]

	seq := start.seq
	for k, first := range firsts {
		from := int64(0)
		if k == 0 {
			from = start.off
		} else if first > seq {
			s.log.Warn("spool: records missing between segments", "file", s.segPath(first), "missing", first-seq)
			seq = first
		} else if first < seq {
			// Damage earlier on was walked as more records than there
			// were. Keep numbering upwards rather than serve two records
			// under one sequence number; the data is still served.
			s.log.Warn("spool: segment name lower than the records before it; numbering continues",
				"file", s.segPath(first), "want_first", seq)
		}
		valid, n, oldest, err := s.scanSegment(first, from)
		if err != nil {
			return err
		}
		if s.oldest.IsZero() && !oldest.IsZero() {
			s.oldest = oldest
		}
		s.segs = append(s.segs, segment{first: first, size: valid, seq: seq})
		s.bytes += valid - from
		seq += uint64(n)
	}
	if len(s.segs) == 0 {
		f, err := s.createSegment(seq)
		if err != nil {
			return err
		}
		f.Close()
		s.segs = []segment{{first: seq, seq: seq}}
		start = Position{seg: seq, seq: seq}
	}
	s.next = seq
	s.committed = s.normalize(start)
	s.readPos = s.committed
	s.records = int64(s.next - s.committed.seq)
	s.damageSeen = s.next // the scan counted all damage up to here
	tail := s.segs[len(s.segs)-1]
	s.w, err = os.OpenFile(s.segPath(tail.first), os.O_RDWR, 0)
	return err
}

// onBoundary reports whether p falls between two records of its segment,
// walking the headers before it. A checkpoint is written only at
// boundaries; this guards against a segment replaced underneath it.
func (s *Spool) onBoundary(p Position) (bool, error) {
	f, err := os.Open(s.segPath(p.seg))
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if p.off > fi.Size() {
		return false, nil
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, p.off), 64<<10)
	seq := p.seg
	for off := int64(0); off < p.off; seq++ {
		b, err := br.Peek(headerSize)
		if err != nil {
			return false, nil
		}
		h, err := parseHeader(b, off, p.off)
		if err != nil {
			return false, nil
		}
		if _, err := br.Discard(int(h.size())); err != nil {
			return false, nil
		}
		off += h.size()
	}
	return seq == p.seq, nil
}

// scanSegment validates the records of a segment from offset from.
//
// A record whose length fits but whose checksum fails is skipped if a valid
// record follows it in the segment: its bytes stay in the file (the reader
// skips them again) and it is counted and logged. Damage after which no
// valid record follows (an impossible length, a header cut short, damaged
// records up to the end of the file) ends the segment: the file is truncated
// where that damage starts, which is counted and logged. Later segments are
// never touched.
//
// valid is the offset where the segment now ends, n the number of records
// from from to valid, skipped ones included (each takes a sequence number),
// and oldest the append time of the first valid record, zero if none.
func (s *Spool) scanSegment(first uint64, from int64) (valid, n int64, oldest time.Time, err error) {
	path := s.segPath(first)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, time.Time{}, err
	}
	size := fi.Size()
	if from > size {
		from = size
	}
	r := recordReader{br: bufio.NewReaderSize(io.NewSectionReader(f, from, size-from), 64<<10), off: from, end: size}
	bad, badN := int64(-1), int64(0) // start and length of a run of records with bad checksums
	var ce *corruptError             // outside the loop: errors.As makes it escape
	for {
		off := r.off
		h, err := r.peek()
		if err == nil {
			err = r.skip(h)
		}
		ce = nil
		switch {
		case err == nil:
			if bad >= 0 {
				s.log.Warn("spool: damaged record skipped, reading continues after it", "file", path,
					"offset", bad, "records", badN, "bytes_skipped", off-bad)
				s.corruptN += badN
				s.corruptB += off - bad
				n += badN
				bad, badN = -1, 0
			}
			if oldest.IsZero() {
				oldest = time.Unix(0, h.ts)
			}
			n++
			continue
		case errors.As(err, &ce) && ce.size > 0:
			if bad < 0 {
				bad = ce.off
			}
			badN++
			continue
		case err == io.EOF:
			if bad < 0 {
				return size, n, oldest, nil
			}
			ce = &corruptError{off: bad, reason: "checksum mismatch and no valid record after it"}
		case ce != nil:
			if bad >= 0 {
				ce = &corruptError{off: bad, reason: "checksum mismatch, then " + ce.reason}
			}
		default:
			return 0, 0, time.Time{}, fmt.Errorf("read %s: %w", path, err)
		}
		if err := f.Truncate(ce.off); err != nil {
			return 0, 0, time.Time{}, err
		}
		if err := f.Sync(); err != nil {
			return 0, 0, time.Time{}, err
		}
		s.log.Warn("spool: damaged record, cut the segment there", "file", path,
			"offset", ce.off, "reason", ce.reason, "bytes_cut", size-ce.off)
		s.corruptN++
		s.corruptB += size - ce.off
		return ce.off, n, oldest, nil
	}
}

// damaged counts and logs a damaged record met by Read, the record at seq,
// unless it was already counted (by Open's scan, or before a Rewind). lost
// is the number of bytes skipped because of it. Called without mu.
func (s *Spool) damaged(path string, seq uint64, ce *corruptError, lost int64, what string) {
	s.mu.Lock()
	counted := seq < s.damageSeen
	if !counted {
		s.damageSeen = seq + 1
		s.corruptN++
		s.corruptB += lost
	}
	s.mu.Unlock()
	if !counted {
		s.log.Warn("spool: "+what, "file", path, "offset", ce.off, "reason", ce.reason, "bytes_skipped", lost)
	}
}
