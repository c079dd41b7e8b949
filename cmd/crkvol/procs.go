package main

import "runtime"

// flushProcsPerCPU is how many Go processors (GOMAXPROCS) per CPU crkvol runs its rewrap
// passes with: `key rotate`, `key sync`, the agent, and bench's rewrap section.
//
// A rewrap pass keeps dozens of header commits in flight (volume.DefaultWorkers), each
// blocked in fsync most of its time. A goroutine in a system call keeps its processor until
// the runtime's monitor hands it to another, tens of microseconds to milliseconds later, so
// with one processor per CPU the flushes starve the goroutines that have work: on two
// cores the CPU sat half idle, a rotation ran 2,400-2,600 volumes/s and a loop of bare
// 2-flush commits about 8,000 commits/s. With four processors per CPU the same machine did
// 3,000-3,600 volumes/s and 11,000-14,000 commits/s (the disk's rate; more processors did
// not raise it), with no more CPU per volume. The key service (kms serve) gained nothing
// measurable and keeps the default.
const flushProcsPerCPU = 4

// flushProcs returns the GOMAXPROCS for flush-bound work, flushProcsPerCPU per CPU the
// process may use, or 0 when the environment sets GOMAXPROCS: the user's choice stands. The
// CPUs it may use are the runtime's default GOMAXPROCS, which follows a container's CPU
// limit, and never more than runtime.NumCPU (so that a raised setting is not raised again).
func flushProcs(getenv func(string) string) int {
	if getenv("GOMAXPROCS") != "" {
		return 0
	}
	return flushProcsPerCPU * min(runtime.GOMAXPROCS(0), runtime.NumCPU())
}

// raiseProcs raises GOMAXPROCS to n when n is more than it is, and returns the function
// that puts the previous value back.
func raiseProcs(n int) (restore func()) {
	prev := runtime.GOMAXPROCS(0)
	if n <= prev {
		return func() {}
	}
	runtime.GOMAXPROCS(n)
	return func() { runtime.GOMAXPROCS(prev) }
}
