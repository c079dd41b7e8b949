//go:build !race

package keyslot

// raceEnabled: see race_on_test.go.
const raceEnabled = false
