package export

import (
	"fmt"
	"time"
)

// Window is the half-open time range [From, To) one export covers.
type Window struct {
	From, To time.Time
}

// Day is the UTC day that contains t.
func Day(t time.Time) Window {
	t = t.UTC()
	from := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	return Window{From: from, To: from.AddDate(0, 0, 1)}
}

// ParseDay parses YYYY-MM-DD as a UTC day.
func ParseDay(s string) (Window, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return Window{}, fmt.Errorf("day %q: want YYYY-MM-DD", s)
	}
	return Day(t), nil
}

// Range is the window [from, to); it must not be empty.
func Range(from, to time.Time) (Window, error) {
	if !from.Before(to) {
		return Window{}, fmt.Errorf("from %s is not before to %s", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	return Window{From: from.UTC(), To: to.UTC()}, nil
}

// IsDay reports whether w is exactly one UTC day.
func (w Window) IsDay() bool { return w == Day(w.From) }

// Path is where the window's files live, locally under the export folder
// and in S3 under the prefix: YYYY/MM/DD for a day, and
// ranges/<from>_<to> (compact UTC times) for any other window, so a partial
// range never replaces a day's complete export.
func (w Window) Path() string {
	if w.IsDay() {
		return w.From.Format("2006/01/02")
	}
	const compact = "20060102T150405.999999999Z"
	return "ranges/" + w.From.Format(compact) + "_" + w.To.Format(compact)
}

func (w Window) String() string {
	if w.IsDay() {
		return w.From.Format(time.DateOnly)
	}
	return w.From.Format(time.RFC3339Nano) + " to " + w.To.Format(time.RFC3339Nano)
}

// Recheck returns the days already done (up to and including last) among
// the k days before today, oldest first: the days --catch-up checks for
// late data.
func Recheck(last, now time.Time, k int) []Window {
	if last.IsZero() {
		return nil
	}
	yesterday := Day(now).From.AddDate(0, 0, -1)
	end := Day(last).From
	if end.After(yesterday) {
		end = yesterday
	}
	var days []Window
	for d := yesterday.AddDate(0, 0, -(k - 1)); !d.After(end); d = d.AddDate(0, 0, 1) {
		days = append(days, Day(d))
	}
	return days
}

// CatchUp returns the days after last up to and including the day before
// today, oldest first, at most max of them (the most recent ones). skipped
// counts the older missed days left out. A zero last means no export has
// succeeded yet: only yesterday is due.
func CatchUp(last time.Time, now time.Time, max int) (days []Window, skipped int) {
	yesterday := Day(now).From.AddDate(0, 0, -1)
	first := yesterday
	if !last.IsZero() {
		first = Day(last).From.AddDate(0, 0, 1)
	}
	if first.After(yesterday) {
		return nil, 0
	}
	if n := int(yesterday.Sub(first)/(24*time.Hour)) + 1; n > max {
		skipped = n - max
		first = yesterday.AddDate(0, 0, -(max - 1))
	}
	for d := first; !d.After(yesterday); d = d.AddDate(0, 0, 1) {
		days = append(days, Day(d))
	}
	return days, skipped
}
