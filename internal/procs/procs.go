// Package procs changes the Go runtime's processor count (GOMAXPROCS) for a stretch of work
// and puts it back afterwards, returning to the runtime's default — which follows a
// container's CPU limit as it changes — when that is what it found.
package procs

import "runtime"

// Set sets GOMAXPROCS to n (nothing when n < 1) and returns the function that puts back
// what it was. When that was the runtime's default, the restore goes back to the default
// (runtime.SetDefaultGOMAXPROCS), so that the runtime keeps following the CPU limit; a
// value set on purpose (the environment's GOMAXPROCS, another call) is put back as it was.
// The setting is the process's: Set is for work that nothing else runs beside.
func Set(n int) (restore func()) {
	if n < 1 {
		return func() {}
	}
	prev := runtime.GOMAXPROCS(n)
	return func() {
		runtime.SetDefaultGOMAXPROCS()
		if runtime.GOMAXPROCS(0) != prev {
			runtime.GOMAXPROCS(prev)
		}
	}
}

// Raise is Set when n is more than GOMAXPROCS is, and does nothing otherwise: it never
// lowers the setting.
func Raise(n int) (restore func()) {
	if n <= runtime.GOMAXPROCS(0) {
		return func() {}
	}
	return Set(n)
}
