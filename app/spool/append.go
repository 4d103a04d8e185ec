// Append: records are written to the newest segment and fsynced before
// Append returns; a full segment is rotated.

package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/fsync"
)

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d.seg", first))
}

// createSegment creates an empty segment file and makes its name durable.
func (s *Spool) createSegment(first uint64) (*os.File, error) {
	path := s.segPath(first)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := fsync.Dir(s.dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Append writes records as one group with a single fsync and returns once
// they are durable. Either all records are appended or, on error, none is
// visible to the reader. Under Block it returns ErrFull (wrapped with the
// numbers) when they do not fit under MaxBytes; under DropOldest it first
// discards the oldest uncommitted records to make room, and if the write
// then fails those stay discarded. A full filesystem (ENOSPC) counts as a
// full spool: under DropOldest whole segments of the oldest records are
// discarded until the batch fits, and under Block, or when only the tail
// segment is left, the error wraps ErrFull. Other disk errors are returned;
// once the disk recovers, later Appends work again.
func (s *Spool) Append(records [][]byte) error {
	if len(records) == 0 {
		return nil
	}
	var size int64
	for i, r := range records {
		if len(r) > MaxRecordBytes {
			return fmt.Errorf("spool: append: record %d is %d bytes, limit %d", i, len(r), MaxRecordBytes)
		}
		size += headerSize + int64(len(r))
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.bytes+size > s.maxBytes {
		if s.policy == Block || size > s.maxBytes {
			used := s.bytes
			s.mu.Unlock()
			return fmt.Errorf("%w: %d bytes uncommitted, batch of %d bytes, MaxBytes %d", ErrFull, used, size, s.maxBytes)
		}
		if err := s.dropFor(size); err != nil {
			s.mu.Unlock()
			return fmt.Errorf("spool: append: dropping oldest records: %w", err)
		}
	} else if s.dropping {
		s.dropping = false
		s.log.Info("spool: below MaxBytes again, no longer dropping", "dropped_total", s.dropped)
	}
	tail := s.segs[len(s.segs)-1]
	first := s.next
	rotate := s.rotate && tail.size > 0
	s.mu.Unlock()

	if s.dirty {
		// A failed write may have left a partial group behind; remove it
		// before writing after it.
		if err := s.w.Truncate(tail.size); err != nil {
			return fmt.Errorf("spool: append: %w", err)
		}
		s.dirty = false
	}
	if tail.size >= s.segBytes || rotate {
		f, err := s.createSegment(first)
		if err != nil {
			if noSpace(err) {
				return fmt.Errorf("%w: new segment: %w", ErrFull, err)
			}
			return fmt.Errorf("spool: append: %w", err)
		}
		s.w.Close()
		s.w = f
		tail = segment{first: first, seq: first}
		s.mu.Lock()
		s.segs = append(s.segs, tail)
		s.rotate = false
		s.mu.Unlock()
	}

	ts := s.now().UnixNano()
	buf := s.buf[:0]
	for _, r := range records {
		buf = appendRecord(buf, r, ts)
	}
	if cap(buf) <= 1<<20 {
		s.buf = buf // keep small buffers only
	} else {
		s.buf = nil
	}
	for {
		_, err := s.w.WriteAt(buf, tail.size)
		if err == nil {
			err = s.w.Sync()
		}
		if err == nil {
			break
		}
		if terr := s.w.Truncate(tail.size); terr != nil {
			s.dirty = true
		}
		if !noSpace(err) {
			return fmt.Errorf("spool: append: %w", err)
		}
		if s.policy != DropOldest || s.dirty || !s.dropSegment() {
			s.checkDisk(true)
			return fmt.Errorf("%w: %w (%d bytes uncommitted, batch of %d bytes)", ErrFull, err, s.Stats().Bytes, size)
		}
	}

	s.mu.Lock()
	s.segs[len(s.segs)-1].size += size
	s.next += uint64(len(records))
	s.bytes += size
	if s.records == 0 {
		s.oldest = time.Unix(0, ts)
	}
	s.records += int64(len(records))
	close(s.wake)
	s.wake = make(chan struct{})
	s.mu.Unlock()
	s.checkDisk(false)
	return nil
}
