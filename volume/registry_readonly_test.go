package volume_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"crkvol/volume"
)

// TestRegistryReadOnly: a registry opened read-only reads its entries and refuses changes;
// one that does not exist reads as empty and is not created.
func TestRegistryReadOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "volumes.db")
	missing, err := volume.OpenRegistryReadOnly(path)
	require.NoError(t, err)
	_, err = missing.Get("crn:x")
	assert.ErrorIs(t, err, volume.ErrNotRegistered)
	list, err := missing.List()
	require.NoError(t, err)
	assert.Empty(t, list)
	assert.ErrorIs(t, missing.Put(volume.Entry{CRN: "crn:x"}), bolt.ErrDatabaseReadOnly)
	require.NoError(t, missing.Close())
	_, err = os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist, "not created")

	rw, err := volume.OpenRegistry(path)
	require.NoError(t, err)
	require.NoError(t, rw.Put(volume.Entry{CRN: "crn:x", Path: "/x.img"}))
	require.NoError(t, rw.Close())
	ro, err := volume.OpenRegistryReadOnly(path)
	require.NoError(t, err)
	defer ro.Close()
	e, err := ro.Get("crn:x")
	require.NoError(t, err)
	assert.Equal(t, "/x.img", e.Path)
	assert.ErrorIs(t, ro.Put(volume.Entry{CRN: "crn:y"}), bolt.ErrDatabaseReadOnly)
	assert.ErrorIs(t, ro.Delete("crn:x"), bolt.ErrDatabaseReadOnly)
}
