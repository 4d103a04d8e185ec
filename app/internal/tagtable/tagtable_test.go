package tagtable

import "testing"

// Slots whose tags all want the last position wrap around, and a grown
// table still finds each from its tag.
func TestFreeWrapsAndGrowKeeps(t *testing.T) {
	slots := make([]uint64, 8)
	tag := uint64(7) // position 7 of 8
	var placed []uint64
	for i := range 5 {
		at := Free(slots, tag)
		if want := uint64((7 + i) % 8); at != want {
			t.Fatalf("entry %d placed at %d, want %d", i, at, want)
		}
		slots[at] = tag<<32 | uint64(i+1)
		placed = append(placed, slots[at])
	}
	grown := Grow(slots, 4)
	if len(grown) != 16 {
		t.Fatalf("grown to %d slots, want 16", len(grown))
	}
	for _, sl := range placed {
		found := false
		for i := sl >> 32 & 15; grown[i] != 0; i = (i + 1) & 15 {
			if grown[i] == sl {
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("slot %#x lost when the table grew", sl)
		}
	}
	if len(Grow(nil, 64)) != 64 {
		t.Fatal("an empty table does not start at the least size")
	}
}
