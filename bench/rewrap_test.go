package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunRewrap runs the rewrap section on a small fleet and checks what it reports: no
// timing, only its shape and its counts (two header flushes a rewrapped volume in every case,
// the ceiling's commit recorded from a real token commit, flushes per volume the sum of its
// parts), and that it leaves nothing behind in Dir.
func TestRunRewrap(t *testing.T) {
	dir := t.TempDir()
	var steps []string
	procs := runtime.GOMAXPROCS(0)
	r, err := RunRewrap(context.Background(), RewrapOptions{Quick: true, Dir: dir, Volumes: 12, Concurrency: 4,
		Procs: procs + 2, Progress: func(s string) { steps = append(steps, s) }})
	require.NoError(t, err)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left, "RunRewrap leaves nothing in Dir")
	assert.NotEmpty(t, steps)

	assert.Equal(t, 12, r.Volumes)
	assert.Equal(t, 4, r.Concurrency)
	assert.Equal(t, procs+2, r.Procs, "the section ran with Procs processors")
	assert.Equal(t, procs, runtime.GOMAXPROCS(0), "and put the setting back")
	assert.Equal(t, 1, r.Rounds)
	assert.NotEmpty(t, r.FileSystem)
	assert.Greater(t, r.VolumeFileSize, int64(FleetVolumeSize))
	// A LUKS2 commit: both header copies written (binary header and JSON area each), a flush
	// after each copy.
	assert.Equal(t, 2, r.Commit.Flushes)
	assert.GreaterOrEqual(t, r.Commit.Bytes, int64(2*r.MetadataSize))
	assert.GreaterOrEqual(t, r.Commit.Writes, 2)

	for key, c := range map[string]RewrapResult{"ceiling": r.Ceiling, "local": r.Local, "remote": r.Remote} {
		assert.Equal(t, 12, c.Rewrapped, c.Name)
		assert.Positive(t, c.PerSecond, c.Name)
		assert.Equal(t, int64(24), c.HeaderFlushes, "%s: two header flushes a volume", c.Name)
		assert.Equal(t, r.Commit.Bytes, c.HeaderBytes, "%s: the ceiling's commit writes what a rewrap does", c.Name)
		assert.Equal(t, c.HeaderFlushes+c.StoreFlushes+c.RegistryFlushes, c.Flushes, c.Name)
		assert.InDelta(t, float64(c.Flushes)/12, c.FlushesPerVolume, 1e-9, c.Name)
		assert.LessOrEqual(t, c.P50Ms, c.P99Ms, c.Name)
		assert.Positive(t, c.CPUMicrosPerVolume, c.Name)
		assert.Equal(t, []float64{c.PerSecond}, r.Each[key], c.Name)
	}
	// The rotations go through the key service and the registry; the ceiling does not.
	assert.Zero(t, r.Ceiling.StoreFlushes+r.Ceiling.RegistryFlushes)
	for _, c := range []RewrapResult{r.Local, r.Remote} {
		assert.Positive(t, c.StoreFlushes, c.Name)
		assert.Positive(t, c.RegistryFlushes, c.Name)
		assert.Positive(t, c.KMSCalls, c.Name)
	}

	ratios := r.Ratios()
	require.Len(t, ratios, 2)
	assert.Equal(t, "rewrap", ratios[0].Section)
	assert.Equal(t, 0.6, ratios[0].Target)
	assert.InDelta(t, r.Local.PerSecond/r.Ceiling.PerSecond, ratios[0].Value, 1e-9)
	assert.InDelta(t, r.Remote.PerSecond/r.Ceiling.PerSecond, ratios[1].Value, 1e-9)

	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	for _, want := range []string{"12 volumes", "ceiling", "local", "remote", "flushes/volume", "cpu µs/volume", "target 0.60x"} {
		assert.Contains(t, table.String(), want)
	}
	raw, err := json.Marshal(r)
	require.NoError(t, err)
	for _, want := range []string{`"ceiling":`, `"local":`, `"remote":`, `"flushesPerVolume":`, `"perSecond":`, `"p99Ms":`} {
		assert.Contains(t, string(raw), want)
	}
}

// TestRunRewrapCancelled: a cancelled context stops the run with its error, and Dir is left
// empty.
func TestRunRewrapCancelled(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	_, err := RunRewrap(ctx, RewrapOptions{Quick: true, Dir: dir, Volumes: 8, Concurrency: 2,
		Progress: func(s string) {
			if strings.Contains(s, "ceiling files") {
				cancel()
			}
		}})
	require.ErrorIs(t, err, context.Canceled)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left)
}
