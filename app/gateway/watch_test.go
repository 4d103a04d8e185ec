package gateway

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDeviceKey(t *testing.T) {
	for _, tc := range []struct{ pattern, topic, want string }{
		{"sensors/{site}/{device}/{_measurement}", "sensors/s1/d1/env", "s1/d1"},
		{"sensors/{site}/{device}/{_measurement}", "sensors/s1", ""},
		{"sensors/{site}/{device}/{_measurement}", "sensors//d1/env", ""},
		{"sensors/{site}/{device}/{_measurement}", "sensors/s1//env", ""},
		{"plant/{device}/+/{site}", "plant/d7/x/s2", "s2/d7"},
		{"plant/+/{line}", "plant/a/b", ""},
		{"{device}/{_measurement}", "d3/env", "d3"},
	} {
		if got := newDeviceKey(tc.pattern).of(tc.topic); got != tc.want {
			t.Errorf("%s on %s = %q, want %q", tc.pattern, tc.topic, got, tc.want)
		}
	}
	k := newDeviceKey("sensors/{site}/{device}/{_measurement}")
	if n := testing.AllocsPerRun(100, func() { _ = k.of("sensors/s1/d1/env") }); n != 0 {
		t.Errorf("%v allocations per topic, want 0", n)
	}
}

func TestDeadRingNewestFirst(t *testing.T) {
	var r deadRing
	for i := range recentDeadLetters + 5 {
		r.add(time.Unix(int64(i), 0), "t", "not_json", errors.New("bad"), []byte(strings.Repeat("x", i)+"\xff"))
	}
	got := r.latest(3)
	if len(got) != 3 || got[0].Size != recentDeadLetters+5 || got[2].Size != recentDeadLetters+3 {
		t.Fatalf("latest = %+v", got)
	}
	if len(got[0].Excerpt) > excerptBytes+3 || !strings.HasPrefix(got[0].Excerpt, "xxx") {
		t.Errorf("excerpt %q not bounded to %d bytes", got[0].Excerpt, excerptBytes)
	}
	if all := r.latest(1000); len(all) != recentDeadLetters {
		t.Errorf("kept %d, want %d", len(all), recentDeadLetters)
	}
}
