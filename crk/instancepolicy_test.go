package crk

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestInstancePolicies(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		p, err := f.svc.InstancePolicies(f.ctx)
		require.NoError(t, err)
		assert.Equal(t, &InstancePolicies{}, p, "no policy set yet")

		alice := WithInitiator(f.ctx, "alice")
		p, err = f.svc.SetInstancePolicies(alice, InstancePolicyUpdate{
			Rotation:       &RotationSettings{Enabled: true, IntervalMonths: 3},
			DualAuthDelete: &DualAuthSettings{Enabled: true},
			AllowedNetwork: &AllowedNetworkSettings{Enabled: true, Network: NetworkPublicAndPrivate},
			Metrics:        &MetricsSettings{Enabled: true},
		})
		require.NoError(t, err)
		require.NotNil(t, p.Rotation)
		assert.Equal(t, RotationSettings{Enabled: true, IntervalMonths: 3}, p.Rotation.Settings)
		assert.Equal(t, "alice", p.Rotation.CreatedBy)
		assert.True(t, p.Rotation.CreationDate.Equal(t0))
		assert.Nil(t, p.KeyCreateImportAccess)

		// Bad values are refused, naming the field, and change nothing (not even the valid
		// policies of the same update).
		before, err := f.svc.InstancePolicies(f.ctx)
		require.NoError(t, err)
		for _, tc := range []struct {
			name  string
			u     InstancePolicyUpdate
			field string
			is    error
		}{
			{"interval 13", InstancePolicyUpdate{Rotation: &RotationSettings{Enabled: true, IntervalMonths: 13}, Metrics: &MetricsSettings{}}, "interval_month", ErrInvalidPolicy},
			{"interval 0 enabled", InstancePolicyUpdate{Rotation: &RotationSettings{Enabled: true}}, "interval_month", ErrInvalidPolicy},
			{"interval -1 disabled", InstancePolicyUpdate{Rotation: &RotationSettings{IntervalMonths: -1}}, "interval_month", ErrInvalidPolicy},
			{"network", InstancePolicyUpdate{AllowedNetwork: &AllowedNetworkSettings{Enabled: true, Network: "everywhere"}, DualAuthDelete: &DualAuthSettings{}}, "allowed_network", ErrInvalidArgument},
			{"network missing", InstancePolicyUpdate{AllowedNetwork: &AllowedNetworkSettings{Enabled: true}}, "allowed_network", ErrInvalidArgument},
			{"nothing", InstancePolicyUpdate{}, "no instance policy", ErrInvalidArgument},
		} {
			_, err := f.svc.SetInstancePolicies(f.ctx, tc.u)
			assert.ErrorIs(t, err, tc.is, tc.name)
			assert.ErrorContains(t, err, tc.field, tc.name)
		}
		after, err := f.svc.InstancePolicies(f.ctx)
		require.NoError(t, err)
		assert.Equal(t, before, after)

		// Disabling without an interval keeps the interval; the creator stays, the updater
		// changes.
		f.clock.Advance(time.Hour)
		p, err = f.svc.SetInstancePolicies(WithInitiator(f.ctx, "bob"), InstancePolicyUpdate{Rotation: &RotationSettings{}})
		require.NoError(t, err)
		assert.Equal(t, RotationSettings{IntervalMonths: 3}, p.Rotation.Settings)
		assert.Equal(t, "alice", p.Rotation.CreatedBy)
		assert.Equal(t, "bob", p.Rotation.UpdatedBy)
		assert.True(t, p.Rotation.LastUpdated.Equal(t0.Add(time.Hour)))

		evs, err := f.svc.Events(f.ctx, EventFilter{Action: ActionInstancePolicyWrite})
		require.NoError(t, err)
		outcomes := map[string]int{}
		for _, ev := range evs {
			outcomes[ev.Outcome]++
		}
		assert.Equal(t, map[string]int{OutcomeSuccess: 2, OutcomeFailure: 6}, outcomes)
	})
}

func TestCreateImportAccess(t *testing.T) {
	f := newFixture(t, &testStore{kind: "bolt"})
	check := func(typ KeyType, imported, viaToken bool) (err error) {
		require.NoError(t, f.svc.view(f.ctx, func(tx storeTx) error {
			err = checkCreateAccess(tx, typ, imported, viaToken)
			return nil
		}))
		return err
	}
	tokenCheck := func() (err error) {
		require.NoError(t, f.svc.view(f.ctx, func(tx storeTx) error {
			err = checkImportTokenAccess(tx)
			return nil
		}))
		return err
	}
	// No policy, or a disabled one: everything allowed.
	require.NoError(t, check(RootKey, true, false))
	require.NoError(t, tokenCheck())
	_, err := f.svc.SetInstancePolicies(f.ctx, InstancePolicyUpdate{KeyCreateImportAccess: &KeyCreateImportAccessSettings{CreateRootKey: false}})
	require.NoError(t, err)
	require.NoError(t, check(RootKey, false, false))

	type want struct{ createRoot, createStd, importRoot, importRootToken, importStd, token bool }
	for _, tc := range []struct {
		name string
		s    KeyCreateImportAccessSettings
		want want
	}{
		{"defaults", DefaultKeyCreateImportAccess(), want{true, true, true, true, true, true}},
		{"no root create", KeyCreateImportAccessSettings{Enabled: true, CreateStandardKey: true, ImportRootKey: true, ImportStandardKey: true}, want{false, true, true, true, true, true}},
		{"no standard", KeyCreateImportAccessSettings{Enabled: true, CreateRootKey: true, ImportRootKey: true}, want{true, false, true, true, false, true}},
		{"no root import", KeyCreateImportAccessSettings{Enabled: true, CreateRootKey: true, CreateStandardKey: true, ImportStandardKey: true}, want{true, true, false, false, true, false}},
		{"enforce token", KeyCreateImportAccessSettings{Enabled: true, CreateRootKey: true, CreateStandardKey: true, ImportRootKey: true, ImportStandardKey: true, EnforceToken: true}, want{true, true, false, true, false, true}},
		{"nothing", KeyCreateImportAccessSettings{Enabled: true}, want{false, false, false, false, false, false}},
	} {
		s := tc.s
		_, err := f.svc.SetInstancePolicies(f.ctx, InstancePolicyUpdate{KeyCreateImportAccess: &s})
		require.NoError(t, err)
		for _, c := range []struct {
			what string
			ok   bool
			err  error
		}{
			{"create root", tc.want.createRoot, check(RootKey, false, false)},
			{"create standard", tc.want.createStd, check(StandardKey, false, false)},
			{"import root", tc.want.importRoot, check(RootKey, true, false)},
			{"import root via token", tc.want.importRootToken, check(RootKey, true, true)},
			{"import standard", tc.want.importStd, check(StandardKey, true, false)},
			{"import token", tc.want.token, tokenCheck()},
		} {
			if c.ok {
				assert.NoError(t, c.err, "%s: %s", tc.name, c.what)
			} else {
				assert.ErrorIs(t, c.err, ErrCreateImportAccess, "%s: %s", tc.name, c.what)
			}
		}
	}

	// CreateKey and RotateKey enforce it, audited, with nothing stored.
	_, err = f.svc.SetInstancePolicies(f.ctx, InstancePolicyUpdate{KeyCreateImportAccess: &KeyCreateImportAccessSettings{Enabled: true, CreateRootKey: true, ImportRootKey: true, ImportStandardKey: true}})
	require.NoError(t, err)
	imp, err := f.svc.ImportRootKey(f.ctx, "imported", material(32, 1))
	require.NoError(t, err)
	_, err = f.svc.CreateKey(f.ctx, CreateOptions{Name: "std", Type: StandardKey})
	assert.ErrorIs(t, err, ErrCreateImportAccess)
	assert.ErrorContains(t, err, "create_standard_key")
	_, err = f.svc.SetInstancePolicies(f.ctx, InstancePolicyUpdate{KeyCreateImportAccess: &KeyCreateImportAccessSettings{Enabled: true, CreateRootKey: true, ImportRootKey: true, EnforceToken: true}})
	require.NoError(t, err)
	_, err = f.svc.ImportRootKey(f.ctx, "plain import", material(32, 2))
	assert.ErrorIs(t, err, ErrCreateImportAccess)
	_, err = f.svc.RotateKey(f.ctx, imp.ID, material(32, 3))
	assert.ErrorIs(t, err, ErrCreateImportAccess)
	keys, err := f.svc.ListKeys(f.ctx, ListOptions{})
	require.NoError(t, err)
	require.Len(t, keys, 1)
	assert.Equal(t, imp.KeyVersion, keys[0].KeyVersion, "the refused rotation left the key as it was")
	evs, err := f.svc.Events(f.ctx, EventFilter{Action: ActionCreate, Outcome: OutcomeFailure})
	require.NoError(t, err)
	assert.Len(t, evs, 2)
}

func TestDualAuthDelete(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		alice, bob := WithInitiator(f.ctx, "alice"), WithInitiator(f.ctx, "bob")
		before := f.root(t, "before")
		_, err := f.svc.SetInstancePolicies(f.ctx, InstancePolicyUpdate{
			DualAuthDelete: &DualAuthSettings{Enabled: true},
			Rotation:       &RotationSettings{Enabled: true, IntervalMonths: 2},
		})
		require.NoError(t, err)

		// Keys created from now on get both instance policies; imported and standard keys
		// no rotation policy; an override beats the instance default.
		k := f.root(t, "after")
		require.NotNil(t, k.DualAuthDelete)
		assert.True(t, k.DualAuthDelete.Enabled)
		require.NotNil(t, k.RotationPolicy)
		assert.Equal(t, RotationPolicy{Enabled: true, IntervalMonths: 2, CreationDate: t0, LastUpdateDate: t0}, *k.RotationPolicy)
		assert.Nil(t, before.DualAuthDelete)
		imp, err := f.svc.ImportRootKey(f.ctx, "imp", material(32, 1))
		require.NoError(t, err)
		assert.Nil(t, imp.RotationPolicy)
		assert.NotNil(t, imp.DualAuthDelete)
		over, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "override", Policies: &CreatePolicies{
			Rotation: &RotationSettings{Enabled: true, IntervalMonths: 7}, DualAuthDelete: &DualAuthSettings{Enabled: false}}})
		require.NoError(t, err)
		assert.Equal(t, 7, over.RotationPolicy.IntervalMonths)
		assert.Nil(t, over.DualAuthDelete)
		for _, bad := range []struct {
			o  CreateOptions
			is error
		}{
			{CreateOptions{Name: "bad", Policies: &CreatePolicies{Rotation: &RotationSettings{Enabled: true, IntervalMonths: 13}}}, ErrInvalidPolicy},
			{CreateOptions{Name: "bad", Material: material(32, 2), Policies: &CreatePolicies{Rotation: &RotationSettings{Enabled: true, IntervalMonths: 1}}}, ErrPolicyNotAllowed},
			{CreateOptions{Name: "bad", Type: StandardKey, Policies: &CreatePolicies{Rotation: &RotationSettings{Enabled: true, IntervalMonths: 1}}}, ErrNotRootKey},
		} {
			_, err := f.svc.CreateKey(f.ctx, bad.o)
			assert.ErrorIs(t, err, bad.is)
		}
		keys, err := f.svc.ListKeys(f.ctx, ListOptions{})
		require.NoError(t, err)
		assert.Len(t, keys, 4, "refused creations stored nothing")

		// A key without the policy deletes as before, and cannot be set for deletion.
		_, err = f.svc.SetKeyForDeletion(alice, before.ID)
		assert.ErrorIs(t, err, ErrNotDualAuth)
		_, err = f.svc.UnsetKeyForDeletion(alice, before.ID)
		assert.ErrorIs(t, err, ErrNotDualAuth)

		// No authorization: refused. Alice authorizes: she cannot delete, Bob can.
		_, err = f.svc.DeleteKey(alice, k.ID, DeleteOptions{})
		assert.ErrorIs(t, err, ErrDualAuthNotMet)
		got, err := f.svc.SetKeyForDeletion(alice, k.ID)
		require.NoError(t, err)
		assert.Equal(t, DualAuthDelete{Enabled: true, KeySetForDeletion: true, SetForDeletionBy: "alice",
			AuthExpiration: t0.Add(DualAuthWindow), CreatedBy: "crkvol", CreationDate: t0, UpdatedBy: "crkvol", LastUpdateDate: t0}, *got.DualAuthDelete)
		_, err = f.svc.DeleteKey(alice, k.ID, DeleteOptions{})
		assert.ErrorIs(t, err, ErrDualAuthNotMet)
		assert.ErrorContains(t, err, "alice")

		// Unset by anyone cancels; an expired authorization counts for nothing.
		_, err = f.svc.UnsetKeyForDeletion(bob, k.ID)
		require.NoError(t, err)
		_, err = f.svc.DeleteKey(bob, k.ID, DeleteOptions{})
		assert.ErrorIs(t, err, ErrDualAuthNotMet)
		_, err = f.svc.SetKeyForDeletion(alice, k.ID)
		require.NoError(t, err)
		f.clock.Advance(DualAuthWindow)
		meta, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.False(t, meta.DualAuthDelete.KeySetForDeletion)
		_, err = f.svc.DeleteKey(bob, k.ID, DeleteOptions{})
		assert.ErrorIs(t, err, ErrDualAuthNotMet)
		assert.ErrorContains(t, err, "expired")
		meta, err = f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateActive, meta.State)

		_, err = f.svc.SetKeyForDeletion(alice, k.ID)
		require.NoError(t, err)
		f.clock.Advance(DualAuthWindow - time.Second)
		del, err := f.svc.DeleteKey(bob, k.ID, DeleteOptions{})
		require.NoError(t, err)
		assert.Equal(t, StateDestroyed, del.State)
		assert.False(t, del.DualAuthDelete.KeySetForDeletion, "the authorization is used up")

		// Key policies: dual auth can be enabled on a key, never disabled.
		p, err := f.svc.SetKeyPolicies(f.ctx, before.ID, KeyPolicyUpdate{DualAuthDelete: &DualAuthSettings{Enabled: true}, Rotation: &RotationSettings{IntervalMonths: 4}})
		require.NoError(t, err)
		assert.True(t, p.DualAuthDelete.Enabled)
		assert.Equal(t, RotationPolicy{IntervalMonths: 4, CreationDate: f.clock.Now(), LastUpdateDate: f.clock.Now()}, *p.RotationPolicy)
		_, err = f.svc.SetKeyPolicies(f.ctx, before.ID, KeyPolicyUpdate{DualAuthDelete: &DualAuthSettings{Enabled: false}, Rotation: &RotationSettings{Enabled: true}})
		assert.ErrorIs(t, err, ErrInvalidArgument)
		assert.ErrorContains(t, err, "cannot be disabled")
		meta, err = f.svc.GetKeyMetadata(f.ctx, before.ID)
		require.NoError(t, err)
		assert.False(t, meta.RotationPolicy.Enabled, "the refused update changed nothing")
		// Enabling or disabling alone keeps the interval.
		p, err = f.svc.SetRotationPolicy(f.ctx, before.ID, 0, true)
		require.NoError(t, err)
		assert.Equal(t, 4, p.RotationPolicy.IntervalMonths)
		assert.True(t, p.RotationPolicy.Enabled)

		// CopyStore carries the instance policies and the keys' dual authorization.
		dst, err := Open(filepath.Join(t.TempDir(), "copy.db"), Options{Instance: f.svc.Instance(), MasterKey: material(32, 5), Clock: f.clock})
		require.NoError(t, err)
		defer dst.Close()
		_, err = CopyStore(f.ctx, f.svc, dst)
		require.NoError(t, err)
		for _, s := range []*Service{f.svc, dst} {
			ip, err := s.InstancePolicies(f.ctx)
			require.NoError(t, err)
			assert.True(t, ip.DualAuthDelete.Settings.Enabled)
			assert.Equal(t, 2, ip.Rotation.Settings.IntervalMonths)
			km, err := s.GetKeyMetadata(f.ctx, before.ID)
			require.NoError(t, err)
			assert.True(t, km.DualAuthDelete.Enabled)
		}

		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID})
		require.NoError(t, err)
		var actions []string
		for _, ev := range evs {
			if ev.Action == ActionSetKeyForDeletion || ev.Action == ActionUnsetKeyForDeletion || ev.Action == ActionDelete {
				actions = append(actions, ev.Action+":"+ev.Outcome+":"+ev.Initiator)
			}
		}
		assert.Equal(t, []string{
			"kms.secrets.delete:success:bob", "kms.secrets.setkeyfordeletion:success:alice",
			"kms.secrets.delete:failure:bob", "kms.secrets.setkeyfordeletion:success:alice",
			"kms.secrets.delete:failure:bob", "kms.secrets.unsetkeyfordeletion:success:bob",
			"kms.secrets.delete:failure:alice", "kms.secrets.setkeyfordeletion:success:alice",
			"kms.secrets.delete:failure:alice",
		}, actions)
	})
}
