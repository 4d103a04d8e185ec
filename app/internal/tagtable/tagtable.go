// Package tagtable is the open-addressing index that the topic cache and
// the fleet watch find their entries with: a slice of 64-bit slots, each
// holding the high half of an entry's hash (its tag) and the entry's place
// + 1 in the low half; 0 is an empty slot. A slot's position comes from
// its tag alone, so a table grows without reading the entries, and nothing
// in it is a pointer for the garbage collector to follow.
package tagtable

// Free returns the first empty slot from tag's position on. The table must
// have one.
func Free(slots []uint64, tag uint64) uint64 {
	mask := uint64(len(slots) - 1)
	i := tag & mask
	for slots[i] != 0 {
		i = (i + 1) & mask
	}
	return i
}

// Grow returns a table twice the size of old (at least least slots, a power
// of two) holding its slots.
func Grow(old []uint64, least int) []uint64 {
	slots := make([]uint64, max(least, 2*len(old)))
	for _, sl := range old {
		if sl != 0 {
			slots[Free(slots, sl>>32)] = sl
		}
	}
	return slots
}
