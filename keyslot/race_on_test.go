//go:build race

package keyslot

// raceEnabled: the race detector's sync.Pool drops pooled items at random, so allocation
// counts of code that pools mean nothing under it.
const raceEnabled = true
