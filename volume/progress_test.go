package volume_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// TestRewrapProgress: a rewrap pass calls Options.Progress once at its start and once per
// volume, with counts that only grow and end at the report's.
func TestRewrapProgress(t *testing.T) {
	f := newFixture(t)
	var crns []string
	for i := range 5 {
		crns = append(crns, f.create(t, fmt.Sprintf("v%d.img", i), 1<<20).CRN)
	}
	f.mgr.Close()
	k := f.rotate(t)
	var mu sync.Mutex
	var seen []volume.RewrapProgress
	failing := &countingKMS{KeyService: f.ks}
	mgr := volume.NewManager(failing, f.reg, volume.Options{
		Workers: 3, Attempts: 1, Backoff: func(int) time.Duration { return 0 },
		Progress: func(p volume.RewrapProgress) { mu.Lock(); seen = append(seen, p); mu.Unlock() },
	})
	defer mgr.Close()
	// One volume fails (its image is gone); one CRN is another host's (not in this registry):
	// not a volume of this pass.
	gone := f.create(t, "gone.img", 1<<20)
	require.NoError(t, os.Remove(gone.Path))
	crns = append(crns, gone.CRN)
	rep := mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, append(slices.Clone(crns), "crn:v1:not-a-registered-volume"))
	assert.Equal(t, 1, rep.Elsewhere)
	assert.Equal(t, len(crns), rep.Volumes)

	require.Len(t, seen, len(crns)+1)
	start := seen[0]
	start.Elapsed = 0
	assert.Equal(t, volume.RewrapProgress{KeyID: f.key.ID, Volumes: len(crns)}, start, "the start")
	for i := 1; i < len(seen); i++ {
		p, prev := seen[i], seen[i-1]
		assert.Equal(t, i, p.Done, "one more volume each call")
		assert.Equal(t, p.Done, p.Rewrapped+p.AlreadyCurrent+p.Failed)
		assert.GreaterOrEqual(t, p.Rewrapped, prev.Rewrapped)
		assert.GreaterOrEqual(t, p.Failed, prev.Failed)
		assert.GreaterOrEqual(t, p.Elapsed, prev.Elapsed)
		assert.Equal(t, len(crns), p.Volumes)
	}
	last := seen[len(seen)-1]
	assert.Equal(t, rep.Rewrapped, last.Rewrapped)
	assert.Equal(t, len(rep.Failed), last.Failed)
	assert.Equal(t, 5, last.Rewrapped)
	assert.Equal(t, 1, last.Failed)
	assert.True(t, errors.Is(rep.Failed[gone.CRN], fs.ErrNotExist), "%v", rep.Failed)
}

// TestSyncLeavesOtherHostsVolumes: two hosts (registries) share a key; each host's Sync
// rewraps its own volumes and counts the other's as elsewhere, not as failures.
func TestSyncLeavesOtherHostsVolumes(t *testing.T) {
	f := newFixture(t)
	f.mgr.Close()
	regB, err := volume.OpenRegistry(filepath.Join(f.dir, "b.db"))
	require.NoError(t, err)
	defer regB.Close()
	hostB := volume.NewManager(f.ks, regB, volume.Options{Now: f.clock.Now})
	hostB.Close() // no rotation hook: Sync only
	for i := range 3 {
		f.create(t, fmt.Sprintf("a%d.img", i), 1<<20)
		_, err := hostB.Create(f.ctx, filepath.Join(f.dir, fmt.Sprintf("b%d.img", i)), volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20, KeyslotsSize: 512 << 10})
		require.NoError(t, err)
	}
	f.rotate(t)
	// Host a first: b's three stale volumes are elsewhere; then b, with a's current.
	for i, m := range []*volume.Manager{f.mgr, hostB} {
		rep, err := m.Sync(f.ctx, f.key.ID)
		require.NoError(t, err, i)
		assert.Empty(t, rep.Failed, i)
		assert.Equal(t, 3, rep.Rewrapped, i)
		assert.Equal(t, 3, rep.Volumes, i)
		assert.Equal(t, 3-3*i, rep.Elsewhere, i)
	}
}
