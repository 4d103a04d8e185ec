package sensor

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"sync"
	"unsafe"

	"github.com/iot-gateway/iot-gateway/app/internal/tagtable"
)

// Topic is what the gateway keeps about one MQTT topic: its name, its
// payload format, and for topics the mapper can map, the escaped start of
// their lines.
//
// A cached Topic's name stays valid after the message. A passing one (the
// cache declined to keep it, see AddOrPass) views the caller's buffer and
// is valid only while the message is handled: whoever keeps a topic name
// beyond that copies it.
type Topic struct {
	Name   string
	Format Format
	prefix []byte      // nil when the topic does not match the pattern
	cache  *TopicCache // whose mapper made prefix
	// passing: not cached and no prefix built; the mapper builds the
	// prefix into the line itself.
	passing bool
}

// TopicCache keeps Topics for the topics heard from recently, shared by the
// broker sessions (which need the name and the format of each message) and
// the Mapper (which needs the line prefix), so each topic is looked up once
// per message and computed once while it stays hot.
//
// Its memory is bounded in bytes, not entries: a fleet of a million devices
// must not cost more than the budget, however long the topics. Entries live
// in byte arenas without pointers, indexed by a hash in maps without
// pointers, so the garbage collector has nothing to scan however many
// topics are cached. Each shard fills one generation up to its share of the
// budget, then starts a new one and keeps the previous: a topic looked up
// in the previous generation is copied into the current one, so topics
// heard from at least once a generation stay, and the rest go with the old
// generation in one piece (no per-entry eviction bookkeeping). Safe for
// concurrent use.
//
// A fleet larger than the cache that publishes in turn (every device once
// a minute, say) would make every message a miss that also copies its
// topic in, only for the entry to leave before the device speaks again.
// So a shard whose full generation saw fewer hits than new entries stops
// admitting (it is frozen): it keeps the topics it holds, a stable share of
// the fleet that then hits on every message, and the others pass through
// without being copied or allocating (AddOrPass). Every thawAfter
// generations' worth of declined topics it admits one generation again, so
// a fleet that changes is followed.
type TopicCache struct {
	m      *Mapper // computes prefixes; nil: names and formats only
	seed   maphash.Seed
	shards [topicShards]topicShard
	genCap int // bytes per generation per shard
}

// topicShards spreads the locks of several broker connections.
const topicShards = 16

// DefaultTopicCacheBytes is the budget of a TopicCache given 0.
const DefaultTopicCacheBytes = 2 << 20

// MinTopicCacheBytes is the smallest budget a TopicCache takes.
const MinTopicCacheBytes = 256 << 10

type topicShard struct {
	mu        sync.Mutex
	cur, prev topicGen
	// hits and adds count the lookups found and the new entries since the
	// current generation started: what decides whether to freeze.
	hits, adds int
	// Since the start, for TopicCacheStats.
	hitsTotal, missesTotal uint64
	frozen                 bool
	declined               int  // misses declined since frozen
	thawing                bool // the next new generation starts without a verdict
}

// thawAfter is how many generations' worth of declined misses a frozen
// shard waits before it admits a new generation.
const thawAfter = 16

// topicGen is one generation: entries back to back in arena, found
// through an open-addressing table whose slots hold the high half of the
// name's hash and the entry's offset + 1 (0 is an empty slot).
type topicGen struct {
	slots []uint64
	n     int // entries in slots
	arena []byte
	// The generation's limits. Both the table and the arena start small
	// and grow up to them, so a few topics cost a few bytes (the live
	// heap counts against the gateway's memory limit: every byte held
	// makes the collector run more often).
	arenaCap, maxEntries int
}

// Entry header: name length, prefix length (both uint16), format, flags.
const (
	topicHeader   = 6
	flagHasPrefix = 1
)

// NewTopicCache returns a cache bounded to about budget bytes (0: the
// default; at least MinTopicCacheBytes). m computes line prefixes; with a
// nil m entries hold names and formats only.
func NewTopicCache(m *Mapper, budget int) *TopicCache {
	if budget <= 0 {
		budget = DefaultTopicCacheBytes
	}
	budget = max(budget, MinTopicCacheBytes)
	return &TopicCache{m: m, seed: maphash.MakeSeed(), genCap: budget / topicShards / 2}
}

// Bytes is the memory the cache holds (at most about its budget). None of
// it is pointers: the collector does not scan it.
func (c *TopicCache) Bytes() int { return c.Stats().Bytes }

// TopicCacheStats is a TopicCache in numbers.
type TopicCacheStats struct {
	Bytes         int    // held
	Topics        int    // cached
	Hits, Misses  uint64 // lookups since the start
	FrozenShards  int    // shards holding a share of a fleet larger than them
	ShardsInTotal int
}

// Stats returns the cache's current numbers.
func (c *TopicCache) Stats() TopicCacheStats {
	st := TopicCacheStats{ShardsInTotal: topicShards}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		st.Bytes += cap(s.cur.arena) + len(s.cur.slots)*8 + cap(s.prev.arena) + len(s.prev.slots)*8
		st.Topics += s.cur.n + s.prev.n // a promoted topic is in both: an upper bound
		st.Hits += s.hitsTotal
		st.Misses += s.missesTotal
		if s.frozen {
			st.FrozenShards++
		}
		s.mu.Unlock()
	}
	return st
}

func formatByte(f Format) byte {
	switch f {
	case FormatJSON:
		return 1
	case FormatLine:
		return 2
	}
	return 0
}

func byteFormat(b byte) Format {
	switch b {
	case 1:
		return FormatJSON
	case 2:
		return FormatLine
	}
	return ""
}

// Lookup returns the cached Topic of name, if there is one. It does not
// allocate.
func (c *TopicCache) Lookup(name []byte) (Topic, bool) {
	h := maphash.Bytes(c.seed, name)
	s := &c.shards[h%topicShards]
	s.mu.Lock()
	t, ok := s.find(h, unsafe.String(unsafe.SliceData(name), len(name)))
	s.mu.Unlock()
	t.cache = c
	return t, ok
}

// lookupString is Lookup for a name held as a string.
func (c *TopicCache) lookupString(name string) (Topic, bool) {
	h := maphash.String(c.seed, name)
	s := &c.shards[h%topicShards]
	s.mu.Lock()
	t, ok := s.find(h, name)
	s.mu.Unlock()
	t.cache = c
	return t, ok
}

// Add computes name's Topic with format f, caches it when it fits (a
// frozen shard starts a new generation for it), and returns it. The
// returned Name never aliases name.
func (c *TopicCache) Add(name []byte, f Format) Topic {
	var buf [maxStackPrefix]byte
	prefix := c.buildPrefix(&buf, name)
	t, ok := c.add(maphash.Bytes(c.seed, name), name, f, prefix, true)
	if !ok {
		// Too big to cache: a copy of its own.
		t = Topic{Name: string(name), Format: f, prefix: bytes.Clone(prefix), cache: c}
	}
	return t
}

// AddOrPass is Add for the messages of a broker session, a name Lookup
// did not find: when its shard admits topics it is cached as by Add;
// when the shard is frozen (a fleet larger than the cache) it returns a
// passing Topic, whose Name views name, without building or copying
// anything. It does not allocate then.
func (c *TopicCache) AddOrPass(name []byte, f Format) Topic {
	h := maphash.Bytes(c.seed, name)
	s := &c.shards[h%topicShards]
	s.mu.Lock()
	admit := s.admit()
	s.mu.Unlock()
	if admit {
		var buf [maxStackPrefix]byte
		if t, ok := c.add(h, name, f, c.buildPrefix(&buf, name), false); ok {
			return t
		}
	}
	return Topic{Name: unsafe.String(unsafe.SliceData(name), len(name)), Format: f, cache: c, passing: true}
}

// buildPrefix is the mapper's prefix of name in buf (nil without a mapper,
// or for a topic the mapper refuses).
func (c *TopicCache) buildPrefix(buf *[maxStackPrefix]byte, name []byte) []byte {
	if c.m == nil {
		return nil
	}
	prefix, _ := c.m.buildPrefix(buf[:0], unsafe.String(unsafe.SliceData(name), len(name)))
	return prefix
}

// add caches name, whose hash is h, with its prefix (nil for a topic the
// mapper refuses); ok is false when the entry is too big to cache, or when
// force is false and its shard declines it.
func (c *TopicCache) add(h uint64, name []byte, f Format, prefix []byte, force bool) (Topic, bool) {
	s := &c.shards[h%topicShards]
	s.mu.Lock()
	t, ok := s.put(c.genCap, h, name, formatByte(f), prefix, prefix != nil, force)
	s.mu.Unlock()
	t.cache = c
	return t, ok
}

// admit reports whether a missed topic may be cached; s.mu is held.
func (s *topicShard) admit() bool {
	if !s.frozen {
		return true
	}
	s.declined++
	if s.declined < thawAfter*max(s.cur.maxEntries, 1) {
		return false
	}
	s.frozen, s.thawing = false, true
	return true
}

// find looks name up in the current generation, then in the previous one,
// promoting it from there; s.mu is held.
func (s *topicShard) find(h uint64, name string) (Topic, bool) {
	if t, ok := s.cur.get(h, name); ok {
		s.hits++
		s.hitsTotal++
		return t, true
	}
	t, ok := s.prev.get(h, name)
	if !ok {
		s.missesTotal++
		return Topic{}, false
	}
	s.hits++
	s.hitsTotal++
	// The Topic returned views the previous arena, which is never written
	// again: it stays valid whatever happens to the copy.
	flags := byte(0)
	if t.prefix != nil {
		flags = flagHasPrefix
	}
	s.putUnlocked(h, unsafe.Slice(unsafe.StringData(t.Name), len(t.Name)), formatByte(t.Format), t.prefix, flags)
	return t, true
}

func (g *topicGen) get(h uint64, name string) (Topic, bool) {
	if g.n == 0 {
		return Topic{}, false
	}
	mask := uint64(len(g.slots) - 1)
	tag := h >> 32
	for i := tag & mask; ; i = (i + 1) & mask {
		sl := g.slots[i]
		if sl == 0 {
			return Topic{}, false
		}
		if sl>>32 != tag {
			continue
		}
		// The same tag: the same name, or another with half its hash.
		if t := g.at(uint32(sl) - 1); t.Name == name {
			return t, true
		}
	}
}

// insert records the entry at off for hash h. The slot a tag goes to is
// taken from the tag itself, so the table can grow without the names.
func (g *topicGen) insert(h uint64, off uint32) {
	if (g.n+1)*4 > len(g.slots)*3 {
		g.slots = tagtable.Grow(g.slots, 16)
	}
	g.slots[tagtable.Free(g.slots, h>>32)] = h>>32<<32 | uint64(off+1)
	g.n++
}

// at decodes the entry at off.
func (g *topicGen) at(off uint32) Topic {
	b := g.arena[off:]
	nl := int(binary.LittleEndian.Uint16(b))
	pl := int(binary.LittleEndian.Uint16(b[2:]))
	nb := b[topicHeader : topicHeader+nl : topicHeader+nl]
	t := Topic{Name: unsafe.String(unsafe.SliceData(nb), nl), Format: byteFormat(b[4])}
	if b[5]&flagHasPrefix != 0 {
		t.prefix = b[topicHeader+nl : topicHeader+nl+pl : topicHeader+nl+pl]
	}
	return t
}

// put stores an entry in the current generation, starting a new one when
// it is full; ok is false when the entry is too big to cache, or when the
// generation is full, force is false and the shard freezes instead: both
// generations full and the current one filled with more new topics than
// hits, which is a fleet larger than the cache.
func (s *topicShard) put(genCap int, h uint64, name []byte, format byte, prefix []byte, hasPrefix, force bool) (Topic, bool) {
	need := topicHeader + len(name) + len(prefix)
	if len(name) > 0xffff || len(prefix) > 0xffff || need > genCap/8 {
		return Topic{}, false
	}
	if !s.cur.fits(need) {
		if !force && (s.frozen || !s.thawing && s.prev.n > 0 && s.hits < s.adds) {
			if !s.frozen {
				s.frozen, s.declined = true, 0
			}
			return Topic{}, false
		}
		s.hits, s.adds, s.thawing, s.frozen = 0, 0, false, false
		s.prev = s.cur
		// An eighth of the generation's bytes for the table (8 bytes a
		// slot, three quarters of them used at most), the rest for the
		// arena.
		slots := 16
		for slots*2*8 <= genCap/8 {
			slots *= 2
		}
		s.cur = topicGen{arenaCap: genCap - slots*8, maxEntries: slots / 4 * 3}
	}
	flags := byte(0)
	if hasPrefix {
		flags = flagHasPrefix
	}
	off, _ := s.putUnlocked(h, name, format, prefix, flags)
	s.adds++
	return s.cur.at(off), true
}

// fits reports whether an entry of need bytes fits in the generation.
func (g *topicGen) fits(need int) bool {
	return len(g.arena)+need <= g.arenaCap && g.n < g.maxEntries
}

// putUnlocked appends an entry to the current generation if it has room
// (a promotion may not: the entry then stays in the previous generation
// until the next one starts) and returns its offset.
func (s *topicShard) putUnlocked(h uint64, name []byte, format byte, prefix []byte, flags byte) (uint32, bool) {
	g := &s.cur
	need := topicHeader + len(name) + len(prefix)
	if !g.fits(need) {
		return 0, false
	}
	if len(g.arena)+need > cap(g.arena) {
		// A new, larger array: entries handed out keep viewing the old
		// one, whose bytes never change.
		grown := make([]byte, len(g.arena), min(max(2*cap(g.arena), 1024, len(g.arena)+need), g.arenaCap))
		copy(grown, g.arena)
		g.arena = grown
	}
	off := uint32(len(g.arena))
	g.arena = binary.LittleEndian.AppendUint16(g.arena, uint16(len(name)))
	g.arena = binary.LittleEndian.AppendUint16(g.arena, uint16(len(prefix)))
	g.arena = append(g.arena, format, flags)
	g.arena = append(g.arena, name...)
	g.arena = append(g.arena, prefix...)
	g.insert(h, off)
	return off, true
}
