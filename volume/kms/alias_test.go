package kms_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// TestRemoteResolveKey: the remote key service resolves an alias to the key id through the
// API; a key id is returned as it is (in lower case) without a request; an unknown alias is
// crk.ErrKeyNotFound, and a string that is no alias is refused without a request.
func TestRemoteResolveKey(t *testing.T) {
	_, _, svc, ks := newKeyService(t, "remote")
	r := ks.(*kms.Remote)
	ctx := t.Context()
	k, err := svc.CreateKey(ctx, crk.CreateOptions{Name: "aliased", Aliases: []string{"vol-root"}})
	require.NoError(t, err)

	id, err := r.ResolveKey(ctx, "vol-root")
	require.NoError(t, err)
	assert.Equal(t, k.ID, id)
	id, err = r.ResolveKey(ctx, strings.ToUpper(k.ID))
	require.NoError(t, err)
	assert.Equal(t, k.ID, id)
	meta, err := r.KeyMetadata(ctx, "vol-root")
	require.NoError(t, err)
	assert.Equal(t, []string{"vol-root"}, meta.Aliases)
	assert.Equal(t, "default", meta.KeyRingID)

	_, err = r.ResolveKey(ctx, "no-such-alias")
	assert.ErrorIs(t, err, crk.ErrKeyNotFound)
	before, err := svc.Events(ctx, crk.EventFilter{Action: crk.ActionDefault})
	require.NoError(t, err)
	for _, bad := range []string{"../keys", "a b", "x"} {
		_, err = r.ResolveKey(ctx, bad)
		assert.ErrorIs(t, err, crk.ErrKeyNotFound, bad)
	}
	after, err := svc.Events(ctx, crk.EventFilter{Action: crk.ActionDefault})
	require.NoError(t, err)
	assert.Len(t, after, len(before), "no request was sent for a string that is no alias")
}

// TestRemoteVolumeRecordsKeyID: a volume records its key by id. Given an alias where the id
// belongs, the remote key service refuses to name the key (KeyCRN), so no volume is created
// that would follow the alias to another key; a UUID-shaped alias cannot exist.
func TestRemoteVolumeRecordsKeyID(t *testing.T) {
	dir, _, svc, ks := newKeyService(t, "remote")
	r := ks.(*kms.Remote)
	ctx := t.Context()
	k, err := svc.CreateKey(ctx, crk.CreateOptions{Name: "aliased", Aliases: []string{"vol-root"}})
	require.NoError(t, err)
	_, err = svc.CreateAlias(ctx, k.ID, "6ba7b810-9dad-11d1-80b4-00c04fd430c8")
	require.ErrorIs(t, err, crk.ErrInvalidAlias)

	crn, err := r.KeyCRN(ctx, strings.ToUpper(k.ID))
	require.NoError(t, err)
	assert.Equal(t, k.CRN, crn)
	_, err = r.KeyCRN(ctx, "vol-root")
	require.ErrorIs(t, err, crk.ErrKeyNotFound)
	assert.ErrorContains(t, err, "not a key id")

	reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
	require.NoError(t, err)
	defer reg.Close()
	mgr := volume.NewManager(ks, reg, volume.Options{})
	defer mgr.Close()
	path := filepath.Join(dir, "vol.img")
	_, err = mgr.Create(ctx, path, volume.CreateOptions{KeyID: "vol-root", Size: 1 << 20, KeyslotsSize: 512 << 10})
	require.ErrorIs(t, err, crk.ErrKeyNotFound)
	_, err = os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist)
	regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: k.ID})
	require.NoError(t, err)
	assert.Empty(t, regs)
}
