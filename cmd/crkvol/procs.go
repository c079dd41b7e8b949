package main

import (
	"runtime"

	"crkvol/internal/procs"
	"crkvol/volume"
)

// A rewrap pass runs with more Go processors (GOMAXPROCS) than the CPUs it may use: `key
// rotate`, `key sync`, `key prune`, `kp key rotate`, the agent, the policy rotations a
// command runs when it opens the state, and bench's rewrap section.
//
// A pass keeps dozens of header commits in flight (volume.DefaultWorkers), each blocked in
// fsync most of its time. A goroutine in a system call keeps its processor until the
// runtime's monitor hands it to another, tens of microseconds to milliseconds later, so with
// one processor per CPU the flushes starve the goroutines that have work: on two cores about
// 40% of the CPU sat idle, `crkvol bench --rewrap` rotated 2,400-2,800 volumes/s and its
// ceiling of bare 2-flush commits ran 8,000-8,800 a second (a bare loop of them outside
// crkvol: down to 3,300 in some runs).
// With 8 processors the same machine did 3,400-3,800 volumes/s and 12,000-17,000 commits/s,
// the disk's rate (32 and 64 processors did not raise it), at about the same CPU per volume.
// kms serve gained nothing measurable and keeps the default.

// flushProcsPerCPU bounds the extra processors of a pass: at most this many per CPU the
// process may use.
const flushProcsPerCPU = 3

// flushProcs returns the GOMAXPROCS for a rewrap pass of workers volumes at once (0: the
// default) on a process that may use cpus CPUs: cpus plus one per worker, at most
// flushProcsPerCPU per CPU more — 8 on two CPUs with the default workers. It returns 0 (no
// change) when the environment sets GOMAXPROCS: the user's choice stands, even a value the
// runtime ignores.
func flushProcs(getenv func(string) string, cpus, workers int) int {
	if getenv("GOMAXPROCS") != "" || cpus < 1 {
		return 0
	}
	if workers <= 0 {
		workers = volume.DefaultWorkers
	}
	return cpus + min(workers, flushProcsPerCPU*cpus)
}

// usableCPUs is the number of CPUs the process may use: the runtime's GOMAXPROCS at start,
// which follows a container's CPU limit, and at most runtime.NumCPU.
func usableCPUs() int { return min(runtime.GOMAXPROCS(0), runtime.NumCPU()) }

// testOnlyPassProcs, when set (by a test), is called from every rewrap pass's progress with
// the GOMAXPROCS the pass runs with.
var testOnlyPassProcs func(n int)

// passProcs raises GOMAXPROCS for the rewrap passes of the command (see flushProcs) and
// returns the function that puts it back.
func (a *app) passProcs() (restore func()) {
	return procs.Raise(flushProcs(a.getenv, a.cpus, a.workers))
}
