package procs

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestRaise: Raise raises GOMAXPROCS and its restore puts back the value it found; it never
// lowers it; counts below 1 change nothing; a second restore does nothing.
func TestRaise(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		name string
		n    int
		want int
	}{
		{"higher", before + 2, before + 2},
		{"lower", max(before-1, 1), before},
		{"same", before, before},
		{"0", 0, before},
		{"-1", -1, before},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restore := Raise(tc.n)
			assert.Equal(t, tc.want, runtime.GOMAXPROCS(0), "while raised")
			restore()
			assert.Equal(t, before, runtime.GOMAXPROCS(0), "put back")
			restore()
			assert.Equal(t, before, runtime.GOMAXPROCS(0), "a second restore does nothing")
		})
	}
}

// TestRaiseNested: overlapping raises end in any order; the setting stays raised until the
// last ends, then is put back.
func TestRaiseNested(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	a := Raise(before + 2)
	b := Raise(before + 4)
	c := Raise(before + 1) // lower than the current: counted, changes nothing
	assert.Equal(t, before+4, runtime.GOMAXPROCS(0))
	b()
	c()
	assert.Equal(t, before+4, runtime.GOMAXPROCS(0), "a is still running")
	a()
	assert.Equal(t, before, runtime.GOMAXPROCS(0))

	// Concurrent raises: whatever the interleaving, the setting ends where it started.
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() { Raise(before + 1 + i%3)() })
	}
	wg.Wait()
	assert.Equal(t, before, runtime.GOMAXPROCS(0))
}

// TestRaisePutsBackAnExplicitValue: a value set on purpose, not the runtime's default, is put
// back as it was, not replaced by the default.
func TestRaisePutsBackAnExplicitValue(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	explicit := runtime.NumCPU() + 5 // above any default: more than the CPUs
	runtime.GOMAXPROCS(explicit)
	Raise(explicit + 2)()
	assert.Equal(t, explicit, runtime.GOMAXPROCS(0))
}
