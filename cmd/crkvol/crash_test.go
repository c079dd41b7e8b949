package main

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/sim"
)

// TestCrashTest kills `crkvol key rotate` with SIGKILL at random moments and checks that
// `crkvol key sync` repairs every volume (sim.CrashTest). CI (CRKVOL_LONG_TESTS=1) runs 12
// trials over 100 volumes, a plain `go test` 4 over 50; CRKVOL_CRASH_TRIALS and
// CRKVOL_CRASH_VOLUMES set more (the full run is 50 over 500: crkvol sim crash).
func TestCrashTest(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("the crash trials (SIGKILL at random moments) run with CRKVOL_LONG_TESTS=1 (CI); sim's TestCrashPointsLeaveRecoverableState covers every crash point in every run")
	}
	t.Parallel()
	bin, err := exec.LookPath("crkvol")
	require.NoError(t, err, "testscript puts crkvol in PATH")
	trials, volumes := 12, 100
	if n, err := strconv.Atoi(os.Getenv("CRKVOL_CRASH_TRIALS")); err == nil {
		trials = n
	}
	if n, err := strconv.Atoi(os.Getenv("CRKVOL_CRASH_VOLUMES")); err == nil {
		volumes = n
	}
	// With images in the catalog, whose WDEKs the rotations rewrap with the volumes.
	const images = 20
	rep, err := sim.CrashTest(context.Background(), sim.CrashOptions{Binary: bin, Dir: t.TempDir(), Volumes: volumes, Images: images, Trials: trials, Seed: 1, Log: t.Logf})
	require.NoError(t, err)
	assert.Empty(t, rep.Failures)
	assert.Equal(t, images, rep.Images)
	assert.Equal(t, trials, rep.Killed+rep.Finished)
	assert.GreaterOrEqual(t, rep.MidRewrap, trials/4, "kills landed inside the rewrap pass, leaving some volumes rewrapped and some not")
	assert.Positive(t, rep.Repaired, "key sync had volumes to repair")
	require.Len(t, rep.Results, trials)
	for i, r := range rep.Results {
		assert.Equal(t, volumes, r.NewHeaders+r.OldHeaders, "trial %d: every header holds the old or the new wrapping", i+1)
		assert.Equal(t, images, r.NewImages+r.OldImages, "trial %d: every WDEK holds the old or the new wrapping", i+1)
	}
}

// TestInterruptedRotation sends `crkvol key rotate` SIGINT (and, in CI, SIGTERM) at random moments:
// a rotation still running stops at a clean point, exits 130 or 143 with one line "crkvol:
// interrupted: ...", and `crkvol key sync` brings every volume to the latest version
// (sim.CrashTest with Signal).
func TestInterruptedRotation(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("the interrupted-rotation trials run with CRKVOL_LONG_TESTS=1 (CI); TestInterruptedWipeResumes covers the interrupt path in every run")
	}
	t.Parallel()
	bin, err := exec.LookPath("crkvol")
	require.NoError(t, err, "testscript puts crkvol in PATH")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		trials := 6
		// Waves of 4 volumes: a signal stops a pass between waves, so the trials need passes of
		// many waves (one wave of the default 64 would always finish first).
		rep, err := sim.CrashTest(context.Background(), sim.CrashOptions{Binary: bin, Dir: t.TempDir(), Volumes: 50, Trials: trials, Seed: 2, Signal: sig, Workers: 4, Log: t.Logf})
		require.NoError(t, err, "signal %v", sig)
		assert.Empty(t, rep.Failures, "signal %v", sig)
		assert.Equal(t, trials, rep.Killed+rep.Finished)
		// Three trials in four signal once a third to two thirds of the headers are rewritten,
		// with waves still to start.
		assert.GreaterOrEqual(t, rep.Interrupted, trials/2, "signal %v: rotations stopped at a clean point and said so", sig)
	}
}
