//go:build !race

package volume_test

// raceEnabled: see race_on_test.go.
const raceEnabled = false
