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
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// Batch is what Read returns. Its records live in the spool's memory and
// stay valid until the batch is given up, by a Commit at or past its End or
// by Rewind; after that the next Read may reuse them. Until then the reader
// holds the batch: DropOldest may discard its records from disk meanwhile,
// which does not invalidate it. Deliver it and Commit, or Rewind.
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

	readMu  sync.Mutex // serialises Read; guards rbr and readMem
	rbr     *bufio.Reader
	readMem batchMemory
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

func (s *Spool) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
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
