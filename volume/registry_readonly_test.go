package volume_test

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

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
