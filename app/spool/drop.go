// Drop accounting: under drop-oldest a full spool discards its oldest
// records, and each discarded record is counted once.

package spool

import (
	"errors"
	"io/fs"
	"os"
	"slices"
	"time"
)

// dropSegment makes room on a full disk under DropOldest: it discards the
// uncommitted records of the oldest segment, which deletes its file, and
// reports whether it did. The tail segment is never dropped: deleting it
// would not free the bytes the failed write needs in it.
func (s *Spool) dropSegment() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.segs) < 2 {
		return false
	}
	c := s.normalize(s.committed)
	i := s.segIndex(c.seg)
	if i < 0 || i == len(s.segs)-1 {
		return false
	}
	end := Position{seg: c.seg, off: s.segs[i].size, seq: s.endSeq(i)}
	n := int64(end.seq - c.seq)
	s.bytes -= end.off - c.off
	s.discard(c.seg, c.seq, end.seq)
	s.committed = end
	s.dropping = true
	s.log.Warn("spool: disk full, dropping the oldest segment", "file", s.segPath(c.seg), "records", n)
	s.settle()
	return true
}

// dropFor discards the oldest uncommitted records until need more bytes
// fit under MaxBytes. Called with mu held. The committed position moves
// past them and their bytes leave Stats.Bytes at once, so Append never
// takes the spool over MaxBytes; the reader, if it is behind, jumps there
// on its next Read.
//
// Stats.Dropped counts exactly the discarded records that are never
// delivered, and a record is never counted before the reader has let go
// of it, so a caller that writes out what Read returned never writes a
// record counted as dropped. A discarded record falls in one of three
// cases (see discard):
//
//   - Not read yet: counted at once. The reader cannot get it any more.
//   - Held: Read returned it in a batch that was neither committed nor
//     rewound. The batch in the reader's memory stays complete and valid
//     (it does not need to be checked or read again); the record is noted
//     against its batch. Commit of the batch means it was delivered and the
//     note is forgotten; Rewind means it will not be, and counts it.
//   - Being read: in the segment a Read is walking without mu, at or past
//     where that walk began. Read settles these when it takes mu again:
//     those it put in the batch become held, the rest are counted.
//
// Deferring the count, rather than taking the batch away from the reader,
// keeps readings that are already in memory (they cost no disk space) and
// spares the reader a check before every attempt and a re-read whenever
// anything was dropped. The price is that Stats.Dropped lags while a
// reader holds discarded records, and that a delivered batch can be older
// than records discarded after it was read. Records still held at Close
// are not counted: the reader neither delivered nor gave them up.
func (s *Spool) dropFor(need int64) error {
	var n int64
	for s.bytes+need > s.maxBytes && s.records > 0 {
		c := s.normalize(s.committed)
		h, err := s.headerAt(c)
		if errors.Is(err, ErrCorrupt) {
			// The records after a damaged length cannot be told apart:
			// drop the rest of the segment.
			i := s.segIndex(c.seg)
			s.log.Warn("spool: damaged record header while dropping; dropping the rest of its segment",
				"file", s.segPath(c.seg), "offset", c.off, "err", err)
			end := Position{seg: c.seg, off: s.segs[i].size, seq: s.endSeq(i)}
			s.bytes -= end.off - c.off
			n += int64(end.seq - c.seq)
			s.discard(c.seg, c.seq, end.seq)
			s.committed = end
			s.records = int64(s.next - end.seq)
			if i == len(s.segs)-1 {
				s.rotate = true
			}
			continue
		}
		if err != nil {
			return err
		}
		s.committed = Position{seg: c.seg, off: c.off + h.size(), seq: c.seq + 1}
		s.bytes -= h.size()
		s.records = int64(s.next - s.committed.seq)
		s.discard(c.seg, c.seq, c.seq+1)
		n++
	}
	if !s.dropping {
		s.dropping = true
		s.log.Warn("spool: MaxBytes reached, dropping the oldest records", "max_bytes", s.maxBytes, "dropped", n)
	}
	s.settle()
	return nil
}

// discard accounts for the records with sequence numbers from to to-1, all
// in segment seg, that dropFor has just removed (see dropFor for the three
// cases). Within a segment every record takes one sequence number, damaged
// ones included, so counting by sequence numbers is exact. Called with mu
// held, before settle moves the reader.
func (s *Spool) discard(seg, from, to uint64) {
	// Held: everything before readPos that is not committed.
	for i := range s.held {
		if from >= to || from >= s.readPos.seq {
			break
		}
		h := &s.held[i]
		if from >= h.end {
			continue
		}
		k := min(to, h.end, s.readPos.seq) - from
		h.dropped += int64(k)
		from += k
	}
	if from >= to {
		return
	}
	// Being read. readPos only moves forward from readFrom during the walk,
	// so the held case above has taken everything before it.
	if s.reading && seg == s.readFrom.seg && from >= s.readFrom.seq {
		s.readDrops += int64(to - from)
		return
	}
	s.dropped += int64(to - from)
}

// settle runs after the committed position moved: catch the reader up,
// delete consumed segments and refresh Oldest. Called with mu held.
func (s *Spool) settle() {
	s.committed = s.normalize(s.committed)
	// Moving into the next segment can pass the sequence numbers of records
	// lost to damage.
	s.records = int64(s.next - s.committed.seq)
	if s.readPos.seq <= s.committed.seq {
		// Also when equal: readPos may name the end of a segment that is
		// about to be deleted.
		s.readPos = s.committed
	}
	for len(s.segs) > 1 && s.segs[0].first < s.committed.seg {
		first := s.segs[0].first
		// The reader may still be reading this file (DropOldest can move
		// past it); its descriptor stays valid after the unlink, and Read
		// closes it when it moves on.
		if s.hf != nil && s.hfSeg == first {
			s.hf.Close()
			s.hf = nil
		}
		// Its space is freed only once no descriptor holds it: close the
		// reader's unless a Read is walking it right now.
		if s.rf != nil && s.rfSeg == first && !s.reading {
			s.rf.Close()
			s.rf = nil
		}
		if err := os.Remove(s.segPath(first)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// Left behind, it sits before the checkpoint and the next Open
			// deletes it.
			s.log.Warn("spool: cannot delete consumed segment", "err", err)
		}
		s.segs = slices.Delete(s.segs, 0, 1)
	}
	s.oldest = time.Time{}
	if s.records > 0 {
		h, err := s.headerAt(s.committed)
		if err != nil {
			s.log.Warn("spool: cannot read the oldest record's header", "err", err)
			return
		}
		s.oldest = time.Unix(0, h.ts)
	}
}
