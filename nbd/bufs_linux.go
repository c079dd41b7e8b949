package nbd

import "golang.org/x/sys/unix"

// osAlloc maps n bytes of zeroed memory outside the Go heap, so that freeing them returns
// them to the OS at once rather than when the collector and scavenger get to it. The pages
// are left out of core dumps: they hold plaintext. If the mapping fails it falls back to the
// Go heap and says so.
func osAlloc(n int) ([]byte, bool) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]byte, n), false
	}
	_ = unix.Madvise(b, unix.MADV_DONTDUMP) // best effort: older kernels lack it
	return b, true
}

// osFree unmaps a buffer of osAlloc; nothing may use it afterwards.
func osFree(b []byte) { _ = unix.Munmap(b) }
