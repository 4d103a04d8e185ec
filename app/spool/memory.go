// Memory reuse: the arenas and lists batches are read into are lent to the
// reader and taken back at Commit or Rewind.

package spool

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
