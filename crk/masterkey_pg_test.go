package crk

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRotateMasterKeySharedDatabase: the master key of an instance whose database holds
// other instances under the same key cannot be rotated (their material would be lost), and
// nothing changes; an instance with a key of its own can be.
func TestRotateMasterKeySharedDatabase(t *testing.T) {
	t.Parallel() // a database of its own
	db := replicaDatabase(t)
	ctx := context.Background()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "master.key")
	a, err := db.Open(Options{MasterKeyFile: keyFile})
	require.NoError(t, err)
	defer a.Close()
	b, err := db.Open(Options{MasterKeyFile: keyFile})
	require.NoError(t, err)
	defer b.Close()
	own, err := db.Open(Options{MasterKeyFile: filepath.Join(dir, "own.key")})
	require.NoError(t, err)
	defer own.Close()
	kb, err := b.CreateRootKey(ctx, "key-b")
	require.NoError(t, err)
	w, err := b.Wrap(ctx, kb.ID, []byte("secret"), nil)
	require.NoError(t, err)

	err = a.RotateMasterKey(ctx, nil)
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), b.Instance())
	pt, err := b.Unwrap(ctx, kb.ID, w.Ciphertext, nil)
	require.NoError(t, err)
	assert.Equal(t, []byte("secret"), pt.Plaintext)
	kb2, err := b.CreateRootKey(ctx, "key-b2")
	require.NoError(t, err, "b's master key is unchanged")
	_, err = b.Wrap(ctx, kb2.ID, []byte("x"), nil)
	require.NoError(t, err)

	require.NoError(t, own.RotateMasterKey(ctx, nil))
}
