//go:build !(linux || darwin || freebsd)

package spool

// diskFree cannot tell on this system.
func diskFree(string) int64 { return -1 }
