// Package deadletter keeps the messages the gateway could not store — bad
// payloads and points the database refused — as JSON lines in the state
// directory, so an operator can see exactly what was rejected and why. The
// file is bounded: at the size limit it is rotated to a single ".1" file.
//
// A failed rotation or reopen does not end the file: the next Add tries
// again. When the rename fails but the file can still be written, entries
// go on being appended past the size limit (kept rather than lost) until a
// rotation succeeds; Add returns an error only for an entry it did not
// write.
package deadletter

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"
)

// FileName is the dead-letter file inside the state directory.
const FileName = "deadletter.jsonl"

// excerptBytes bounds how much of a payload is kept per entry.
const excerptBytes = 1024

// Entry is one rejected message.
type Entry struct {
	Time    time.Time `json:"time"`
	Topic   string    `json:"topic,omitempty"`
	Reason  string    `json:"reason"`
	Error   string    `json:"error"`
	Payload string    `json:"payload,omitempty"` // first bytes, as text when valid UTF-8
	Base64  bool      `json:"base64,omitempty"`  // Payload is base64: the bytes were not UTF-8
	Size    int       `json:"size"`              // full payload size in bytes
}

// File is an append-only, size-bounded dead-letter file. Safe for
// concurrent use.
type File struct {
	mu       sync.Mutex
	path     string
	maxBytes int64
	f        *os.File // nil after a failed rotation or reopen, until one succeeds
	size     int64
	closed   bool
}

// Open opens (creating) dir/deadletter.jsonl.
func Open(dir string, maxBytes int64) (*File, error) {
	d := &File{path: filepath.Join(dir, FileName), maxBytes: maxBytes}
	if err := d.open(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *File) open() error {
	f, err := os.OpenFile(d.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("deadletter: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("deadletter: %w", err)
	}
	d.f, d.size = f, st.Size()
	return nil
}

// Add records one rejected message. payload may be nil.
func (d *File) Add(now time.Time, topic, reason string, cause error, payload []byte) error {
	e := Entry{Time: now.UTC(), Topic: topic, Reason: reason, Size: len(payload)}
	if cause != nil {
		e.Error = cause.Error()
	}
	ex := payload
	if len(ex) > excerptBytes {
		ex = ex[:excerptBytes]
	}
	if utf8.Valid(ex) {
		e.Payload = string(ex)
	} else {
		e.Payload, e.Base64 = base64.StdEncoding.EncodeToString(ex), true
	}
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("deadletter: %w", err)
	}
	line = append(line, '\n')
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("deadletter: closed")
	}
	if d.f != nil && d.size+int64(len(line)) > d.maxBytes && d.size > 0 {
		d.rotate()
	}
	if d.f == nil {
		if err := d.open(); err != nil {
			return err
		}
	}
	n, err := d.f.Write(line)
	d.size += int64(n)
	if err != nil {
		return fmt.Errorf("deadletter: %w", err)
	}
	return nil
}

// rotate moves the full file to ".1" and leaves d.f nil for the caller to
// reopen. If the rename fails the reopen appends to the same file (over the
// limit; the next Add past it tries again), or, if the file itself is gone
// (its directory removed), creates it anew or fails visibly: an open handle
// on a removed file would take entries that nobody can ever read.
func (d *File) rotate() {
	_ = os.Rename(d.path, d.path+".1")
	d.f.Close()
	d.f = nil
}

// Close closes the file.
func (d *File) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}
