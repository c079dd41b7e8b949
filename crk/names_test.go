package crk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	bolt "go.etcd.io/bbolt"
)

func TestListKeyNames(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "crk.db")
	if _, err := ListKeyNames(path, 50*time.Millisecond); err == nil {
		t.Fatal("a missing store listed without error")
	}
	svc, err := Open(path, Options{MasterKey: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := svc.CreateKey(ctx, CreateOptions{Name: "alpha", Type: RootKey})
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.CreateKey(ctx, CreateOptions{Name: "beta", Type: RootKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.DeleteKey(ctx, b.ID, DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The service holds the store's lock: a read-only open times out rather than wait.
	if _, err := ListKeyNames(path, 50*time.Millisecond); !errors.Is(err, bolt.ErrTimeout) {
		t.Fatalf("listing a store in use: %v, want a timeout", err)
	}
	svc.Close()

	got, err := ListKeyNames(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]KeyName{a.ID: {ID: a.ID, Name: "alpha"}, b.ID: {ID: b.ID, Name: "beta", Deleted: true}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, k := range got {
		if want[k.ID] != k {
			t.Errorf("got %+v, want %+v", k, want[k.ID])
		}
	}
}

// TestReadKeyState: another process reads a key's state and latest version without the
// master key (the key file moved away here) and without holding the store.
func TestReadKeyState(t *testing.T) {
	f := newFixture(t, &testStore{kind: "bolt"})
	k := f.root(t, "state-key")
	rotated, err := f.svc.RotateKey(f.ctx, k.ID, nil)
	require.NoError(t, err)
	_, err = f.svc.DisableKey(f.ctx, k.ID)
	require.NoError(t, err)
	require.NoError(t, f.svc.Close())
	require.NoError(t, os.Rename(f.path+".masterkey", f.path+".moved"))

	st, err := ReadKeyState(f.path, k.ID, f.clock.Now(), time.Second)
	require.NoError(t, err)
	assert.Equal(t, KeyState{State: StateSuspended, LatestVersion: rotated.KeyVersion.ID}, st)
	_, err = ReadKeyState(f.path, "00000000-0000-4000-8000-000000000000", f.clock.Now(), time.Second)
	assert.ErrorIs(t, err, ErrKeyNotFound)
	_, err = ReadKeyState(f.path+".missing", k.ID, f.clock.Now(), time.Second)
	assert.Error(t, err)
}
