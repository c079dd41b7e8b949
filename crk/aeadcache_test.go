package crk

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAEADCache: wraps and unwraps reuse a version's AES-GCM (one entry per version used);
// pruning a key's versions, deleting the key, rotating the master key and closing the
// service drop the entries, and everything still wraps and unwraps (or is refused) as before.
func TestAEADCache(t *testing.T) {
	ctx := context.Background()
	clock := NewManualClock(t0)
	svc, err := Open(filepath.Join(t.TempDir(), "crk.db"), Options{MasterKey: material(32, 1), Clock: clock})
	require.NoError(t, err)
	defer svc.Close()
	entries := func() int { svc.aeads.mu.Lock(); defer svc.aeads.mu.Unlock(); return len(svc.aeads.m) }

	k, err := svc.CreateRootKey(ctx, "key1")
	require.NoError(t, err)
	w1, err := svc.Wrap(ctx, k.ID, material(32, 2), nil)
	require.NoError(t, err)
	_, err = svc.Unwrap(ctx, k.ID, w1.Ciphertext, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, entries(), "one version used")

	clock.Advance(time.Hour)
	_, err = svc.RotateKey(ctx, k.ID, nil)
	require.NoError(t, err)
	u, err := svc.Unwrap(ctx, k.ID, w1.Ciphertext, nil)
	require.NoError(t, err)
	assert.Equal(t, material(32, 2), u.Plaintext)
	assert.NotNil(t, u.Rewrapped)
	assert.Equal(t, 2, entries(), "the old version and the latest")

	require.NoError(t, svc.RotateMasterKey(ctx, material(32, 9)))
	assert.Zero(t, entries(), "a master key rotation drops them")
	u, err = svc.Unwrap(ctx, k.ID, w1.Ciphertext, nil)
	require.NoError(t, err)
	assert.Equal(t, material(32, 2), u.Plaintext)

	_, err = svc.Prune(ctx, k.ID)
	require.NoError(t, err)
	assert.Zero(t, entries(), "pruning drops the key's versions")
	_, err = svc.Unwrap(ctx, k.ID, w1.Ciphertext, nil)
	assert.ErrorIs(t, err, ErrVersionDestroyed, "a pruned version is refused, not served from memory")

	_, err = svc.Wrap(ctx, k.ID, material(32, 3), nil)
	require.NoError(t, err)
	assert.Equal(t, 1, entries())
	_, err = svc.DeleteKey(ctx, k.ID, DeleteOptions{})
	require.NoError(t, err)
	assert.Zero(t, entries(), "deleting the key drops its versions")

	k2, err := svc.CreateRootKey(ctx, "key2")
	require.NoError(t, err)
	_, err = svc.Wrap(ctx, k2.ID, material(32, 4), nil)
	require.NoError(t, err)
	require.NoError(t, svc.Close())
	assert.Zero(t, entries(), "closing drops them")
}

// TestAEADCacheBound: the cache keeps at most aeadCacheSize versions, and serves an entry
// only for the sealed material it was made from.
func TestAEADCacheBound(t *testing.T) {
	block, err := aes.NewCipher(material(32, 1))
	require.NoError(t, err)
	a, err := cipher.NewGCM(block)
	require.NoError(t, err)
	var c aeadCache
	for i := range aeadCacheSize + 5 {
		c.put("k", fmt.Sprint(i), []byte{byte(i)}, a)
	}
	assert.Len(t, c.m, aeadCacheSize)
	c.put("k", "v", []byte("sealed"), a)
	assert.NotNil(t, c.get("k", "v", []byte("sealed")))
	assert.Nil(t, c.get("k", "v", []byte("sealed again")), "other sealed bytes are another material")
}
