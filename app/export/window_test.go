package export

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

func TestWindows(t *testing.T) {
	d := Day(time.Date(2026, 3, 14, 23, 59, 59, 0, time.FixedZone("CET", 3600)))
	if !d.From.Equal(date(2026, 3, 14)) || !d.To.Equal(date(2026, 3, 15)) || d.Path() != "2026/03/14" || !d.IsDay() {
		t.Errorf("Day: %+v %s", d, d.Path())
	}
	if _, err := ParseDay("2026-02-30"); err == nil {
		t.Error("ParseDay accepted 2026-02-30")
	}
	r, err := Range(date(2026, 3, 14).Add(6*time.Hour), date(2026, 3, 14).Add(12*time.Hour))
	if err != nil || r.IsDay() || r.Path() != "ranges/20260314T060000Z_20260314T120000Z" {
		t.Errorf("Range: %v %s", err, r.Path())
	}
	if _, err := Range(date(2026, 3, 15), date(2026, 3, 14)); err == nil || !strings.Contains(err.Error(), "is not before") {
		t.Errorf("Range backwards: %v", err)
	}
	if _, err := Range(date(2026, 3, 15), date(2026, 3, 15)); err == nil {
		t.Error("Range accepted an empty window")
	}
}

func TestCatchUp(t *testing.T) {
	now := time.Date(2026, 3, 14, 3, 0, 0, 0, time.UTC)
	cases := []struct {
		name        string
		last        time.Time
		max         int
		first, n    string
		wantSkipped int
	}{
		{"first run: yesterday", time.Time{}, 31, "2026-03-13", "1", 0},
		{"done yesterday: nothing", date(2026, 3, 13), 31, "", "0", 0},
		{"host down three days", date(2026, 3, 10), 31, "2026-03-11", "3", 0},
		{"bounded", date(2025, 1, 1), 31, "2026-02-11", "31", 436 - 31},
		{"state in the future", date(2026, 4, 1), 31, "", "0", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			days, skipped := CatchUp(c.last, now, c.max)
			if got := len(days); c.n != strconv.Itoa(got) {
				t.Fatalf("%d days, want %s", got, c.n)
			}
			if len(days) > 0 {
				if days[0].String() != c.first || days[len(days)-1].String() != "2026-03-13" {
					t.Errorf("days %s .. %s", days[0], days[len(days)-1])
				}
			}
			if skipped != c.wantSkipped {
				t.Errorf("skipped %d, want %d", skipped, c.wantSkipped)
			}
		})
	}
}

func TestRecordDayOnlyMovesForward(t *testing.T) {
	dir := t.TempDir()
	if last, err := LastDay(dir); err != nil || !last.IsZero() {
		t.Fatalf("no state: %v %v", last, err)
	}
	for _, d := range []time.Time{date(2026, 3, 12), date(2026, 3, 10), date(2026, 3, 13)} {
		if err := recordDay(dir, d); err != nil {
			t.Fatal(err)
		}
	}
	if last, err := LastDay(dir); err != nil || !last.Equal(date(2026, 3, 13)) {
		t.Errorf("last day %v %v, want 2026-03-13", last, err)
	}
}

func TestFileName(t *testing.T) {
	for m, want := range map[string]string{
		"temperature": "temperature.lp.gz",
		"a/b":         "a%2Fb.lp.gz",
		"..":          "%2E..lp.gz",
		".hidden":     "%2Ehidden.lp.gz",
		"v1.2":        "v1.2.lp.gz",
		"temp °C":     "temp%20%C2%B0C.lp.gz",
	} {
		if got := FileName(m); got != want {
			t.Errorf("FileName(%q) = %q, want %q", m, got, want)
		}
	}
}
