//go:build linux || darwin || freebsd

package spool

import "syscall"

// diskFree returns the bytes an unprivileged writer can still use on the
// filesystem holding dir, or -1 when it cannot tell.
func diskFree(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return -1
	}
	// The fields' types differ between systems.
	return int64(st.Bavail) * int64(st.Bsize)
}
