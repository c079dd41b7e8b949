package main

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestGCTarget: the binary's collector target is gcPercent unless GOGC is set, which wins.
func TestGCTarget(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)

	gcTarget(func(string) string { return "" })
	assert.Equal(t, gcPercent, debug.SetGCPercent(100), "GOGC unset: gcPercent")

	gcTarget(func(k string) string {
		if k == "GOGC" {
			return "100"
		}
		return ""
	})
	assert.Equal(t, 100, debug.SetGCPercent(100), "GOGC set: left to the runtime")
}
