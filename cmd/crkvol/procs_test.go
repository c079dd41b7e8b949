package main

import (
	"bytes"
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

// TestPassProcs: the rewrap passes of key rotate and of a policy rotation run when a
// command opens the state run with flushProcs processors, and the command puts the setting
// back. It is not parallel: it watches the process's setting.
func TestPassProcs(t *testing.T) {
	var mu sync.Mutex
	var seen []int
	testOnlyPassProcs = func(n int) { mu.Lock(); seen = append(seen, n); mu.Unlock() }
	defer func() { testOnlyPassProcs = nil }()

	dir := t.TempDir()
	env := map[string]string{"CRKVOL_STATE": filepath.Join(dir, "state"), "HOME": dir, "CRKVOL_NOW": "2027-01-01T00:00:00Z"}
	getenv := func(k string) string { return env[k] }
	crkvol := func(args ...string) {
		t.Helper()
		var out, errOut bytes.Buffer
		require.Zero(t, run(args, strings.NewReader(""), &out, &errOut, getenv), "crkvol %s: %s", strings.Join(args, " "), errOut.String())
	}
	crkvol("key", "create", "fleet")
	crkvol("volume", "create", filepath.Join(dir, "v.img"), "--key", "fleet", "--size", "1MiB")
	before := runtime.GOMAXPROCS(0)
	want := max(before, flushProcs(getenv, usableCPUs(), 0))
	take := func() []int {
		mu.Lock()
		defer mu.Unlock()
		s := seen
		seen = nil
		return s
	}

	crkvol("key", "rotate", "fleet")
	got := take()
	require.NotEmpty(t, got, "key rotate: no pass seen")
	for _, n := range got {
		assert.Equal(t, want, n, "key rotate: GOMAXPROCS during the pass")
	}
	assert.Equal(t, before, runtime.GOMAXPROCS(0), "key rotate: put back")

	// A policy rotation that comes due is run, with its rewrap, by the next command that
	// changes the state.
	crkvol("key", "policy", "fleet", "--rotation-months", "1")
	env["CRKVOL_NOW"] = "2027-03-01T00:00:00Z"
	crkvol("key", "create", "other")
	got = take()
	require.NotEmpty(t, got, "due rotation: no pass seen")
	for _, n := range got {
		assert.Equal(t, want, n, "due rotation: GOMAXPROCS during the pass")
	}
	assert.Equal(t, before, runtime.GOMAXPROCS(0), "due rotation: put back")

	// A command that rewraps nothing leaves the setting alone.
	crkvol("key", "list")
	assert.Empty(t, take())
}
