package kms_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/volume/kms"
)

// TestRemoteKeyLifecycle: the remote key lifecycle calls against kpapi: create with a
// description, disable, enable, policy, delete, restore within the window, purge after it, with
// the crk sentinels on the client side and the key in the API's form.
func TestRemoteKeyLifecycle(t *testing.T) {
	_, clock, svc, ks := newKeyService(t, "remote")
	r := ks.(*kms.Remote)
	ctx := t.Context()
	created, err := r.CreateKey(ctx, kms.KeyOptions{Name: "life", Description: "for tests"})
	require.NoError(t, err)
	id := created.ID

	k, err := r.KeyMetadata(ctx, id)
	require.NoError(t, err)
	api := kms.APIKey(k)
	assert.Equal(t, "for tests", api.Description)
	assert.Equal(t, 1, api.State)
	assert.NotEmpty(t, api.CreationDate)

	api, err = r.DisableKey(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, int(crk.StateSuspended), api.State)
	_, err = r.EnableKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrTooEarly)
	clock.Advance(31 * time.Second)
	api, err = r.EnableKey(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, int(crk.StateActive), api.State)

	api, err = r.SetRotationPolicy(ctx, id, 2, true)
	require.NoError(t, err)
	require.NotNil(t, api.Rotation)
	assert.Equal(t, 2, api.Rotation.IntervalMonth)
	assert.True(t, api.Rotation.Enabled)
	_, err = r.SetRotationPolicy(ctx, id, 13, true)
	require.ErrorIs(t, err, crk.ErrInvalidPolicy)

	vs, err := r.Versions(ctx, id)
	require.NoError(t, err)
	require.Len(t, vs, 1)
	require.NotNil(t, vs[0].Destroyed)
	assert.False(t, *vs[0].Destroyed)

	_, err = r.PurgeKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrInvalidState)
	clock.Advance(31 * time.Second)
	api, err = r.DeleteKey(ctx, id, false)
	require.NoError(t, err)
	assert.True(t, api.Deleted)
	assert.Equal(t, int(crk.StateDestroyed), api.State)
	deleted, err := r.ListKeysIn(ctx, int(crk.StateDestroyed))
	require.NoError(t, err)
	require.Len(t, deleted, 1)
	assert.Equal(t, id, deleted[0].ID)
	live, err := r.ListKeysIn(ctx)
	require.NoError(t, err)
	assert.Empty(t, live)

	_, err = r.RestoreKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrTooEarly)
	clock.Advance(31 * time.Second)
	api, err = r.RestoreKey(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, int(crk.StateActive), api.State)
	assert.False(t, api.Deleted)

	clock.Advance(31 * time.Second)
	_, err = r.DeleteKey(ctx, id, false)
	require.NoError(t, err)
	_, err = r.PurgeKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrTooEarly)
	clock.Advance(crk.RestoreWindow)
	_, err = r.RestoreKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrRestoreExpired)
	api, err = r.PurgeKey(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, int(crk.StateDestroyed), api.State)
	// A purged key no longer exists for the API (Key Protect: 404 on its id); crk keeps its
	// record, without material, for the audit trail.
	_, err = r.Versions(ctx, id)
	require.ErrorIs(t, err, crk.ErrKeyNotFound)
	_, err = r.RestoreKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrKeyNotFound)
	_, err = r.PurgeKey(ctx, id)
	require.ErrorIs(t, err, crk.ErrKeyNotFound)
	kept, err := svc.ListVersions(ctx, id)
	require.NoError(t, err)
	assert.True(t, kept[0].Destroyed, "the record stays, its material destroyed")
}
