package export

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/iot-gateway/iot-gateway/app/internal/fsync"
)

// StateName is the file in the export folder that remembers the last day
// exported and uploaded, for --catch-up.
const StateName = "state.json"

type state struct {
	LastDay string `json:"last_day"` // YYYY-MM-DD
}

// LastDay returns the last day recorded in dir's state file; zero when
// there is none yet.
func LastDay(dir string) (time.Time, error) {
	path := filepath.Join(dir, StateName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", path, err)
	}
	w, err := ParseDay(s.LastDay)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", path, err)
	}
	return w.From, nil
}

// recordDay stores day as the last one done, unless a later one already
// is (a re-run of an old day does not move the mark back).
func recordDay(dir string, day time.Time) error {
	last, err := LastDay(dir)
	if err != nil {
		return err
	}
	if !last.IsZero() && !day.After(last) {
		return nil
	}
	b, _ := json.Marshal(state{LastDay: day.UTC().Format(time.DateOnly)})
	tmp, err := os.CreateTemp(dir, "."+StateName+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, StateName)); err != nil {
		return err
	}
	return fsync.Dir(dir)
}
