//go:build !unix

package spool

import (
	"os"
	"path/filepath"
)

// lockDir only creates dir/LOCK here: the gateway runs on Linux, where
// lock_unix.go takes a real lock.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
}
