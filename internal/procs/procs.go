// Package procs raises the Go runtime's processor count (GOMAXPROCS) for a stretch of work
// and puts it back afterwards, to the runtime's default — which follows a container's CPU
// limit — when that is what it found.
package procs

import (
	"runtime"
	"sync"
)

// GOMAXPROCS is the process's, so the stretches of work that raise it are counted here (the
// one piece of package state: it mirrors the runtime's own): the first raises it, the last to
// end puts it back, whatever order concurrent ones end in.
var (
	mu     sync.Mutex
	active int // stretches running
	prev   int // GOMAXPROCS before the first of them
)

// Raise raises GOMAXPROCS to n when n is more than it is, for as long as the work that
// called it runs, and returns the function that ends it (a second call does nothing). It
// never lowers the setting. When the last raise ends, the setting goes back to what the
// first found: through runtime.SetDefaultGOMAXPROCS when that was the runtime's default, so
// that the runtime follows the CPU limit again; a value set on purpose (the environment's
// GOMAXPROCS, a call to runtime.GOMAXPROCS) is put back as it was. (A default that changed
// while raised is not told apart from a value set on purpose: the value found is put back.)
func Raise(n int) (restore func()) {
	mu.Lock()
	defer mu.Unlock()
	cur := runtime.GOMAXPROCS(0)
	if n <= cur && active == 0 {
		return func() {}
	}
	if active == 0 {
		prev = cur
	}
	active++
	if n > cur {
		runtime.GOMAXPROCS(n)
	}
	var once sync.Once
	return func() { once.Do(end) }
}

// end ends one raise: the last puts the setting back.
func end() {
	mu.Lock()
	defer mu.Unlock()
	if active--; active > 0 {
		return
	}
	runtime.SetDefaultGOMAXPROCS()
	if runtime.GOMAXPROCS(0) != prev {
		runtime.GOMAXPROCS(prev)
	}
}
