package sensor

import (
	"fmt"
	"hash/maphash"
	"sync"
	"testing"
)

func newTestMapper(t testing.TB, cacheBytes int) *Mapper {
	t.Helper()
	m, err := NewMapper(MapperConfig{StaticTags: map[string]string{"gateway": "gw-1"}, TopicCacheBytes: cacheBytes})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// held is what the cache's generations hold, in bytes as it counts them.
func (c *TopicCache) held(t *testing.T) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, g := range []*topicGen{&s.cur, &s.prev} {
			n += cap(g.arena) + len(g.slots)*8
			if cap(g.arena) > g.arenaCap || g.n > g.maxEntries {
				t.Errorf("a generation holds %d bytes (limit %d) and %d entries (limit %d)", cap(g.arena), g.arenaCap, g.n, g.maxEntries)
			}
		}
		s.mu.Unlock()
	}
	return n
}

func TestTopicCacheLookup(t *testing.T) {
	m := newTestMapper(t, 0)
	c := m.Topics()
	name := []byte("sensors/s1/d1/env")
	if _, ok := c.Lookup(name); ok {
		t.Fatal("found before it was added")
	}
	added := c.Add(name, FormatLine)
	name[0] = 'X' // the cache must hold its own copy
	got, ok := c.Lookup([]byte("sensors/s1/d1/env"))
	if !ok || got.Name != "sensors/s1/d1/env" || got.Format != FormatLine || added.Name != got.Name {
		t.Fatalf("Lookup = %+v, %v; Add returned %+v", got, ok, added)
	}
	if string(got.prefix) != "env,device=d1,gateway=gw-1,site=s1" {
		t.Fatalf("prefix %q", got.prefix)
	}
	key := []byte("sensors/s1/d1/env")
	if a := testing.AllocsPerRun(100, func() { c.Lookup(key) }); a != 0 {
		t.Fatalf("Lookup of a cached topic: %v allocations", a)
	}
	// A topic the pattern refuses is cached without a prefix; the mapper
	// still reports why.
	bad := c.Add([]byte("other/x"), FormatJSON)
	if bad.Name != "other/x" || bad.prefix != nil {
		t.Fatalf("bad topic cached as %+v", bad)
	}
	if _, _, err := m.Append(nil, Message{Topic: "other/x", Payload: []byte(`{"v":1}`)}, FormatJSON); err == nil {
		t.Fatal("a topic that does not match the pattern was mapped")
	}
}

// A fleet far larger than the cache: memory stays within the budget, the
// names handed out stay intact, a topic heard from all the time stays
// cached, and every message still maps to the right line.
func TestTopicCacheBoundedKeepsHot(t *testing.T) {
	const budget = MinTopicCacheBytes
	m := newTestMapper(t, budget)
	c := m.Topics()
	hot := []byte("sensors/s1/hot/env")
	c.Add(hot, FormatJSON)
	var kept []Topic
	for i := 0; i < 200_000; i++ {
		name := fmt.Sprintf("sensors/s%d/d%d/env", i%7, i)
		tp := c.Add([]byte(name), FormatJSON)
		if i%20_000 == 0 {
			kept = append(kept, tp)
		}
		if i%100 == 0 {
			if _, ok := c.Lookup(hot); !ok {
				t.Fatalf("hot topic evicted after %d others", i)
			}
		}
		if i%1000 == 0 {
			line, _, err := m.Append(nil, Message{Topic: name, Payload: []byte(`{"v":1,"ts":1}`)}, FormatJSON)
			want := fmt.Sprintf("env,device=d%d,gateway=gw-1,site=s%d v=1 1000000\n", i, i%7)
			if err != nil || string(line) != want {
				t.Fatalf("topic %d: %q, %v; want %q", i, line, err, want)
			}
		}
	}
	if h := c.held(t); h > budget {
		t.Fatalf("cache holds %d bytes, budget %d", h, budget)
	}
	if _, ok := c.Lookup([]byte("sensors/s0/d0/env")); ok {
		t.Fatal("a topic heard from once, 200k topics ago, is still cached")
	}
	for k, tp := range kept {
		i := k * 20_000
		if want := fmt.Sprintf("sensors/s%d/d%d/env", i%7, i); tp.Name != want {
			t.Fatalf("name handed out changed to %q, want %q", tp.Name, want)
		}
	}
}

// Names whose hashes share the half kept in the table, and a full probe
// sequence, must still be told apart.
func TestTopicCacheHashCollision(t *testing.T) {
	g := topicGen{arenaCap: 1024, maxEntries: 12}
	s := &topicShard{cur: g}
	const h = 0xabcd_0000_0000_0003 // every entry the same hash
	for i, n := range []string{"a/b", "c/d", "e/f"} {
		s.putUnlocked(h, []byte(n), formatByte(FormatJSON), nil, 0)
		if s.cur.n != i+1 {
			t.Fatalf("%d entries after %d inserts", s.cur.n, i+1)
		}
	}
	for _, n := range []string{"a/b", "c/d", "e/f"} {
		if got, ok := s.cur.get(h, n); !ok || got.Name != n {
			t.Fatalf("get(%q) = %+v, %v", n, got, ok)
		}
	}
	if got, ok := s.cur.get(h, "x/y"); ok {
		t.Fatalf("x/y found as %q", got.Name)
	}
}

func TestTopicCacheConcurrent(t *testing.T) {
	m := newTestMapper(t, MinTopicCacheBytes)
	c := m.Topics()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20_000; i++ {
				name := fmt.Sprintf("sensors/s1/d%d/env", (i*7+g)%5000)
				tp, ok := c.Lookup([]byte(name))
				if !ok {
					tp = c.Add([]byte(name), FormatJSON)
				}
				if tp.Name != name {
					t.Errorf("got %q for %q", tp.Name, name)
					return
				}
				if _, _, err := m.Append(nil, Message{Topic: name, Payload: []byte(`{"v":1}`)}, FormatJSON); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkMapperJSONFleet maps messages from a fleet larger than the topic
// cache, each topic heard from once a round: the cost of a miss.
func BenchmarkMapperJSONFleet(b *testing.B) {
	m := newTestMapper(b, 0)
	const fleet = 1_000_000
	topics := make([]string, fleet)
	for i := range topics {
		topics[i] = fmt.Sprintf("sensors/s1/d%d/env", i)
	}
	payload := []byte(`{"ts":1700000000000,"t":21.5,"h":40.1,"p":1013.2,"ok":true,"id":"x"}`)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, _, err := m.Append(buf[:0], Message{Topic: topics[i%fleet], Payload: payload}, FormatJSON)
		if err != nil {
			b.Fatal(err)
		}
		buf = out
	}
}

// A few topics cost a few kilobytes, not the budget: the cache's bytes
// are live heap, which the gateway's memory limit counts.
func TestTopicCacheSmallFleetSmall(t *testing.T) {
	m := newTestMapper(t, 0)
	c := m.Topics()
	for i := 0; i < 100; i++ {
		c.Add([]byte(fmt.Sprintf("sensors/s1/d%d/env", i)), FormatJSON)
	}
	if h := c.held(t); h > 40<<10 {
		t.Fatalf("100 topics hold %d bytes", h)
	}
}

// The entry a message carries is used only by the mapper whose cache made
// it, and only for its own topic.
func TestMapperUsesCarriedEntry(t *testing.T) {
	m1 := newTestMapper(t, 0)
	m2, err := NewMapper(MapperConfig{StaticTags: map[string]string{"gateway": "gw-2"}})
	if err != nil {
		t.Fatal(err)
	}
	name := "sensors/s1/d1/env"
	e := m1.Topics().Add([]byte(name), FormatJSON)
	payload := []byte(`{"v":1,"ts":1}`)
	for _, tc := range []struct {
		m     *Mapper
		topic string
		want  string
	}{
		{m1, name, "env,device=d1,gateway=gw-1,site=s1 v=1 1000000\n"},
		{m2, name, "env,device=d1,gateway=gw-2,site=s1 v=1 1000000\n"},
		{m1, "sensors/s1/d2/env", "env,device=d2,gateway=gw-1,site=s1 v=1 1000000\n"},
	} {
		got, _, err := tc.m.Append(nil, Message{Topic: tc.topic, Payload: payload, Cached: e}, FormatJSON)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.topic, got, err, tc.want)
		}
	}
	msg := Message{Topic: name, Payload: payload, Cached: e}
	if a := testing.AllocsPerRun(100, func() { _, _, _ = m1.Append(make([]byte, 0, 256)[:0], msg, FormatJSON) }); a > 1 {
		t.Fatalf("%v allocations with the entry carried", a)
	}
}

// carriedPrefix trusts an entry only from its own mapper's cache, for its
// own topic, and only when the entry has a prefix.
func TestCarriedPrefix(t *testing.T) {
	m1 := newTestMapper(t, 0)
	m2 := newTestMapper(t, 0) // the same config, another cache
	name := "sensors/s1/d1/env"
	e := m1.Topics().Add([]byte(name), FormatJSON)
	if p, ok := m1.carriedPrefix(name, e); !ok || string(p) != "env,device=d1,gateway=gw-1,site=s1" {
		t.Errorf("own entry: %q, %v", p, ok)
	}
	refused := m1.Topics().Add([]byte("other/topic"), FormatJSON)
	for _, tc := range []struct {
		what  string
		m     *Mapper
		topic string
		e     Topic
	}{
		{"another mapper's entry", m2, name, e},
		{"another topic's entry", m1, "sensors/s1/d2/env", e},
		{"no entry", m1, name, Topic{}},
		{"an entry without a prefix", m1, "other/topic", refused},
	} {
		if p, ok := tc.m.carriedPrefix(tc.topic, tc.e); ok {
			t.Errorf("%s: used, prefix %q", tc.what, p)
		}
	}
}

// session resolves a topic as a broker session does: Lookup, then
// AddOrPass; it reports whether the lookup hit.
func session(c *TopicCache, name []byte) (Topic, bool) {
	if t, ok := c.Lookup(name); ok {
		return t, true
	}
	return c.AddOrPass(name, FormatJSON), false
}

// frozenFleet fills a minimum-size cache with three rounds of a fleet ten
// times its capacity, topics sensors/<site>/d<i>/env, so its shards freeze.
func frozenFleet(t *testing.T, site func(i int) string) (*Mapper, *TopicCache, int, [][]byte) {
	t.Helper()
	m := newTestMapper(t, MinTopicCacheBytes)
	c := m.Topics()
	capacity := topicShards * 2 * (c.genCap / 64 / 4 * 3) // entries at most
	names := make([][]byte, 10*capacity)
	for i := range names {
		names[i] = []byte(fmt.Sprintf("sensors/%s/d%d/env", site(i), i))
	}
	for round := 0; round < 3; round++ {
		for _, n := range names {
			session(c, n)
		}
	}
	return m, c, capacity, names
}

// A fleet ten times larger than the cache, publishing in turn: a cache
// that kept admitting would miss on every message (each topic leaves
// before it is heard from again). Frozen shards keep a stable share that
// hits every round, the others pass through without allocating, and
// every message still maps to its own line.
func TestTopicCacheFleetLargerThanCacheKeepsAShare(t *testing.T) {
	const budget = MinTopicCacheBytes
	m, c, _, names := frozenFleet(t, func(i int) string { return fmt.Sprintf("s%d", i%7) })
	fleet := len(names)
	hits := 0
	for i, n := range names {
		tp, hit := session(c, n)
		if hit {
			hits++
		}
		if tp.Name != string(n) {
			t.Fatalf("topic %d: name %q", i, tp.Name)
		}
		if i%97 == 0 {
			line, _, err := m.Append(nil, Message{Topic: tp.Name, Payload: []byte(`{"v":1,"ts":1}`), Cached: tp}, FormatJSON)
			want := fmt.Sprintf("env,device=d%d,gateway=gw-1,site=s%d v=1 1000000\n", i, i%7)
			if err != nil || string(line) != want {
				t.Fatalf("topic %d: %q, %v; want %q", i, line, err, want)
			}
		}
	}
	// A cache of capacity entries over a fleet of 10×capacity can hit at
	// most a tenth of the time; frozen, it should come close.
	if rate, want := float64(hits)/float64(fleet), 0.5/10; rate < want {
		t.Fatalf("hit rate %.3f over a fleet 10× the cache, want at least %.3f", rate, want)
	}
	if h := c.held(t); h > budget {
		t.Fatalf("cache holds %d bytes, budget %d", h, budget)
	}
	// A topic passing through costs nothing.
	var missed []byte
	for _, n := range names {
		if _, ok := c.Lookup(n); !ok {
			missed = n
			break
		}
	}
	if a := testing.AllocsPerRun(100, func() {
		if tp := c.AddOrPass(missed, FormatJSON); !tp.passing {
			t.Fatal("a frozen shard admitted a topic at once")
		}
	}); a != 0 {
		t.Fatalf("a topic declined by a frozen shard: %v allocations", a)
	}
}

// A frozen cache follows a fleet that changes: once all devices are new,
// it admits them a generation at a time and hits again.
func TestTopicCacheFrozenFollowsANewFleet(t *testing.T) {
	_, c, capacity, _ := frozenFleet(t, func(int) string { return "old" })
	// A small new fleet that fits: after the thaw it is cached whole.
	small := make([][]byte, capacity/4)
	for i := range small {
		small[i] = []byte(fmt.Sprintf("sensors/new/d%d/env", i))
	}
	rounds := 0
	for ; rounds < 2*thawAfter*capacity/len(small)+10; rounds++ {
		hits := 0
		for _, n := range small {
			if _, hit := session(c, n); hit {
				hits++
			}
		}
		if hits == len(small) {
			break
		}
	}
	for _, n := range small {
		if _, ok := c.Lookup(n); !ok {
			t.Fatalf("after %d rounds a small new fleet is not cached (%s)", rounds, n)
		}
	}
}

// Hot topics never freeze a shard: a cache that holds its fleet admits
// every topic.
func TestTopicCacheFittingFleetNeverFreezes(t *testing.T) {
	m := newTestMapper(t, 0)
	c := m.Topics()
	for round := 0; round < 5; round++ {
		for i := 0; i < 5000; i++ {
			session(c, []byte(fmt.Sprintf("sensors/s1/d%d/env", i)))
		}
	}
	for i := range c.shards {
		if c.shards[i].frozen {
			t.Fatalf("shard %d froze with a fleet that fits", i)
		}
	}
}

// The mapper's own path (no entry carried, as in the demo or tests) does
// not start a new generation in a frozen shard either: the share it keeps
// stays, however long the shard has been hit since it froze.
func TestTopicCacheFrozenStaysFrozenForTheMapper(t *testing.T) {
	m, c, _, names := frozenFleet(t, func(int) string { return "s1" })
	var kept [][]byte
	for _, n := range names {
		// Topics held by a frozen shard (one may be thawing: it admits a
		// generation, on any path, by design), hit many times since.
		if _, ok := c.Lookup(n); ok && c.shards[maphash.Bytes(c.seed, n)%topicShards].frozen {
			kept = append(kept, n)
		}
	}
	if len(kept) == 0 {
		t.Fatal("no frozen shard holds a topic: the test tests nothing")
	}
	for _, n := range names {
		if _, _, err := m.Append(nil, Message{Topic: string(n), Payload: []byte(`{"v":1}`)}, FormatJSON); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range kept {
		if _, ok := c.Lookup(n); !ok {
			t.Fatalf("%s left a frozen shard through the mapper's path", n)
		}
	}
}
