// Positions: a Position names a record by segment and sequence number;
// these helpers map between positions, segments and distances.

package spool

import (
	"fmt"
	"os"
	"slices"
)

// headerAt reads the header of the record at p. Called with mu held.
func (s *Spool) headerAt(p Position) (header, error) {
	i := s.segIndex(p.seg)
	if i < 0 {
		return header{}, fmt.Errorf("position %s: no such segment", p)
	}
	if s.hf == nil || s.hfSeg != p.seg {
		if s.hf != nil {
			s.hf.Close()
			s.hf = nil
		}
		f, err := os.Open(s.segPath(p.seg))
		if err != nil {
			return header{}, err
		}
		s.hf, s.hfSeg = f, p.seg
	}
	var b [headerSize]byte
	if _, err := s.hf.ReadAt(b[:], p.off); err != nil {
		return header{}, fmt.Errorf("read %s at %d: %w", s.hf.Name(), p.off, unexpected(err))
	}
	h, err := parseHeader(b[:], p.off, s.segs[i].size)
	if err != nil {
		return header{}, fmt.Errorf("%s: %w", s.hf.Name(), err)
	}
	return h, nil
}

func (s *Spool) segIndex(first uint64) int {
	i, ok := slices.BinarySearchFunc(s.segs, first, func(g segment, f uint64) int {
		switch {
		case g.first < f:
			return -1
		case g.first > f:
			return 1
		}
		return 0
	})
	if !ok {
		return -1
	}
	return i
}

// normalize moves a position at the end of a sealed segment to the start
// of the next one. Called with mu held.
func (s *Spool) normalize(p Position) Position {
	i := s.segIndex(p.seg)
	for i >= 0 && i < len(s.segs)-1 && p.off >= s.segs[i].size {
		i++
		p = Position{seg: s.segs[i].first, seq: max(p.seq, s.segs[i].seq)}
	}
	return p
}

// endSeq is the sequence number of the position at the end of segment i:
// the next segment's first, or for the tail the next one to be appended.
// Called with mu held.
func (s *Spool) endSeq(i int) uint64 {
	if i < len(s.segs)-1 {
		return s.segs[i+1].seq
	}
	return s.next
}

// distance is the number of bytes between positions a <= b. Called with mu
// held; both segments must exist.
func (s *Spool) distance(a, b Position) int64 {
	i, j := s.segIndex(a.seg), s.segIndex(b.seg)
	if i == j {
		return b.off - a.off
	}
	d := s.segs[i].size - a.off
	for k := i + 1; k < j; k++ {
		d += s.segs[k].size
	}
	return d + b.off
}

// delivered forgets the held batches that end at or before the sequence
// number end: they were delivered, including the records DropOldest
// discarded from disk meanwhile. Called with mu held.
func (s *Spool) delivered(end uint64) {
	i := 0
	for i < len(s.held) && s.held[i].end <= end {
		i++
	}
	s.held = slices.Delete(s.held, 0, i)
	s.recycle()
}
