package keyslot

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// threadCPUTimer measures the CPU time of the calling goroutine's thread, as cryptsetup and
// QEMU measure their PBKDF2 benchmarks (getrusage), so that a machine busy with other work
// does not make the count too small. It locks the goroutine to its thread until stop.
func threadCPUTimer() (elapsed func() time.Duration, stop func()) {
	runtime.LockOSThread()
	now := func() (time.Duration, bool) {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
			return 0, false
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
	}
	wall := time.Now()
	start, ok := now()
	return func() time.Duration {
			if t, ok2 := now(); ok && ok2 {
				return t - start
			}
			return time.Since(wall)
		}, func() {
			runtime.UnlockOSThread()
		}
}
