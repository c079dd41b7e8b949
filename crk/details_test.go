package crk

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLastUpdateDate: a new key has no lastUpdateDate and no lastRotateDate; a change of the
// key (rotation, policy, state) sets lastUpdateDate, and registration changes and syncs,
// which change resources that refer to the key, do not.
func TestLastUpdateDate(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "fresh")
		assert.True(t, k.LastUpdateDate.IsZero(), "new key: lastUpdateDate %v", k.LastUpdateDate)
		assert.True(t, k.LastRotateDate.IsZero())
		got, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.True(t, got.LastUpdateDate.IsZero(), "stored key: lastUpdateDate %v", got.LastUpdateDate)
		listed, err := f.svc.ListKeys(f.ctx, ListOptions{})
		require.NoError(t, err)
		require.Len(t, listed, 1)
		assert.True(t, listed[0].LastUpdateDate.IsZero())

		f.clock.Advance(time.Minute)
		f.register(t, k.ID, 1)
		got, err = f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.True(t, got.LastUpdateDate.IsZero(), "a registration is not a change of the key")

		type step struct {
			name string
			do   func() (*Key, error)
		}
		for _, s := range []step{
			{"policy", func() (*Key, error) { return f.svc.SetRotationPolicy(f.ctx, k.ID, 3, true) }},
			{"rotate", func() (*Key, error) { return f.svc.RotateKey(f.ctx, k.ID, nil) }},
			{"disable", func() (*Key, error) { return f.svc.DisableKey(f.ctx, k.ID) }},
		} {
			f.clock.Advance(time.Hour)
			now := f.clock.Now().UTC()
			r, err := s.do()
			require.NoError(t, err, s.name)
			assert.Equal(t, now, r.LastUpdateDate.UTC(), s.name)
			got, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
			require.NoError(t, err)
			assert.Equal(t, now, got.LastUpdateDate.UTC(), s.name)
			if s.name == "rotate" {
				assert.Equal(t, now, got.LastRotateDate.UTC())
			}
		}
	})
}

// TestPurgeWait: a deleted key can be purged from 4 hours after its deletion (not a
// nanosecond before: ErrTooEarly, nothing changed), within its restore window too, and a
// purged key cannot be restored.
func TestPurgeWait(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "doomed")
		w, err := f.svc.WrapCreateDEK(f.ctx, k.ID, nil)
		require.NoError(t, err)
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{})
		require.NoError(t, err)
		f.clock.Advance(PurgeWait - time.Nanosecond)
		_, err = f.svc.PurgeKey(f.ctx, k.ID)
		require.ErrorIs(t, err, ErrTooEarly)
		assert.Contains(t, err.Error(), "less than 4 hours ago; it can be purged from "+t0.Add(PurgeWait).UTC().Format(time.RFC3339))
		// Refused: still restorable, material intact.
		r, err := f.svc.RestoreKey(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateActive, r.State)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err)

		f.clock.Advance(ActionCooldown)
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{})
		require.NoError(t, err)
		f.clock.Advance(PurgeWait)
		p, err := f.svc.PurgeKey(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, StateDestroyed, p.State)
		_, err = f.svc.RestoreKey(f.ctx, k.ID)
		require.ErrorIs(t, err, ErrKeyPurged)
		_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
		require.ErrorIs(t, err, ErrKeyPurged)
	})
}
