package main

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestFlushProcs: rewrap passes run with flushProcsPerCPU processors per CPU unless
// GOMAXPROCS is set; raiseProcs never lowers the setting and puts back what it found.
func TestFlushProcs(t *testing.T) {
	unset := func(string) string { return "" }
	want := flushProcsPerCPU * min(runtime.GOMAXPROCS(0), runtime.NumCPU())
	assert.Equal(t, want, flushProcs(unset))
	// Once raised, the setting does not compound: the base never exceeds the CPUs.
	restore := raiseProcs(want)
	assert.LessOrEqual(t, flushProcs(unset), flushProcsPerCPU*runtime.NumCPU())
	restore()
	assert.Zero(t, flushProcs(func(k string) string {
		if k == "GOMAXPROCS" {
			return "1"
		}
		return ""
	}), "GOMAXPROCS set: left to the runtime")

	before := runtime.GOMAXPROCS(0)
	restore = raiseProcs(before + 3)
	assert.Equal(t, before+3, runtime.GOMAXPROCS(0), "raised")
	restore()
	assert.Equal(t, before, runtime.GOMAXPROCS(0), "put back")

	restore = raiseProcs(before - 1)
	assert.Equal(t, before, runtime.GOMAXPROCS(0), "never lowered")
	restore()
	assert.Equal(t, before, runtime.GOMAXPROCS(0))
	restore = raiseProcs(0)
	restore()
	assert.Equal(t, before, runtime.GOMAXPROCS(0), "0: unchanged")
}
