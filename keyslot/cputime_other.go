//go:build !linux

package keyslot

import "time"

// threadCPUTimer measures wall time where the thread's CPU time is not available.
func threadCPUTimer() (elapsed func() time.Duration, stop func()) {
	start := time.Now()
	return func() time.Duration { return time.Since(start) }, func() {}
}
