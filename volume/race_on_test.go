//go:build race

package volume_test

// raceEnabled: the race detector's sync.Pool drops pooled items at random, so allocation
// counts mean nothing under it.
const raceEnabled = true
