package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunIO runs the I/O comparison small (no timing claims): every case in both states, the
// page-cache checks, the ratios and the table; nothing is left in the directory.
func TestRunIO(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var steps []string
	r, err := RunIO(context.Background(), IOOptions{Size: 4 << 20, Rounds: 2, Dir: dir, randOps: 256, Progress: func(s string) { steps = append(steps, s) }})
	require.NoError(t, err)
	require.Len(t, r.Results, 8)
	seen := map[string]bool{}
	for _, x := range r.Results {
		seen[x.Name()] = true
		assert.Positive(t, x.VolumeMBps, x.Name())
		assert.Positive(t, x.RawMBps, x.Name())
		assert.InDelta(t, x.VolumeMBps/x.RawMBps, x.Ratio, 1e-9, x.Name())
	}
	for _, n := range []string{"sequential 1 MiB read, clean", "random 4 KiB write, dirty", "random 4 KiB read, dirty", "sequential 1 MiB write, clean"} {
		assert.True(t, seen[n], n)
	}
	assert.Equal(t, 4, r.Results[0].Requests)
	assert.Equal(t, 256, r.Results[1].Requests)
	assert.Equal(t, 4096, r.SectorSize)
	if r.StateVerified {
		// Before each of 16 measurements a round, after each of its 8 writes (and again
		// before one whose file had to be prepared again).
		assert.GreaterOrEqual(t, r.StateChecks, 2*(16+8))
	}
	rs := r.Ratios()
	require.Len(t, rs, 8)
	assert.Equal(t, "io", rs[0].Section)
	assert.Equal(t, "raw file", rs[0].Against)
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	assert.Contains(t, b.String(), "random 4 KiB write")
	assert.Contains(t, b.String(), "volume/raw")
	_, err = json.Marshal(r)
	require.NoError(t, err)
	assert.Len(t, steps, 2*8+1)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left)
}

// TestRunIOBadOptions checks that a size RunIO cannot use is refused before anything is made.
func TestRunIOBadOptions(t *testing.T) {
	t.Parallel()
	for _, o := range []IOOptions{{Size: 1000}, {Size: -1 << 20}, {Rounds: -1}} {
		_, err := RunIO(context.Background(), o)
		assert.Error(t, err, "%+v", o)
	}
}

// TestRunIOCancelled checks that a cancelled run stops with ctx's error and removes its files.
func TestRunIOCancelled(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := RunIO(ctx, IOOptions{Size: 1 << 20, Dir: dir, randOps: 16})
	require.ErrorIs(t, err, context.Canceled)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left)
}

// BenchmarkIOReport runs the full comparison once and prints its table (go test -run x
// -bench IOReport ./bench -benchtime 1x -v): for profiling the volume's I/O path.
func BenchmarkIOReport(b *testing.B) {
	for b.Loop() {
		r, err := RunIO(context.Background(), IOOptions{Quick: os.Getenv("IOQUICK") != "", Dir: os.Getenv("IODIR")})
		if err != nil {
			b.Fatal(err)
		}
		_ = r.WriteTable(os.Stdout)
	}
}
