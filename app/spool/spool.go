// Package spool is the gateway's durable queue: a FIFO of checksummed
// records in rotating segment files on local disk.
//
// The MQTT handler appends the line-protocol bytes of accepted messages,
// Append fsyncs, and only then does the handler acknowledge the messages to
// the broker. A single writer goroutine reads records in order in large
// batches, writes them to InfluxDB and commits its position after a 2xx. On
// restart everything not committed is read again; replays are harmless
// because each record's timestamp is fixed when it enters the spool, so
// InfluxDB overwrites the same points.
//
// # Why a hand-written log
//
// tidwall/wal has no per-record checksum, refuses to open (ErrCorrupt) on a
// torn tail, keeps whole segments in memory and rewrites the segment on every
// TruncateFront. bbolt is a copy-on-write B+tree whose mmap counts toward RSS
// and whose freelist churns for a FIFO, with two fsyncs per commit. A FIFO of
// checksummed records in rotating segment files is a few hundred lines and
// does exactly what the gateway needs: one fsync per appended batch, reads
// through a small buffer, and deleting a consumed segment is an unlink.
//
// # Files
//
// The directory holds segment files named after the sequence number of
// their first record (%020d.seg), a checkpoint file with the committed
// position, and a LOCK file. See record.go for the record layout and
// checkpoint.go for the checkpoint.
//
// # Recovery
//
// Open scans every record from the checkpoint to the end, segment by
// segment. A record whose length fits but whose checksum fails, and after
// which a valid record follows in its segment, is skipped: damage in the
// middle of the log costs that record only. Damage after which no valid
// record follows in its segment (an impossible length, a header cut short,
// bad records up to the end of the file) ends that segment: the file is
// truncated there. In the newest segment that is a torn tail, which only
// ever holds records nobody acknowledged, since Append returns (and the
// broker gets its ack) only after fsync. Later segments are never deleted
// because of damage in an earlier one. Every skip and cut is logged with the
// file and offset and counted in Stats. A missing or garbled checkpoint
// makes Open start from the oldest segment.
//
// Read skips damage that appears after Open the same way instead of
// failing.
package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Policy says what Append does when the spool holds MaxBytes of
// uncommitted data.
type Policy string

const (
	// Block makes Append return ErrFull and write nothing; the caller stops
	// acknowledging, so the broker keeps the messages.
	Block Policy = "block"
	// DropOldest discards the oldest uncommitted records, whole records at a
	// time, until the new batch fits. Records the reader holds (see Read)
	// are discarded from disk like the others, but counted in
	// Stats.Dropped only if the reader gives them up (Rewind): committed,
	// they were delivered from its memory.
	DropOldest Policy = "drop-oldest"
)

// Defaults for zero Options fields.
const (
	DefaultSegmentBytes = 16 << 20
	DefaultMaxBytes     = 1 << 30
)

// Options configure a Spool. The zero value of each field except Dir picks
// a default.
type Options struct {
	Dir          string           // state directory, created 0700 if missing
	SegmentBytes int64            // start a new segment once the current one holds this many bytes; default 16 MiB
	MaxBytes     int64            // cap on bytes (headers included) appended but not committed; default 1 GiB
	Policy       Policy           // Block (default) or DropOldest
	Logger       *slog.Logger     // nil means slog.Default()
	Now          func() time.Time // append timestamps; nil means time.Now
}

var (
	// ErrFull is returned by Append under the Block policy when the batch
	// would take the uncommitted bytes over MaxBytes, and under any policy
	// when the batch alone is larger than MaxBytes or the filesystem has no
	// room for it (ENOSPC) and nothing can be dropped to make room. Nothing
	// was written.
	ErrFull = errors.New("spool: full")
	// ErrClosed is returned by calls on a closed Spool.
	ErrClosed = errors.New("spool: closed")
)

// Position is a place in the spool, between two records. Positions come
// from Batch.End and go back to Commit; their fields are private.
type Position struct {
	seg uint64 // first sequence number of the segment, i.e. its name
	off int64  // byte offset in the segment
	seq uint64 // sequence number of the record at off
}

// String is for logs.
func (p Position) String() string {
	return fmt.Sprintf("%d@%020d.seg+%d", p.seq, p.seg, p.off)
}

// Batch is what Read returns. The records are freshly allocated and belong
// to the caller. From Read until Commit or Rewind the reader holds the
// batch: DropOldest may discard its records from disk meanwhile, which
// does not invalidate it. Deliver it and Commit, or Rewind.
type Batch struct {
	Records [][]byte
	Oldest  time.Time // append time of the first record
	End     Position  // pass to Commit once the records are delivered
}

// Stats is a snapshot of the spool's counters.
type Stats struct {
	Bytes          int64     // appended, not committed (headers included), damaged records still on disk included
	Records        int64     // sequence numbers appended, not committed; includes damaged records not yet read past
	Oldest         time.Time // append time of the oldest uncommitted record; zero if none
	Dropped        int64     // records discarded by DropOldest since Open that will never be delivered: see dropFor
	CorruptRecords int64     // since Open: damaged records skipped, plus one per damaged stretch cut off
	CorruptBytes   int64     // since Open: bytes of skipped records plus bytes cut off
	Segments       int       // segment files on disk
	// DiskFree is what the filesystem holding the spool has left for an
	// unprivileged writer, measured at Open, after a write that found the
	// disk full, and at most once a second after Appends; -1 where the
	// system cannot tell.
	DiskFree int64
}

// heldBatch is a batch the reader holds: the sequence numbers from the end
// of the previous held batch (or the committed position) up to end, and how
// many of its records DropOldest has discarded from disk.
type heldBatch struct {
	end     uint64
	dropped int64
}

type segment struct {
	first uint64 // sequence number of its first record, and its name
	size  int64  // bytes fsynced and visible to the reader
	// seq is the sequence number the reader gives the record at offset 0.
	// It equals first unless damage in an earlier segment made Open count
	// more records there than the names allow; numbering then carries on
	// from the higher count so that it never goes backwards.
	seq uint64
}

// Spool is safe for one goroutine calling Append, one goroutine calling
// Read, Rewind and Commit, and any goroutine calling Stats.
type Spool struct {
	dir      string
	segBytes int64
	maxBytes int64
	policy   Policy
	log      *slog.Logger
	now      func() time.Time
	lock     *os.File
	done     chan struct{} // closed by Close

	appendMu sync.Mutex // serialises Append; guards the fields below
	w        *os.File   // tail segment, open for writing
	buf      []byte     // encoding buffer
	dirty    bool       // w may hold bytes past the tail's size after a failed write
	dropping bool       // DropOldest is discarding; logged once per episode
	overFree bool       // MaxBytes exceeds what the disk can hold; logged once per episode
	diskAt   time.Time  // when checkDisk last measured

	readMu sync.Mutex // serialises Read; guards rbr
	rbr    *bufio.Reader
	// readHook, if set (tests only), runs each time Read has let go of mu
	// to walk a segment.
	readHook func()

	commitMu sync.Mutex // orders checkpoint writes

	mu        sync.Mutex // guards everything below
	closed    bool
	segs      []segment // oldest first; the last one is the tail Append writes to
	next      uint64    // sequence number of the next record appended
	committed Position
	readPos   Position
	rf        *os.File // reader's current segment; opened and closed under mu
	rfSeg     uint64
	hf        *os.File // for header reads at the committed position
	hfSeg     uint64
	bytes     int64
	records   int64
	oldest    time.Time
	dropped   int64
	corruptN  int64
	corruptB  int64
	diskFree  int64
	// damageSeen is one past the sequence number of the last damaged
	// record counted and logged, so that reading it again after Rewind or
	// after Open's scan does not count it twice.
	damageSeen uint64
	// held lists the batches Read handed out that were neither committed
	// nor rewound, oldest first, with what DropOldest discarded of each:
	// those records are counted in dropped only if Rewind gives them up.
	// It holds one entry unless the reader reads ahead of its commits.
	held []heldBatch
	// Memory of the records Read hands out, recycled once no batch is held
	// (see recycle): freeArenas are ready to carve records from, lent are
	// the arenas and record lists of the held batches.
	freeArenas [][]byte
	lentArenas [][]byte
	freeLists  [][][]byte
	lentLists  [][][]byte
	// reading is set while Read walks a segment without mu, from readFrom
	// on; readDrops counts the records of that stretch DropOldest discarded
	// meanwhile, which Read settles when it takes mu again.
	reading   bool
	readFrom  Position
	readDrops int64
	// rotate asks the next Append to start a new segment: the tail holds
	// damage that the next Open would take for a torn tail and cut,
	// together with everything appended after it.
	rotate bool
	wake   chan struct{} // closed and replaced whenever records become readable
}

func (o Options) resolve() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("spool: Options.Dir is empty")
	}
	switch {
	case o.SegmentBytes < 0:
		return o, fmt.Errorf("spool: Options.SegmentBytes is %d, must be positive (0 means %d)", o.SegmentBytes, DefaultSegmentBytes)
	case o.SegmentBytes == 0:
		o.SegmentBytes = DefaultSegmentBytes
	}
	switch {
	case o.MaxBytes < 0:
		return o, fmt.Errorf("spool: Options.MaxBytes is %d, must be positive (0 means %d)", o.MaxBytes, DefaultMaxBytes)
	case o.MaxBytes == 0:
		o.MaxBytes = DefaultMaxBytes
	}
	switch o.Policy {
	case "":
		o.Policy = Block
	case Block, DropOldest:
	default:
		return o, fmt.Errorf("spool: Options.Policy is %q, want %q or %q", o.Policy, Block, DropOldest)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// Open validates opts, creates the directory if needed, recovers from a
// crash (see the package comment) and returns a spool ready to append to
// and read from the committed position.
func Open(opts Options) (*Spool, error) {
	o, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{
		dir:      o.Dir,
		segBytes: o.SegmentBytes,
		maxBytes: o.MaxBytes,
		policy:   o.Policy,
		log:      o.Logger.With("spool", o.Dir),
		now:      o.Now,
		lock:     lock,
		done:     make(chan struct{}),
		wake:     make(chan struct{}),
		rbr:      bufio.NewReaderSize(nil, 64<<10),
	}
	if err := s.recover(); err != nil {
		if s.w != nil {
			s.w.Close()
		}
		lock.Close()
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.checkDisk(true)
	return s, nil
}

// checkDisk measures the free space and warns when the cap can no longer be
// reached: the disk would fill first. The spool often shares its volume with
// InfluxDB and the broker, so free space changes under it. A full disk is
// then met as ENOSPC, which Append treats like reaching MaxBytes. It
// measures at most once a second unless forced. Called with appendMu held,
// or before the spool is shared.
func (s *Spool) checkDisk(force bool) {
	if now := time.Now(); force || now.Sub(s.diskAt) >= time.Second {
		s.diskAt = now
	} else {
		return
	}
	free := diskFree(s.dir)
	s.mu.Lock()
	s.diskFree = free
	room := s.maxBytes - s.bytes
	s.mu.Unlock()
	switch over := free >= 0 && room > free; {
	case over && !s.overFree:
		s.overFree = true
		s.log.Warn("spool: less free disk space than MaxBytes allows; a full disk counts as a full spool",
			"free_bytes", free, "max_bytes", s.maxBytes, "spooled_bytes", s.maxBytes-room)
	case !over && s.overFree && free > room+room/8:
		// A little hysteresis: free space moves with every write.
		s.overFree = false
		s.log.Info("spool: enough free disk space for MaxBytes again", "free_bytes", free, "max_bytes", s.maxBytes)
	}
}

// noSpace reports whether err says the filesystem (or a quota) has no room.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d.seg", first))
}

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

// createSegment creates an empty segment file and makes its name durable.
func (s *Spool) createSegment(first uint64) (*os.File, error) {
	path := s.segPath(first)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syncDir(s.dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
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

// Read returns the next unread records in order, at most maxRecords of
// them and, past the first, at most maxBytes of payload (the first record
// is returned even if it alone is larger). It blocks until at least one
// record is readable or ctx is done. maxRecords <= 0 means 1000 and
// maxBytes <= 0 means 1 MiB. Memory use is the batch plus a 64 KiB buffer.
//
// The records stay valid until the batch is given up: by a Commit at or
// past its end, or by Rewind. Once no batch is held, Read reuses their
// memory for the next batches (recycling it took most of the garbage out
// of the gateway's writer).
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
	var arena []byte
	var arenas [][]byte // taken by this call, lent with the batch
	payload := 0
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
				s.lend(b.Records, arenas)
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
		if s.rf == nil || s.rfSeg != pos.seg {
			if s.rf != nil {
				s.rf.Close()
				s.rf = nil
			}
			f, err := os.Open(s.segPath(pos.seg))
			if err != nil {
				s.mu.Unlock()
				return Batch{}, fmt.Errorf("spool: read: %w", err)
			}
			s.rf, s.rfSeg = f, pos.seg
		}
		f := s.rf
		s.reading, s.readFrom, s.readDrops = true, pos, 0
		s.mu.Unlock()
		if s.readHook != nil {
			s.readHook()
		}

		s.rbr.Reset(io.NewSectionReader(f, pos.off, end-pos.off))
		r := recordReader{br: s.rbr, off: pos.off, end: end}
		full, broken := false, false
		seq := pos.seq
		var rerr error
		// Declared once: errors.As takes its address, so inside the loop
		// it cost an allocation per record.
		var ce *corruptError
		for len(b.Records) < maxRecords {
			h, err := r.peek()
			if err == io.EOF {
				break
			}
			if errors.As(err, &ce) {
				s.damaged(f.Name(), seq, ce, end-ce.off, "damaged record length, skipped the rest of the segment")
				r.off, broken = end, true
				break
			}
			if err != nil {
				rerr = err
				break
			}
			if len(b.Records) > 0 && payload+h.length > maxBytes {
				full = true
				break
			}
			if len(arena) < h.length {
				// Carve records out of arenas rather than allocating each;
				// arenas come back for reuse once the batch is given up.
				if h.length > arenaSize {
					arena = make([]byte, h.length)
				} else {
					arena = s.takeArena()
				}
				arenas = append(arenas, arena)
			}
			rec := arena[:h.length:h.length]
			if err := r.read(h, rec); err != nil {
				if errors.As(err, &ce) && ce.size > 0 {
					s.damaged(f.Name(), seq, ce, ce.size, "damaged record skipped")
					seq++
					continue
				}
				rerr = err
				break
			}
			arena = arena[h.length:]
			if len(b.Records) == 0 {
				b.Oldest = time.Unix(0, h.ts)
			}
			b.Records = append(b.Records, rec)
			payload += h.length
			seq++
		}
		s.rbr.Reset(nil)
		if r.off >= end {
			// The end of what was visible is a record boundary whose number
			// is known, even if damage kept the records before it from
			// being counted.
			seq = endSeq
		}
		pos.off, pos.seq = r.off, seq
		s.mu.Lock()
		// Records DropOldest discarded from start on while this walk ran:
		// those before pos are in the batch and now held like the rest of
		// it; the others were never read and count as dropped. They run
		// from start without a gap up to the committed position or the end
		// of the segment, whichever comes first.
		s.reading = false
		var got int64
		if reach := min(s.committed.seq, pos.seq); s.readDrops > 0 && reach > start.seq {
			got = min(s.readDrops, int64(reach-start.seq))
		}
		s.dropped += s.readDrops - got
		s.readDrops = 0
		if pos.seq > start.seq {
			if !holding {
				s.held = append(s.held, heldBatch{})
				holding = true
			}
			h := &s.held[len(s.held)-1]
			h.end = pos.seq
			h.dropped += got
		}
		// Only DropOldest moves readPos meanwhile, and only forwards.
		if s.readPos == start || pos.seq > s.readPos.seq {
			s.readPos = pos
		}
		if broken && tail {
			s.rotate = true
		}
		s.mu.Unlock()
		b.End = pos
		if rerr != nil {
			if len(b.Records) > 0 {
				s.lend(b.Records, arenas)
				return b, nil
			}
			if s.isClosed() {
				return Batch{}, ErrClosed
			}
			return Batch{}, fmt.Errorf("spool: read %s: %w", f.Name(), rerr)
		}
		if full || len(b.Records) >= maxRecords {
			s.lend(b.Records, arenas)
			return b, nil
		}
	}
}

// arenaSize is the chunk Read carves records out of; larger records get
// memory of their own, which is not recycled.
const arenaSize = 64 << 10

// maxFreeArenas bounds the arenas kept for reuse (8 MiB, the gateway's
// largest batch).
const maxFreeArenas = 128

// takeArena returns a free arena or a new one.
func (s *Spool) takeArena() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.freeArenas); n > 0 {
		a := s.freeArenas[n-1]
		s.freeArenas = s.freeArenas[:n-1]
		return a[:arenaSize]
	}
	return make([]byte, arenaSize)
}

// takeList returns an empty record list, reused if one is free.
func (s *Spool) takeList(size int) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.freeLists); n > 0 {
		l := s.freeLists[n-1]
		s.freeLists = s.freeLists[:n-1]
		return l[:0]
	}
	return make([][]byte, 0, size)
}

// lend records the memory of a batch handed out. The batch is already in
// s.held, so recycle cannot take this memory back before lend runs.
func (s *Spool) lend(records [][]byte, arenas [][]byte) {
	s.mu.Lock()
	s.lentLists = append(s.lentLists, records)
	s.lentArenas = append(s.lentArenas, arenas...)
	s.mu.Unlock()
}

// recycle takes back the memory of the batches handed out once none is
// held any more (after Commit of the last one, or Rewind): the caller has
// given up their records, so the next Read may overwrite them. Called with
// mu held.
func (s *Spool) recycle() {
	if len(s.held) > 0 {
		return
	}
	for _, a := range s.lentArenas {
		if cap(a) == arenaSize && len(s.freeArenas) < maxFreeArenas {
			s.freeArenas = append(s.freeArenas, a)
		}
	}
	clear(s.lentArenas)
	s.lentArenas = s.lentArenas[:0]
	for _, l := range s.lentLists {
		if len(s.freeLists) < 2 {
			clear(l[:cap(l)]) // let go of the records it points to
			s.freeLists = append(s.freeLists, l)
		}
	}
	clear(s.lentLists)
	s.lentLists = s.lentLists[:0]
}

func (s *Spool) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
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

// Stats returns a snapshot of the counters. Safe from any goroutine.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Bytes:          s.bytes,
		Records:        s.records,
		Oldest:         s.oldest,
		Dropped:        s.dropped,
		CorruptRecords: s.corruptN,
		CorruptBytes:   s.corruptB,
		Segments:       len(s.segs),
		DiskFree:       s.diskFree,
	}
}

// Close wakes a blocked Read, waits for an Append in progress and releases
// the files. Data is already durable; Close does not write. Calls after the
// first return nil.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()

	s.appendMu.Lock()
	err := s.w.Close()
	s.appendMu.Unlock()

	s.mu.Lock()
	for _, f := range []*os.File{s.rf, s.hf} {
		if f != nil {
			f.Close()
		}
	}
	s.rf, s.hf = nil, nil
	s.mu.Unlock()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("spool: close: %w", err)
	}
	return nil
}
