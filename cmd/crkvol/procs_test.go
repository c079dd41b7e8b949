package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// TestFlushProcs: a pass gets one processor per worker beyond the CPUs, at most
// flushProcsPerCPU per CPU more, unless GOMAXPROCS is set.
func TestFlushProcs(t *testing.T) {
	unset := func(string) string { return "" }
	set := func(k string) string {
		if k == "GOMAXPROCS" {
			return "0" // set, even to a value the runtime ignores: the user's choice
		}
		return ""
	}
	for _, tc := range []struct {
		name          string
		getenv        func(string) string
		cpus, workers int
		want          int
	}{
		{"two CPUs, default workers", unset, 2, 0, 2 + 6},
		{"two CPUs, one worker", unset, 2, 1, 3},
		{"two CPUs, 4 workers", unset, 2, 4, 6},
		{"one CPU", unset, 1, 0, 4},
		{"64 CPUs, default workers", unset, 64, 0, 64 + volume.DefaultWorkers},
		{"GOMAXPROCS set", set, 2, 0, 0},
		{"no CPU count", unset, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, flushProcs(tc.getenv, tc.cpus, tc.workers))
		})
	}
	assert.LessOrEqual(t, usableCPUs(), runtime.NumCPU())
	assert.Positive(t, usableCPUs())
}

// TestPassProcs: the rewrap passes of key rotate, key sync, key prune and of a policy
// rotation run when a command opens the state run with flushProcs processors, and every
// command puts the setting back. It is not parallel: it watches the process's setting.
func TestPassProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	var mu sync.Mutex
	var seen []int
	testOnlyPassProcs = func(n int) { mu.Lock(); seen = append(seen, n); mu.Unlock() }
	defer func() { testOnlyPassProcs = nil }()
	take := func() []int {
		mu.Lock()
		defer mu.Unlock()
		s := seen
		seen = nil
		return s
	}

	dir := t.TempDir()
	env := map[string]string{"CRKVOL_STATE": filepath.Join(dir, "state"), "HOME": dir, "CRKVOL_NOW": "2027-01-01T00:00:00Z"}
	getenv := func(k string) string { return env[k] }
	crkvol := func(args ...string) {
		t.Helper()
		var out, errOut bytes.Buffer
		require.Zero(t, run(args, strings.NewReader(""), &out, &errOut, getenv), "crkvol %s: %s", strings.Join(args, " "), errOut.String())
		assert.Equal(t, before, runtime.GOMAXPROCS(0), "crkvol %s: GOMAXPROCS put back", strings.Join(args, " "))
	}
	img, old := filepath.Join(dir, "v.img"), filepath.Join(dir, "v.old")
	// stale puts back the image as it was before the rotation: its token lags its
	// registration, which key sync (and key prune, first) rewrap.
	stale := func() {
		t.Helper()
		b, err := os.ReadFile(old)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(img, b, 0o600))
	}
	crkvol("key", "create", "fleet")
	crkvol("volume", "create", img, "--key", "fleet", "--size", "1MiB")
	b, err := os.ReadFile(img)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(old, b, 0o600))
	assert.Empty(t, take(), "no pass yet")
	want := max(before, flushProcs(getenv, usableCPUs(), 0))

	for _, step := range []struct {
		name  string
		setup func()
		args  []string
	}{
		{"key rotate", func() {}, []string{"key", "rotate", "fleet"}},
		{"key sync", stale, []string{"key", "sync", "fleet"}},
		{"key prune", stale, []string{"key", "prune", "fleet"}},
		// A policy rotation that comes due is run, with its rewrap, by the next command
		// that changes the state.
		{"due rotation", func() {
			crkvol("key", "policy", "fleet", "--rotation-months", "1")
			env["CRKVOL_NOW"] = "2027-03-01T00:00:00Z"
		}, []string{"key", "create", "other"}},
	} {
		step.setup()
		take()
		crkvol(step.args...)
		got := take()
		require.NotEmpty(t, got, "%s: no pass seen", step.name)
		for _, n := range got {
			assert.Equal(t, want, n, "%s: GOMAXPROCS during the pass", step.name)
		}
	}

	// A command that rewraps nothing leaves the setting alone.
	crkvol("key", "list")
	assert.Empty(t, take())
}
