//go:build !race

package volume

// raceDetector: see race_internal_on_test.go.
const raceDetector = false
