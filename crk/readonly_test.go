package crk

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// TestReadOnly: a store opened read-only reads as it is (twice at once), reports due
// rotations without running them, records nothing and refuses changes; a store that does not
// exist is not created, nor its key file.
func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "crk.db")
	clock := NewManualClock(t0)
	svc, err := Open(path, Options{Clock: clock})
	require.NoError(t, err)
	k, err := svc.CreateRootKey(ctx, "ro")
	require.NoError(t, err)
	_, err = svc.SetRotationPolicy(ctx, k.ID, 1, true)
	require.NoError(t, err)
	require.NoError(t, svc.Close())

	clock.Advance(60 * 24 * time.Hour) // the policy is due
	ro1, err := Open(path, Options{Clock: clock, ReadOnly: true})
	require.NoError(t, err)
	defer ro1.Close()
	ro2, err := Open(path, Options{Clock: clock, ReadOnly: true})
	require.NoError(t, err, "readers share the store")
	defer ro2.Close()

	before, err := ro2.ListEvents(ctx, EventFilter{})
	require.NoError(t, err)
	got, err := ro1.GetKeyMetadata(ctx, k.ID)
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, got.KeyVersion.ID)
	work, err := ro1.Due(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{k.ID}, work.Rotations)
	_, err = ro1.RotateKey(ctx, k.ID, nil)
	assert.ErrorIs(t, err, bolt.ErrDatabaseReadOnly)
	err = ro1.Acknowledge(ctx, HostAck{Host: "h", KeyID: k.ID, Type: LifecycleSync, State: "active"})
	assert.ErrorIs(t, err, bolt.ErrDatabaseReadOnly)
	after, err := ro2.ListEvents(ctx, EventFilter{})
	require.NoError(t, err)
	assert.Equal(t, len(before.Events), len(after.Events), "nothing recorded")
	assert.NotEmpty(t, before.Events)

	missing := filepath.Join(dir, "missing.db")
	_, err = Open(missing, Options{ReadOnly: true})
	assert.ErrorIs(t, err, fs.ErrNotExist)
	for _, p := range []string{missing, missing + ".masterkey"} {
		_, err := os.Stat(p)
		assert.ErrorIs(t, err, fs.ErrNotExist, p)
	}
}
