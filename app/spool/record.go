package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Record layout on disk, all integers little endian:
//
//	offset 0  u32  payload length in bytes
//	offset 4  u32  CRC-32C (Castagnoli) over bytes 8.. of the record
//	offset 8  i64  append time, Unix nanoseconds
//	offset 16      payload
//
// The checksum covers the timestamp and the payload. A corrupted length
// field is caught either by the bound checks (longer than MaxRecordBytes or
// than the rest of the file) or, when it still points inside the file, by the
// checksum failing over the wrong span of bytes.
const headerSize = 16

// MaxRecordBytes is the largest payload a single record may carry. It bounds
// what a damaged length field can make the reader allocate.
const MaxRecordBytes = 16 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendRecord encodes one record onto buf. The header is written in
// place so that the checksum runs once over the contiguous timestamp and
// payload, with no temporary to allocate.
func appendRecord(buf, payload []byte, unixNanos int64) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, headerSize)...)
	buf = append(buf, payload...)
	rec := buf[start:]
	binary.LittleEndian.PutUint32(rec[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint64(rec[8:16], uint64(unixNanos))
	binary.LittleEndian.PutUint32(rec[4:8], crc32.Checksum(rec[8:], castagnoli))
	return buf
}

// header is a decoded record header.
type header struct {
	length int
	crc    uint32 // stored checksum
	tsCRC  uint32 // checksum of the timestamp bytes, to be continued over the payload
	ts     int64
}

// size is the number of bytes the whole record takes on disk.
func (h header) size() int64 { return headerSize + int64(h.length) }

// corruptError describes a damaged record at off. A record whose length
// fits in the segment but whose checksum fails has size > 0: the reader has
// consumed it and stands at the next record, so it can be skipped. Otherwise
// (size 0) the length is impossible and nothing after off can be delimited.
type corruptError struct {
	off    int64
	reason string
	size   int64
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("offset %d: %s", e.off, e.reason)
}

// ErrCorrupt is wrapped by errors about damaged records met while reading.
var ErrCorrupt = errors.New("spool: corrupt record")

func (e *corruptError) Unwrap() error { return ErrCorrupt }

// parseHeader decodes and bounds-checks a header found at off in a segment
// whose valid bytes end at end.
func parseHeader(b []byte, off, end int64) (header, error) {
	h := header{
		crc:   binary.LittleEndian.Uint32(b[4:8]),
		ts:    int64(binary.LittleEndian.Uint64(b[8:16])),
		tsCRC: crc32.Update(0, castagnoli, b[8:16]),
	}
	// The bound is checked before the conversion: on 32-bit builds a
	// damaged length above 2 GiB would otherwise become a negative int.
	n := binary.LittleEndian.Uint32(b[0:4])
	if n > MaxRecordBytes {
		return h, &corruptError{off: off, reason: fmt.Sprintf("impossible record length %d", n)}
	}
	h.length = int(n)
	if rest := end - off - headerSize; int64(h.length) > rest {
		return h, &corruptError{off: off, reason: fmt.Sprintf("record of %d bytes but only %d left (torn write)", h.length, rest)}
	}
	return h, nil
}

// recordReader walks the records of one segment through a buffered reader
// positioned at off. It never reads past end.
type recordReader struct {
	br  *bufio.Reader
	off int64
	end int64
}

// peek returns the next record's header without consuming it, io.EOF at a
// clean end, or a *corruptError.
func (r *recordReader) peek() (header, error) {
	if r.off >= r.end {
		return header{}, io.EOF
	}
	if r.end-r.off < headerSize {
		return header{}, &corruptError{off: r.off, reason: fmt.Sprintf("%d trailing bytes, shorter than a record header (torn write)", r.end-r.off)}
	}
	b, err := r.br.Peek(headerSize)
	if err != nil {
		return header{}, unexpected(err)
	}
	return parseHeader(b, r.off, r.end)
}

// read consumes the record whose header peek returned, copying its payload
// into dst (len(dst) == h.length) and verifying the checksum. On a checksum
// failure the record is consumed all the same (see corruptError.size).
func (r *recordReader) read(h header, dst []byte) error {
	if _, err := r.br.Discard(headerSize); err != nil {
		return unexpected(err)
	}
	if _, err := io.ReadFull(r.br, dst); err != nil {
		return unexpected(err)
	}
	if crc32.Update(h.tsCRC, castagnoli, dst) != h.crc {
		return r.mismatch(h)
	}
	r.off += h.size()
	return nil
}

// skip consumes the record whose header peek returned, verifying the
// checksum without keeping the payload.
func (r *recordReader) skip(h header) error {
	if _, err := r.br.Discard(headerSize); err != nil {
		return unexpected(err)
	}
	crc := h.tsCRC
	for left := h.length; left > 0; {
		n := min(left, r.br.Size())
		b, err := r.br.Peek(n)
		if err != nil {
			return unexpected(err)
		}
		crc = crc32.Update(crc, castagnoli, b)
		_, _ = r.br.Discard(n)
		left -= n
	}
	if crc != h.crc {
		return r.mismatch(h)
	}
	r.off += h.size()
	return nil
}

// mismatch moves past a record whose checksum failed and describes it.
func (r *recordReader) mismatch(h header) error {
	off := r.off
	r.off += h.size()
	return &corruptError{off: off, reason: "checksum mismatch", size: h.size()}
}

// unexpected turns an EOF inside a range the file's size promised into an
// error: the file shrank under us.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
