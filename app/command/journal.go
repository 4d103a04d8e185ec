package command

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// FileName is the journal inside the state directory.
const FileName = "commands.jsonl"

// journal is the append-only record of transitions: one JSON line per
// transition, the command as it is after it. Replay keeps the last line of
// each id. It is compacted (rewritten with only the commands kept) when it
// holds more than twice the history, so it stays bounded.
type journal struct {
	path    string
	history int
	f       *os.File
	lines   int
}

func openJournal(dir string, history int) (*journal, []Command, error) {
	path := filepath.Join(dir, FileName)
	j := &journal{path: path, history: history}
	cmds, lines, err := replay(path, history)
	if err != nil {
		return nil, nil, err
	}
	j.lines = lines
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("command journal: %w", err)
	}
	j.f = f
	return j, cmds, nil
}

// replay reads the journal. A line that does not parse (a write torn by a
// crash) is skipped.
func replay(path string, history int) ([]Command, int, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("command journal: %w", err)
	}
	byID := map[string]int{}
	var cmds []Command
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines++
		var c Command
		if json.Unmarshal(sc.Bytes(), &c) != nil || c.ID == "" {
			continue
		}
		if i, ok := byID[c.ID]; ok {
			cmds[i] = c
			continue
		}
		byID[c.ID] = len(cmds)
		cmds = append(cmds, c)
	}
	if len(cmds) > history {
		cmds = cmds[len(cmds)-history:]
	}
	return cmds, lines, nil
}

// append writes c and fsyncs; past the bound it rewrites the file from
// snapshot instead.
func (j *journal) append(c Command, snapshot func() []Command) error {
	if j.lines >= 2*j.history {
		return j.compact(snapshot())
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return err
	}
	j.lines++
	return j.f.Sync()
}

// compact replaces the file with one line per command kept (written to a
// temporary file, fsynced and renamed over, so a crash leaves one or the
// other).
func (j *journal) compact(cmds []Command) error {
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, c := range cmds {
		b, _ := json.Marshal(c)
		w.Write(append(b, '\n'))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	f.Close()
	if err := os.Rename(tmp, j.path); err != nil {
		return err
	}
	nf, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	j.f.Close()
	j.f, j.lines = nf, len(cmds)
	return nil
}

func (j *journal) close() error { return j.f.Close() }
