//go:build !linux

package nbd

// osAlloc allocates n bytes on the Go heap; the collector returns them to the OS once they
// are dropped.
func osAlloc(n int) ([]byte, bool) { return make([]byte, n), true }

// osFree drops b; the collector frees it.
func osFree(b []byte) {}
