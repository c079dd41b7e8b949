//go:build race

package volume

// raceDetector: the race detector's instrumentation changes what escapes, so allocation counts
// mean nothing under it.
const raceDetector = true
