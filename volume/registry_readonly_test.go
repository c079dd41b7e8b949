package volume_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	bolt "go.etcd.io/bbolt"

	"crkvol/volume"
)

func TestListRegistry(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "volumes.db")
	if _, err := volume.ListRegistry(path, 50*time.Millisecond); err == nil {
		t.Fatal("a missing registry listed without error")
	}
	reg, err := volume.OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	entries := []volume.Entry{{CRN: "crn:a", Path: "/v/a.img"}, {CRN: "crn:b", Path: "/v/b.img"}}
	for _, e := range entries {
		if err := reg.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	// The open registry holds its lock: a read-only open times out rather than wait.
	if _, err := volume.ListRegistry(path, 50*time.Millisecond); !errors.Is(err, bolt.ErrTimeout) {
		t.Fatalf("listing a registry in use: %v, want a timeout", err)
	}
	reg.Close()
	got, err := volume.ListRegistry(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, entries) {
		t.Errorf("got %v, want %v", got, entries)
	}
}

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
