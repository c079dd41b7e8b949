package kms_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
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
