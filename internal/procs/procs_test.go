package procs

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestSetAndRaise: Set changes GOMAXPROCS and its restore puts back the value it found;
// Raise never lowers it; counts below 1 change nothing.
func TestSetAndRaise(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		name string
		fn   func(int) func()
		n    int
		want int
	}{
		{"set higher", Set, before + 3, before + 3},
		{"set lower", Set, max(before-1, 1), max(before-1, 1)},
		{"set 0", Set, 0, before},
		{"set -1", Set, -1, before},
		{"raise higher", Raise, before + 2, before + 2},
		{"raise lower", Raise, max(before-1, 1), before},
		{"raise same", Raise, before, before},
		{"raise 0", Raise, 0, before},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restore := tc.fn(tc.n)
			assert.Equal(t, tc.want, runtime.GOMAXPROCS(0), "while set")
			restore()
			assert.Equal(t, before, runtime.GOMAXPROCS(0), "put back")
		})
	}
}

// TestSetPutsBackAnExplicitValue: a value set on purpose, not the runtime's default, is put
// back as it was (not replaced by the default).
func TestSetPutsBackAnExplicitValue(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	explicit := runtime.NumCPU() + 5 // above any default: more than the CPUs
	runtime.GOMAXPROCS(explicit)
	restore := Set(explicit + 2)
	restore()
	assert.Equal(t, explicit, runtime.GOMAXPROCS(0))
}
