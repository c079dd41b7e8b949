package volume_test

import (
	"errors"
	"fmt"
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
	crns = append(crns, "crn:v1:not-a-registered-volume")
	rep := mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, crns)

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
	assert.True(t, errors.Is(rep.Failed["crn:v1:not-a-registered-volume"], volume.ErrNotRegistered))
}
