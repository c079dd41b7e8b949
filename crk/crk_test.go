package crk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 1, 31, 10, 0, 0, 0, time.UTC)

type fixture struct {
	st    *testStore
	svc   *Service
	clock *ManualClock
	path  string
	ctx   context.Context
}

func newFixture(t *testing.T, st *testStore) *fixture {
	t.Helper()
	clock := NewManualClock(t0)
	path := filepath.Join(t.TempDir(), "crk.db")
	svc, err := st.open(path, Options{Clock: clock})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	return &fixture{st: st, svc: svc, clock: clock, path: path, ctx: context.Background()}
}

func (f *fixture) root(t *testing.T, name string) *Key {
	t.Helper()
	k, err := f.svc.CreateRootKey(f.ctx, name)
	require.NoError(t, err)
	return k
}

func material(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestCreateKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "volumes")
		assert.Equal(t, RootKey, k.Type)
		assert.Equal(t, StateActive, k.State)
		assert.False(t, k.Imported)
		assert.False(t, k.Extractable)
		assert.Equal(t, t0, k.CreationDate)
		assert.True(t, k.LastRotateDate.IsZero())
		assert.NotEmpty(t, k.KeyVersion.ID)
		assert.Equal(t, "crn:v1:local:public:kms:local:a/crkvol:"+f.svc.Instance()+":key:"+k.ID, k.CRN)
		got, err := f.svc.GetKey(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Nil(t, got.Payload, "root keys are never extractable")

		for _, n := range []int{16, 24, 32} {
			k, err := f.svc.ImportRootKey(f.ctx, "imported", material(n, 1))
			require.NoError(t, err, "%d bytes", n)
			assert.True(t, k.Imported)
		}
		for _, bad := range [][]byte{{}, material(8, 1), material(31, 1), material(33, 1), material(64, 1), make([]byte, 32), bytes.Repeat([]byte{1, 2}, 16)} {
			_, err := f.svc.ImportRootKey(f.ctx, "bad", bad)
			assert.ErrorIs(t, err, ErrInvalidMaterial, "%d bytes", len(bad))
		}
		_, err = f.svc.CreateKey(f.ctx, CreateOptions{Name: "x"})
		assert.ErrorIs(t, err, ErrInvalidArgument)
		_, err = f.svc.CreateKey(f.ctx, CreateOptions{Name: "ok", Type: "weird"})
		assert.ErrorIs(t, err, ErrInvalidArgument)

		std, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "standard", Type: StandardKey, Material: []byte("standard payload")})
		require.NoError(t, err)
		assert.True(t, std.Extractable)
		got, err = f.svc.GetKey(f.ctx, std.ID)
		require.NoError(t, err)
		assert.Equal(t, []byte("standard payload"), got.Payload)
		meta, err := f.svc.GetKeyMetadata(f.ctx, std.ID)
		require.NoError(t, err)
		assert.Nil(t, meta.Payload)
		_, err = f.svc.Wrap(f.ctx, std.ID, []byte("dek"), nil)
		assert.ErrorIs(t, err, ErrNotRootKey)
		_, err = f.svc.RotateKey(f.ctx, std.ID, nil)
		assert.ErrorIs(t, err, ErrNotRootKey)
		_, err = f.svc.DisableKey(f.ctx, std.ID)
		assert.ErrorIs(t, err, ErrNotRootKey)

		_, err = f.svc.GetKey(f.ctx, "00000000-0000-4000-8000-000000000000")
		assert.ErrorIs(t, err, ErrKeyNotFound)

		keys, err := f.svc.ListKeys(f.ctx, ListOptions{})
		require.NoError(t, err)
		assert.Len(t, keys, 5)
		keys, err = f.svc.ListKeys(f.ctx, ListOptions{Offset: 1, Limit: 2})
		require.NoError(t, err)
		assert.Len(t, keys, 2)
	})
}

func TestRotation(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "gen")
		v1 := k.KeyVersion

		_, err := f.svc.RotateKey(f.ctx, k.ID, material(32, 3))
		assert.ErrorIs(t, err, ErrMaterialNotAllowed)

		// The first rotation after creation is allowed at once; the next not within an hour.
		r1, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		assert.NotEqual(t, v1.ID, r1.KeyVersion.ID)
		assert.Equal(t, t0, r1.LastRotateDate)
		assert.Equal(t, k.ID, r1.ID)
		assert.Equal(t, k.Name, r1.Name)
		f.clock.Advance(59 * time.Minute)
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		assert.ErrorIs(t, err, ErrRotationTooSoon)
		f.clock.Advance(time.Minute)
		r2, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)

		vs, err := f.svc.ListVersions(f.ctx, k.ID)
		require.NoError(t, err)
		require.Len(t, vs, 3)
		assert.Equal(t, []string{r2.KeyVersion.ID, r1.KeyVersion.ID, v1.ID}, []string{vs[0].ID, vs[1].ID, vs[2].ID}, "newest first")

		imp, err := f.svc.ImportRootKey(f.ctx, "imp", material(32, 9))
		require.NoError(t, err)
		_, err = f.svc.RotateKey(f.ctx, imp.ID, nil)
		assert.ErrorIs(t, err, ErrMaterialRequired)
		_, err = f.svc.RotateKey(f.ctx, imp.ID, material(20, 1))
		assert.ErrorIs(t, err, ErrInvalidMaterial)
		_, err = f.svc.RotateKey(f.ctx, imp.ID, material(16, 4))
		require.NoError(t, err)

		// Refusals are audited.
		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, Action: ActionRotate, OldestFirst: true})
		require.NoError(t, err)
		var outcomes []string
		for _, e := range evs {
			outcomes = append(outcomes, e.Outcome)
		}
		assert.Equal(t, []string{"failure", "success", "failure", "success"}, outcomes)
	})
}

func TestWrapUnwrapRewrap(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "wrap")
		other := f.root(t, "other")
		dek := material(32, 5)
		aad := []string{"volume-uuid-1"}

		w, err := f.svc.Wrap(f.ctx, k.ID, dek, aad)
		require.NoError(t, err)
		assert.Equal(t, k.KeyVersion.ID, w.KeyVersion.ID)
		w2, err := f.svc.Wrap(f.ctx, k.ID, dek, aad)
		require.NoError(t, err)
		assert.NotEqual(t, w.Ciphertext, w2.Ciphertext, "random nonces")
		vid, err := CiphertextVersion(w.Ciphertext)
		require.NoError(t, err)
		assert.Equal(t, k.KeyVersion.ID, vid)

		u, err := f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, aad)
		require.NoError(t, err)
		assert.Equal(t, dek, u.Plaintext)
		assert.Nil(t, u.Rewrapped, "already on the latest version")

		// Authentication failures.
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, []string{"volume-uuid-2"})
		assert.ErrorIs(t, err, ErrAuth)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		assert.ErrorIs(t, err, ErrAuth)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, []string{"volume-", "uuid-1"})
		assert.ErrorIs(t, err, ErrAuth, "AAD strings are length-delimited")
		_, err = f.svc.Unwrap(f.ctx, other.ID, w.Ciphertext, aad)
		assert.ErrorIs(t, err, ErrAuth)
		for _, i := range []int{0, 5, 25, len(w.Ciphertext) - 1} {
			bad := bytes.Clone(w.Ciphertext)
			bad[i] ^= 1
			_, err = f.svc.Unwrap(f.ctx, k.ID, bad, aad)
			assert.ErrorIs(t, err, ErrAuth, "byte %d", i)
		}
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext[:30], aad)
		assert.ErrorIs(t, err, ErrAuth)
		_, err = f.svc.Wrap(f.ctx, k.ID, nil, nil)
		assert.ErrorIs(t, err, ErrInvalidArgument)
		_, err = f.svc.Wrap(f.ctx, k.ID, make([]byte, 7169), nil)
		assert.ErrorIs(t, err, ErrInvalidArgument)

		// A version-1 ciphertext still unwraps after three rotations and comes back rewrapped
		// to version 4.
		var latest *Key
		for range 3 {
			latest, err = f.svc.RotateKey(f.ctx, k.ID, nil)
			require.NoError(t, err)
			f.clock.Advance(time.Hour)
		}
		vs, err := f.svc.ListVersions(f.ctx, k.ID)
		require.NoError(t, err)
		require.Len(t, vs, 4)
		u, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, aad)
		require.NoError(t, err)
		assert.Equal(t, dek, u.Plaintext)
		assert.Equal(t, k.KeyVersion.ID, u.KeyVersion.ID)
		require.NotNil(t, u.Rewrapped)
		assert.Equal(t, latest.KeyVersion.ID, u.RewrappedVersion.ID)
		assert.Equal(t, vs[0].ID, u.RewrappedVersion.ID)
		again, err := f.svc.Unwrap(f.ctx, k.ID, u.Rewrapped, aad)
		require.NoError(t, err)
		assert.Equal(t, dek, again.Plaintext)
		assert.Nil(t, again.Rewrapped)

		rw, err := f.svc.Rewrap(f.ctx, k.ID, w2.Ciphertext, aad)
		require.NoError(t, err)
		assert.Equal(t, k.KeyVersion.ID, rw.OldVersion.ID)
		assert.Equal(t, latest.KeyVersion.ID, rw.KeyVersion.ID)
		got, err := f.svc.Unwrap(f.ctx, k.ID, rw.Ciphertext, aad)
		require.NoError(t, err)
		assert.Equal(t, dek, got.Plaintext)
		_, err = f.svc.Rewrap(f.ctx, k.ID, w2.Ciphertext, []string{"x"})
		assert.ErrorIs(t, err, ErrAuth)

		gen, err := f.svc.WrapCreateDEK(f.ctx, k.ID, aad)
		require.NoError(t, err)
		assert.Len(t, gen.Plaintext, 32)
		u, err = f.svc.Unwrap(f.ctx, k.ID, gen.Ciphertext, aad)
		require.NoError(t, err)
		assert.Equal(t, gen.Plaintext, u.Plaintext)

		// Imported material of every size wraps.
		for _, n := range []int{16, 24, 32} {
			imp, err := f.svc.ImportRootKey(f.ctx, "imp", material(n, 2))
			require.NoError(t, err)
			w, err := f.svc.Wrap(f.ctx, imp.ID, dek, nil)
			require.NoError(t, err)
			u, err := f.svc.Unwrap(f.ctx, imp.ID, w.Ciphertext, nil)
			require.NoError(t, err)
			assert.Equal(t, dek, u.Plaintext)
		}
	})
}

func TestLifecycle(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "life")
		w, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)

		d, err := f.svc.DisableKey(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateSuspended, d.State)
		_, err = f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
		assert.ErrorIs(t, err, ErrKeySuspended)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		assert.ErrorIs(t, err, ErrKeySuspended)
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		assert.ErrorIs(t, err, ErrKeySuspended)
		_, err = f.svc.DisableKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrKeySuspended)
		f.clock.Advance(29 * time.Second)
		_, err = f.svc.EnableKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrTooEarly)
		f.clock.Advance(time.Second)
		e, err := f.svc.EnableKey(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateActive, e.State)
		_, err = f.svc.EnableKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrInvalidState)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err)

		// Registrations protect the key.
		_, err = f.svc.Register(f.ctx, k.ID, "crn:v1:local:public:is:local:a/crkvol::volume:v1", RegisterOptions{})
		require.NoError(t, err)
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{})
		assert.ErrorIs(t, err, ErrProtectedResource)
		_, err = f.svc.Register(f.ctx, k.ID, "crn:v1:local:public:is:local:a/crkvol::volume:v2", RegisterOptions{PreventKeyDeletion: true})
		require.NoError(t, err)
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		assert.ErrorIs(t, err, ErrPreventKeyDeletion)
		no := false
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, "crn:v1:local:public:is:local:a/crkvol::volume:v2", RegistrationUpdate{PreventKeyDeletion: &no})
		require.NoError(t, err)
		del, err := f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		require.NoError(t, err)
		assert.Equal(t, StateDestroyed, del.State)
		assert.True(t, del.Deleted)
		assert.Equal(t, t0.Add(30*time.Second), del.DeletionDate)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		assert.ErrorIs(t, err, ErrKeyDestroyed)
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		assert.ErrorIs(t, err, ErrKeyDestroyed)
		listed, err := f.svc.ListKeys(f.ctx, ListOptions{})
		require.NoError(t, err)
		assert.Empty(t, listed, "deleted keys only listed on request")
		listed, err = f.svc.ListKeys(f.ctx, ListOptions{States: []State{StateDestroyed}})
		require.NoError(t, err)
		assert.Len(t, listed, 1)

		// Restore: not within 30 s, then fine.
		_, err = f.svc.RestoreKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrTooEarly)
		f.clock.Advance(31 * time.Second)
		r, err := f.svc.RestoreKey(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateActive, r.State)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err)

		// Delete again; purge is too early, restore too late after 30 days, then purge.
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		require.NoError(t, err)
		_, err = f.svc.PurgeKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrTooEarly)
		f.clock.Advance(RestoreWindow)
		_, err = f.svc.RestoreKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrRestoreExpired)
		_, err = f.svc.PurgeKey(f.ctx, k.ID)
		require.NoError(t, err)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		assert.ErrorIs(t, err, ErrKeyPurged)
		_, err = f.svc.RestoreKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrKeyPurged)
		_, err = f.svc.PurgeKey(f.ctx, k.ID)
		assert.ErrorIs(t, err, ErrKeyPurged)
		// Crypto-shredding: no material is left in the store for this key.
		require.NoError(t, f.svc.view(t.Context(), func(tx storeTx) error {
			r, err := tx.key(k.ID)
			require.NoError(t, err)
			for _, v := range r.Versions {
				assert.Nil(t, v.Material)
				assert.True(t, v.Destroyed)
			}
			return nil
		}))
	})
}

func TestExpiration(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "expiring", ExpirationDate: t0.Add(24 * time.Hour)})
		require.NoError(t, err)
		w, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)
		next, ok, err := f.svc.NextDue(f.ctx)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, t0.Add(24*time.Hour), next)

		f.clock.Advance(24 * time.Hour)
		got, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateDeactivated, got.State)
		_, err = f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
		assert.ErrorIs(t, err, ErrKeyDeactivated)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err, "deactivated keys still unwrap")
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err, "and rotate")
		res, err := f.svc.RunDue(f.ctx)
		require.NoError(t, err)
		assert.Empty(t, res.Expired, "already persisted by the rotation")
		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, Action: ActionWrap, OldestFirst: true})
		require.NoError(t, err)
		assert.Equal(t, OutcomeFailure, evs[len(evs)-1].Outcome)
	})
}

func TestRotationPolicy(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "policy")
		imp, err := f.svc.ImportRootKey(f.ctx, "imp", material(32, 1))
		require.NoError(t, err)
		std, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "std", Type: StandardKey})
		require.NoError(t, err)

		_, err = f.svc.SetRotationPolicy(f.ctx, std.ID, 1, true)
		assert.ErrorIs(t, err, ErrNotRootKey)
		_, err = f.svc.SetRotationPolicy(f.ctx, imp.ID, 1, true)
		assert.ErrorIs(t, err, ErrPolicyNotAllowed)
		for _, m := range []int{0, 13, -1} {
			_, err = f.svc.SetRotationPolicy(f.ctx, k.ID, m, true)
			assert.ErrorIs(t, err, ErrInvalidPolicy, "%d months", m)
		}
		p, err := f.svc.SetRotationPolicy(f.ctx, k.ID, 1, true)
		require.NoError(t, err)
		require.NotNil(t, p.RotationPolicy)
		assert.Equal(t, 1, p.RotationPolicy.IntervalMonths)

		var hookCalls []RotationEvent
		unsub := f.svc.OnRotate(func(_ context.Context, ev RotationEvent) error {
			hookCalls = append(hookCalls, ev)
			return nil
		})
		defer unsub()
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:p1"
		_, err = f.svc.Register(f.ctx, k.ID, crn, RegisterOptions{})
		require.NoError(t, err)

		// Created Jan 31 10:00; one month later by calendar is Mar 3 (AddDate normalises).
		due := t0.AddDate(0, 1, 0)
		next, ok, err := f.svc.NextDue(f.ctx)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, due, next)
		f.clock.Set(due.Add(-time.Second))
		res, err := f.svc.RunDue(f.ctx)
		require.NoError(t, err)
		assert.Empty(t, res.Rotated)
		f.clock.Set(due)
		res, err = f.svc.RunDue(f.ctx)
		require.NoError(t, err)
		assert.Equal(t, []string{k.ID}, res.Rotated)
		require.Len(t, hookCalls, 1)
		assert.Equal(t, k.KeyVersion.ID, hookCalls[0].OldVersion.ID)
		require.Len(t, hookCalls[0].Stale, 1)
		assert.Equal(t, crn, hookCalls[0].Stale[0].ResourceCRN)

		// Twelve months of policy rotations, with a manual one in between resetting the base.
		for m := 0; m < 12; m++ {
			next, ok, err := f.svc.NextDue(f.ctx)
			require.NoError(t, err)
			require.True(t, ok)
			f.clock.Set(next)
			res, err := f.svc.RunDue(f.ctx)
			require.NoError(t, err)
			require.Equal(t, []string{k.ID}, res.Rotated, "month %d", m)
			if m == 5 {
				f.clock.Advance(10 * 24 * time.Hour)
				_, err := f.svc.RotateKey(f.ctx, k.ID, nil)
				require.NoError(t, err)
			}
		}
		vs, err := f.svc.ListVersions(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Len(t, vs, 15)
		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, Action: ActionRotate, OldestFirst: true})
		require.NoError(t, err)
		assert.Equal(t, "crk-rotation-policy", evs[0].Initiator)

		// A disabled policy does nothing.
		_, err = f.svc.SetRotationPolicy(f.ctx, k.ID, 1, false)
		require.NoError(t, err)
		f.clock.Advance(400 * 24 * time.Hour)
		res, err = f.svc.RunDue(f.ctx)
		require.NoError(t, err)
		assert.Empty(t, res.Rotated)
	})
}

func TestRegistrationsAndPrune(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "regs")
		crn := func(i int) string { return "crn:v1:local:public:is:local:a/crkvol::volume:" + string(rune('a'+i)) }
		for i := range 3 {
			reg, err := f.svc.Register(f.ctx, k.ID, crn(i), RegisterOptions{Description: "vol"})
			require.NoError(t, err)
			assert.Equal(t, k.KeyVersion.ID, reg.KeyVersion.ID)
			assert.Equal(t, t0, reg.CreationDate)
		}
		_, err := f.svc.Register(f.ctx, k.ID, crn(0), RegisterOptions{})
		assert.ErrorIs(t, err, ErrRegistrationExists)
		_, err = f.svc.Register(f.ctx, k.ID, "volume-1", RegisterOptions{})
		assert.ErrorIs(t, err, ErrInvalidArgument)
		_, err = f.svc.Register(f.ctx, k.ID, crn(5), RegisterOptions{VersionID: "00000000-0000-4000-8000-000000000000"})
		assert.ErrorIs(t, err, ErrVersionNotFound)
		other := f.root(t, "other")
		_, err = f.svc.Register(f.ctx, other.ID, crn(0), RegisterOptions{})
		require.NoError(t, err)

		byKey, err := f.svc.ListRegistrations(f.ctx, RegistrationFilter{KeyID: k.ID})
		require.NoError(t, err)
		assert.Len(t, byKey, 3)
		byCRN, err := f.svc.ListRegistrations(f.ctx, RegistrationFilter{CRN: crn(0)})
		require.NoError(t, err)
		assert.Len(t, byCRN, 2)
		all, err := f.svc.ListRegistrations(f.ctx, RegistrationFilter{})
		require.NoError(t, err)
		assert.Len(t, all, 4)

		v1 := k.KeyVersion.ID
		r2, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		f.clock.Advance(time.Hour)
		r3, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		v2, v3 := r2.KeyVersion.ID, r3.KeyVersion.ID

		w, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil) // under v3
		require.NoError(t, err)
		_ = w
		// crn(0) moves to v3, crn(1) to v2; crn(2) stays on v1.
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn(0), RegistrationUpdate{VersionID: &v3})
		require.NoError(t, err)
		reg, err := f.svc.UpdateRegistration(f.ctx, k.ID, crn(1), RegistrationUpdate{VersionID: &v2})
		require.NoError(t, err)
		assert.Equal(t, v2, reg.KeyVersion.ID)
		bogus := "11111111-1111-4111-8111-111111111111"
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn(1), RegistrationUpdate{VersionID: &bogus})
		assert.ErrorIs(t, err, ErrVersionNotFound)
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn(9), RegistrationUpdate{VersionID: &v3})
		assert.ErrorIs(t, err, ErrRegistrationNotFound)

		vs, err := f.svc.ListVersions(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, []int{1, 1, 1}, []int{vs[0].Registrations, vs[1].Registrations, vs[2].Registrations})

		// Nothing to prune while every older version is referenced.
		assert.ErrorIs(t, f.svc.PruneVersion(f.ctx, k.ID, v1), ErrVersionInUse)
		assert.ErrorIs(t, f.svc.PruneVersion(f.ctx, k.ID, v3), ErrVersionInUse, "latest")
		res, err := f.svc.Prune(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Empty(t, res.Destroyed)
		assert.ElementsMatch(t, []string{v1, v2}, res.Referenced)

		old, err := f.svc.Wrap(f.ctx, k.ID, []byte("x"), nil)
		require.NoError(t, err)
		_ = old
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn(2), RegistrationUpdate{VersionID: &v3})
		require.NoError(t, err)
		require.NoError(t, f.svc.DeleteRegistration(f.ctx, k.ID, crn(1)))
		assert.ErrorIs(t, f.svc.DeleteRegistration(f.ctx, k.ID, crn(1)), ErrRegistrationNotFound)
		res, err = f.svc.Prune(f.ctx, k.ID)
		require.NoError(t, err)
		assert.ElementsMatch(t, []string{v1, v2}, res.Destroyed)
		vs, err = f.svc.ListVersions(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, []bool{false, true, true}, []bool{vs[0].Destroyed, vs[1].Destroyed, vs[2].Destroyed})
		_, err = f.svc.Register(f.ctx, k.ID, crn(7), RegisterOptions{VersionID: v1})
		assert.ErrorIs(t, err, ErrVersionDestroyed)
	})
}

func TestPrunedVersionRefusesUnwrap(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "prune")
		w, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		require.NoError(t, f.svc.PruneVersion(f.ctx, k.ID, k.KeyVersion.ID))
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		assert.ErrorIs(t, err, ErrVersionDestroyed)
		_, err = f.svc.Rewrap(f.ctx, k.ID, w.Ciphertext, nil)
		assert.ErrorIs(t, err, ErrVersionDestroyed)
	})
}

func TestHooksAndSync(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "hooks")
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:h"
		_, err := f.svc.Register(f.ctx, k.ID, crn, RegisterOptions{})
		require.NoError(t, err)

		var calls []RotationEvent
		fail := true
		unsub := f.svc.OnRotate(func(_ context.Context, ev RotationEvent) error {
			calls = append(calls, ev)
			if fail {
				return errors.New("volume unreachable")
			}
			return nil
		})
		r, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err, "a failing hook does not fail or undo the rotation")
		require.Len(t, calls, 1)
		assert.Equal(t, r.KeyVersion.ID, calls[0].NewVersion.ID)
		got, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, r.KeyVersion.ID, got.KeyVersion.ID)
		evs, err := f.svc.Events(f.ctx, EventFilter{Action: ActionRotationHook})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		assert.Equal(t, OutcomeFailure, evs[0].Outcome)
		assert.Contains(t, evs[0].Reason, "volume unreachable")

		// Sync asks again for the stale resources.
		fail = false
		require.NoError(t, f.svc.SyncKey(f.ctx, k.ID))
		require.Len(t, calls, 2)
		assert.Empty(t, calls[1].OldVersion.ID)
		require.Len(t, calls[1].Stale, 1)
		assert.Equal(t, crn, calls[1].Stale[0].ResourceCRN)
		f.clock.Advance(59 * time.Minute)
		assert.ErrorIs(t, f.svc.SyncKey(f.ctx, k.ID), ErrTooEarly)
		f.clock.Advance(time.Minute)
		require.NoError(t, f.svc.SyncKey(f.ctx, k.ID))

		unsub()
		f.clock.Advance(time.Hour)
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		assert.Len(t, calls, 3, "unsubscribed")
	})
}

func TestEvents(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "events")
		dek := []byte("very secret data key 0123456789")
		w, err := f.svc.Wrap(f.ctx, k.ID, dek, nil)
		require.NoError(t, err)
		f.clock.Advance(time.Minute)
		_, err = f.svc.Unwrap(WithInitiator(f.ctx, "alice"), k.ID, w.Ciphertext, nil)
		require.NoError(t, err)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, []string{"wrong"})
		require.Error(t, err)

		all, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, OldestFirst: true})
		require.NoError(t, err)
		var actions []string
		for _, e := range all {
			actions = append(actions, e.Action+"/"+e.Outcome)
			assert.Equal(t, k.CRN, e.KeyCRN)
		}
		assert.Equal(t, []string{"kms.secrets.create/success", "kms.secrets.wrap/success", "kms.secrets.unwrap/success", "kms.secrets.unwrap/failure"}, actions)
		assert.Equal(t, "alice", all[2].Initiator)
		assert.Equal(t, k.KeyVersion.ID, all[1].KeyVersion)

		later, err := f.svc.Events(f.ctx, EventFilter{From: t0.Add(time.Second)})
		require.NoError(t, err)
		assert.Len(t, later, 2)
		early, err := f.svc.Events(f.ctx, EventFilter{To: t0.Add(time.Second), Limit: 1, OldestFirst: true})
		require.NoError(t, err)
		require.Len(t, early, 1)
		assert.Equal(t, ActionCreate, early[0].Action)

		// No key material, plaintext or ciphertext in any event.
		raw, err := json.Marshal(all)
		require.NoError(t, err)
		for _, secret := range [][]byte{dek, w.Ciphertext} {
			assert.NotContains(t, string(raw), string(secret))
			b64, _ := json.Marshal(secret)
			assert.NotContains(t, string(raw), strings.Trim(string(b64), `"`))
		}
	})
}

func TestUserErrors(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		assert.True(t, IsUserError(ErrRotationTooSoon))
		assert.True(t, IsUserError(errors.Join(errors.New("x"), ErrAuth)))
		assert.False(t, IsUserError(ErrMasterKey))
		assert.False(t, IsUserError(os.ErrClosed))
	})
}

// TestConcurrentWrapAndRotate wraps, unwraps and rotates one key from several goroutines
// (run with -race): every unwrap succeeds whatever rotations happen in between.
func TestConcurrentWrapAndRotate(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "busy")
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				aad := []string{string(rune('a' + w))}
				for i := range 40 {
					dek := material(32, byte(w*40+i))
					res, err := f.svc.Wrap(f.ctx, k.ID, dek, aad)
					if err != nil {
						errs <- err
						return
					}
					u, err := f.svc.Unwrap(f.ctx, k.ID, res.Ciphertext, aad)
					if err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(u.Plaintext, dek) {
						errs <- errors.New("plaintext differs")
						return
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				f.clock.Advance(time.Hour)
				if _, err := f.svc.RotateKey(f.ctx, k.ID, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		vs, err := f.svc.ListVersions(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Len(t, vs, 11)
	})
}

// TestMasterKeyRotationUnderLoad rotates the master key while keys are created, rotated and
// used: nothing deadlocks, and every key created in between is still usable afterwards.
func TestMasterKeyRotationUnderLoad(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		base := f.root(t, "base")
		done := make(chan struct{})
		var created []string
		var mu sync.Mutex
		errs := make(chan error, 8)
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 30 {
					k, err := f.svc.CreateRootKey(f.ctx, fmt.Sprintf("load-%d-%d", w, i))
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					created = append(created, k.ID)
					mu.Unlock()
					if _, err := f.svc.RotateKey(f.ctx, k.ID, nil); err != nil {
						errs <- err
						return
					}
					if _, err := f.svc.Wrap(f.ctx, base.ID, []byte("x"), nil); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		go func() {
			defer close(done)
			for range 10 {
				if err := f.svc.RotateMasterKey(f.ctx, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
		finished := make(chan struct{})
		go func() { wg.Wait(); <-done; close(finished) }()
		select {
		case <-finished:
		case <-time.After(60 * time.Second):
			t.Fatal("deadlock: master key rotation and key operations did not finish")
		}
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Len(t, created, 90)
		for _, id := range created {
			_, err := f.svc.Wrap(f.ctx, id, []byte("dek"), nil)
			require.NoError(t, err, "key %s", id)
		}
		require.NoError(t, f.svc.Close())
		svc, err := st.open(f.path, Options{Clock: f.clock})
		require.NoError(t, err)
		defer svc.Close()
		_, err = svc.Wrap(f.ctx, created[len(created)-1], []byte("dek"), nil)
		require.NoError(t, err)
	})
}

// TestRegistrationNoDowngrade: a late update naming an older version does not move a
// registration back when NoDowngrade is set.
func TestRegistrationNoDowngrade(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "nodown")
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:nd"
		_, err := f.svc.Register(f.ctx, k.ID, crn, RegisterOptions{})
		require.NoError(t, err)
		r2, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		v1, v2 := k.KeyVersion.ID, r2.KeyVersion.ID
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn, RegistrationUpdate{VersionID: &v2, NoDowngrade: true})
		require.NoError(t, err)
		reg, err := f.svc.UpdateRegistration(f.ctx, k.ID, crn, RegistrationUpdate{VersionID: &v1, NoDowngrade: true})
		require.NoError(t, err)
		assert.Equal(t, v2, reg.KeyVersion.ID)
		reg, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn, RegistrationUpdate{VersionID: &v1})
		require.NoError(t, err)
		assert.Equal(t, v1, reg.KeyVersion.ID, "an explicit move back is still possible")
	})
}
