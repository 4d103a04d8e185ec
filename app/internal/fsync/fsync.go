// Package fsync makes directory changes durable.
package fsync

import (
	"fmt"
	"os"
)

// Dir fsyncs a directory, so that files created, renamed or removed in it
// survive a crash: fsyncing a file makes its contents durable, not its
// name. Both the spool (new segments) and the export (files renamed into
// place, the state file) rely on it.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
