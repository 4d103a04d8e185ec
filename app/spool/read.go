// Read: the one reader takes batches in order, then commits them (or
// rewinds to read them again).

package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Read returns the next unread records in order, at most maxRecords of
// them and, past the first, at most maxBytes of payload (the first record
// is returned even if it alone is larger). It blocks until at least one
// record is readable or ctx is done. maxRecords <= 0 means 1000 and
// maxBytes <= 0 means 1 MiB. Memory use is the batch plus a 64 KiB buffer.
//
// The records stay valid until the batch is given up: by a Commit at or
// past its end, or by Rewind. Once no batch is held, Read reuses their
// memory for the next batches, so the writer makes little garbage.
//
// Damage met here (the disk changed a record after Open) is skipped and
// counted in Stats, with a warning: a record whose checksum fails is passed
// over, and after a damaged length, which leaves the following records
// impossible to delimit, the rest of that segment is. Batch.End lies past
// what was skipped, so committing it releases the damaged bytes too. If
// the damaged length is in the segment being appended to, the next Append
// starts a new segment, so that a restart does not cut off what follows.
//
// The returned batch is held until Commit or Rewind; DropOldest discarding
// its records from disk meanwhile changes nothing for the caller, which
// delivers and commits it as usual (see dropFor for how that is counted).
// Reading again before either continues after the batch.
func (s *Spool) Read(ctx context.Context, maxRecords, maxBytes int) (Batch, error) {
	if maxRecords <= 0 {
		maxRecords = 1000
	}
	if maxBytes <= 0 {
		maxBytes = 1 << 20
	}
	s.readMu.Lock()
	defer s.readMu.Unlock()

	b := Batch{Records: s.takeList(min(maxRecords, 1024))}
	bb := &s.readMem
	clear(bb.arenas) // lent with earlier batches; only the slice is reused
	bb.arena, bb.arenas, bb.payload = nil, bb.arenas[:0], 0
	holding := false // this call has added its entry to s.held
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return Batch{}, ErrClosed
		}
		s.readPos = s.normalize(s.readPos)
		if s.readPos.seq >= s.next {
			if len(b.Records) > 0 {
				s.mu.Unlock()
				s.lend(b.Records, bb.arenas)
				return b, nil
			}
			wake := s.wake
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return Batch{}, ctx.Err()
			case <-s.done:
				return Batch{}, ErrClosed
			case <-wake:
			}
			continue
		}
		pos := s.readPos
		start := pos
		i := s.segIndex(pos.seg)
		if i < 0 {
			s.mu.Unlock()
			return Batch{}, fmt.Errorf("spool: read: position %s names a deleted segment", pos)
		}
		end, endSeq, tail := s.segs[i].size, s.endSeq(i), i == len(s.segs)-1
		f, err := s.openForRead(pos.seg)
		if err != nil {
			s.mu.Unlock()
			return Batch{}, err
		}
		s.reading, s.readFrom, s.readDrops = true, pos, 0
		s.mu.Unlock()
		if s.readHook != nil {
			s.readHook()
		}

		s.rbr.Reset(io.NewSectionReader(f, pos.off, end-pos.off))
		r := recordReader{br: s.rbr, off: pos.off, end: end}
		seq, full, broken, rerr := s.walk(&r, f.Name(), pos.seq, &b, bb, maxRecords, maxBytes)
		s.rbr.Reset(nil)
		if r.off >= end {
			// The end of what was visible is a record boundary whose number
			// is known, even if damage kept the records before it from
			// being counted.
			seq = endSeq
		}
		pos.off, pos.seq = r.off, seq
		s.mu.Lock()
		s.endWalk(start, pos, &holding)
		if broken && tail {
			s.rotate = true
		}
		s.mu.Unlock()
		b.End = pos
		if rerr != nil {
			if len(b.Records) > 0 {
				s.lend(b.Records, bb.arenas)
				return b, nil
			}
			if s.isClosed() {
				return Batch{}, ErrClosed
			}
			return Batch{}, fmt.Errorf("spool: read %s: %w", f.Name(), rerr)
		}
		if full || len(b.Records) >= maxRecords {
			s.lend(b.Records, bb.arenas)
			return b, nil
		}
	}
}

// batchMemory is where one Read carves its records from: the arena in use,
// every arena taken (lent with the batch), and the bytes read so far. The
// Spool keeps one (readMem, under readMu) so that the list of arenas is
// not allocated for every Read.
type batchMemory struct {
	arena   []byte
	arenas  [][]byte
	payload int
}

// walk reads records from r into b, from record number seq of the segment
// file name, until the batch is full (maxRecords, or maxBytes of payload)
// or the visible end of the segment. Damage is skipped and logged; broken
// says that it ended the segment. It returns the number of the next record.
func (s *Spool) walk(r *recordReader, name string, seq uint64, b *Batch, bb *batchMemory, maxRecords, maxBytes int) (next uint64, full, broken bool, rerr error) {
	// Declared once: errors.As takes its address, so inside the loop
	// it cost an allocation per record.
	var ce *corruptError
	for len(b.Records) < maxRecords {
		h, err := r.peek()
		if err == io.EOF {
			break
		}
		if errors.As(err, &ce) {
			s.damaged(name, seq, ce, r.end-ce.off, "damaged record length, skipped the rest of the segment")
			r.off, broken = r.end, true
			break
		}
		if err != nil {
			rerr = err
			break
		}
		if len(b.Records) > 0 && bb.payload+h.length > maxBytes {
			full = true
			break
		}
		if len(bb.arena) < h.length {
			// Carve records out of arenas rather than allocating each;
			// arenas come back for reuse once the batch is given up.
			if h.length > arenaSize {
				bb.arena = make([]byte, h.length)
			} else {
				bb.arena = s.takeArena()
			}
			bb.arenas = append(bb.arenas, bb.arena)
		}
		rec := bb.arena[:h.length:h.length]
		if err := r.read(h, rec); err != nil {
			if errors.As(err, &ce) && ce.size > 0 {
				s.damaged(name, seq, ce, ce.size, "damaged record skipped")
				seq++
				continue
			}
			rerr = err
			break
		}
		bb.arena = bb.arena[h.length:]
		if len(b.Records) == 0 {
			b.Oldest = time.Unix(0, h.ts)
		}
		b.Records = append(b.Records, rec)
		bb.payload += h.length
		seq++
	}
	return seq, full, broken, rerr
}

// openForRead returns the reader's file of segment seg, opening it (and
// closing the previous one) when the read moves to another segment. s.mu
// is held.
func (s *Spool) openForRead(seg uint64) (*os.File, error) {
	if s.rf == nil || s.rfSeg != seg {
		if s.rf != nil {
			s.rf.Close()
			s.rf = nil
		}
		f, err := os.Open(s.segPath(seg))
		if err != nil {
			return nil, fmt.Errorf("spool: read: %w", err)
		}
		s.rf, s.rfSeg = f, seg
	}
	return s.rf, nil
}

// endWalk accounts for a walk from start to pos, with s.mu held. Records
// DropOldest discarded from start on while the walk ran: those before pos
// are in the batch and now held like the rest of it; the others were never
// read and count as dropped. They run from start without a gap up to the
// committed position or the end of the segment, whichever comes first.
func (s *Spool) endWalk(start, pos Position, holding *bool) {
	s.reading = false
	var got int64
	if reach := min(s.committed.seq, pos.seq); s.readDrops > 0 && reach > start.seq {
		got = min(s.readDrops, int64(reach-start.seq))
	}
	s.dropped += s.readDrops - got
	s.readDrops = 0
	if pos.seq > start.seq {
		if !*holding {
			s.held = append(s.held, heldBatch{})
			*holding = true
		}
		h := &s.held[len(s.held)-1]
		h.end = pos.seq
		h.dropped += got
	}
	// Only DropOldest moves readPos meanwhile, and only forwards.
	if s.readPos == start || pos.seq > s.readPos.seq {
		s.readPos = pos
	}
}

// Rewind makes the next Read start again at the committed position. The
// writer calls it after a failed delivery, from the goroutine that reads.
//
// Rewind gives up the batches read since the last Commit: records of them
// that DropOldest discarded meanwhile will not be read again and are
// counted in Stats.Dropped now.
func (s *Spool) Rewind() {
	s.mu.Lock()
	for _, h := range s.held {
		s.dropped += h.dropped
	}
	s.held = s.held[:0]
	s.recycle()
	s.readPos = s.committed
	s.mu.Unlock()
}

// Commit records that everything up to end has been delivered: it releases
// those bytes from the cap, deletes segment files that are fully consumed
// and saves the position in the checkpoint file. A position at or before
// the committed one (for instance because DropOldest moved past it) does
// not move the spool, but the batches up to it still count as delivered:
// what DropOldest discarded of them is not counted as dropped. If the
// checkpoint cannot be saved the error is returned, but the spool has
// still advanced in memory; a restart then replays from the last saved
// checkpoint, which is harmless.
func (s *Spool) Commit(end Position) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if end.seq <= s.committed.seq {
		s.delivered(end.seq)
		s.mu.Unlock()
		return nil
	}
	if i := s.segIndex(end.seg); i < 0 || end.seq > s.next || end.off > s.segs[i].size {
		s.mu.Unlock()
		return fmt.Errorf("spool: commit %s: position is not in the spool", end)
	}
	s.delivered(end.seq)
	s.bytes -= s.distance(s.committed, end)
	s.records -= int64(end.seq - s.committed.seq)
	s.committed = end
	s.settle()
	ck := s.committed
	s.mu.Unlock()
	if err := writeCheckpoint(s.dir, ck); err != nil {
		return fmt.Errorf("spool: save checkpoint: %w", err)
	}
	return nil
}
