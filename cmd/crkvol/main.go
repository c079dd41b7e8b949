// Command crkvol creates, attaches and rotates encrypted volume images whose LUKS passphrase
// is wrapped by a customer root key. Run `crkvol demo` for a tour and `crkvol help` for the
// commands.
package main

import (
	"os"
	"runtime/debug"
)

// gcPercent is the garbage collector's target the crkvol binary runs with unless GOGC is set
// (see gcTarget).
const gcPercent = 400

func main() {
	gcTarget(os.Getenv)
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// gcTarget sets the garbage collector's target to gcPercent unless the environment sets GOGC.
// crkvol's commands keep a small live heap (about a megabyte for kms serve, a few for a
// rotation of thousands of volumes) and allocate per request and per volume, so that with
// Go's default (GOGC=100, a 4 MiB minimum heap) a busy kms serve or rotation collects every
// few milliseconds: a third of kms serve's CPU with 32 callers. At 400 a collection comes
// five times less often, for a heap of at most five times the live data (tens of MiB).
func gcTarget(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}
