package crk

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSamePrincipal(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"kpapi:k1", "kpapi:k1", true},
		{"kpapi:k1", "console:k1", true},
		{"console:k1", "kpapi:k1", true},
		{"kpapi:k1", "console:k2", false},
		{"kpapi:k1", "kpapi:k2", false},
		{"cli:alice", "cli:alice", true},
		{"cli:alice", "cli:bob", false},
		{"cli:alice", PrincipalLocal, true},
		{PrincipalLocal, "cli:bob", true},
		{PrincipalLocal, PrincipalLocal, true},
		{PrincipalLocal, "kpapi:k1", false},
		{"cli:k1", "kpapi:k1", false},
		{"apikey:k1", "kpapi:k1", true},
		{"alice", "bob", false},
	} {
		assert.Equal(t, c.same, SamePrincipal(c.a, c.b), "%q %q", c.a, c.b)
	}
}

// One API key is one principal over the API and the console; the unnamed local CLI
// initiator is never the second principal against a named local user.
func TestDualAuthOnePrincipalManyRoutes(t *testing.T) {
	f := newFixture(t, &testStore{kind: "bolt"})
	_, err := f.svc.SetInstancePolicies(f.ctx, InstancePolicyUpdate{DualAuthDelete: &DualAuthSettings{Enabled: true}})
	require.NoError(t, err)
	for _, c := range []struct{ set, del, other string }{
		{"kpapi:k1", "console:k1", "console:k2"},
		{"console:k1", "kpapi:k1", "kpapi:k2"},
		{"cli:alice", PrincipalLocal, "cli:bob"},
		{PrincipalLocal, "cli:alice", "kpapi:k1"},
	} {
		k := f.root(t, "dual")
		_, err := f.svc.SetKeyForDeletion(WithInitiator(f.ctx, c.set), k.ID)
		require.NoError(t, err)
		_, err = f.svc.DeleteKey(WithInitiator(f.ctx, c.del), k.ID, DeleteOptions{})
		require.ErrorIs(t, err, ErrDualAuthNotMet, "set by %s, deleted by %s", c.set, c.del)
		meta, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		require.Equal(t, StateActive, meta.State)
		require.True(t, meta.DualAuthDelete.KeySetForDeletion, "the refusal kept the authorization")
		_, err = f.svc.DeleteKey(WithInitiator(f.ctx, c.other), k.ID, DeleteOptions{})
		require.NoError(t, err, "set by %s, deleted by %s", c.set, c.other)
	}
}

// A UUID-shaped reference is a key id in any case, never an alias: not even an alias document
// of that name (stored before CheckAlias refused such names) is followed.
func TestResolveKeyIDShape(t *testing.T) {
	f := newFixture(t, &testStore{kind: "bolt"})
	k := f.root(t, "shaped")
	id, err := f.svc.ResolveKey(f.ctx, strings.ToUpper(k.ID))
	require.NoError(t, err)
	assert.Equal(t, k.ID, id)
	legacy := "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	require.NoError(t, f.svc.update(f.ctx, func(tx storeTx) error {
		raw, err := json.Marshal(aliasRecord{KeyID: k.ID})
		if err != nil {
			return err
		}
		return tx.insertDoc(docAlias, legacy, raw)
	}))
	_, err = f.svc.ResolveKey(f.ctx, legacy)
	assert.ErrorIs(t, err, ErrKeyNotFound)
}
