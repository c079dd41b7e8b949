package crk

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSummary: a store's summary lists its keys with their states and versions, its
// registrations and its event and feed counters, and reading it records nothing: the store
// holds the same bytes after it as before.
func TestSummary(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		ctx := context.Background()
		path := tempPath(t)
		s, err := st.open(path, Options{Clock: NewManualClock(t0)})
		require.NoError(t, err)
		defer s.Close()
		a, err := s.CreateRootKey(ctx, "alpha")
		require.NoError(t, err)
		a, err = s.RotateKey(ctx, a.ID, nil)
		require.NoError(t, err)
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:v1"
		_, err = s.Register(ctx, a.ID, crn, RegisterOptions{})
		require.NoError(t, err)
		g, err := s.CreateRootKey(ctx, "gone")
		require.NoError(t, err)
		_, err = s.DeleteKey(ctx, g.ID, DeleteOptions{})
		require.NoError(t, err)
		head, err := s.Lifecycle(ctx, "", 0)
		require.NoError(t, err)

		before := st.raw(t, path)
		sum, err := s.Summary(ctx)
		require.NoError(t, err)
		assert.Equal(t, before, st.raw(t, path), "a summary records nothing")
		again, err := s.Summary(ctx)
		require.NoError(t, err)
		assert.Equal(t, sum, again)

		assert.Equal(t, s.Instance(), sum.Instance)
		want := map[string]KeySummary{
			a.ID: {ID: a.ID, Name: "alpha", State: StateActive},
			g.ID: {ID: g.ID, Name: "gone", State: StateDestroyed, Deleted: true},
		}
		versions := map[string]int{a.ID: 2, g.ID: 1}
		require.Len(t, sum.Keys, 2)
		for _, k := range sum.Keys {
			require.Len(t, k.Versions, versions[k.ID], "versions of %s", k.Name)
			if k.ID == a.ID {
				assert.Equal(t, a.KeyVersion.ID, k.Versions[1], "the latest version last")
			}
			k.Versions = nil
			assert.Equal(t, want[k.ID], k)
		}
		assert.Equal(t, []RegistrationSummary{{KeyID: a.ID, CRN: crn, VersionID: a.KeyVersion.ID}}, sum.Registrations)
		evs, err := s.Events(ctx, EventFilter{})
		require.NoError(t, err)
		assert.Equal(t, len(evs), sum.Events)
		assert.Equal(t, evs[0].Seq, sum.LastEvent)
		assert.Equal(t, head.Cursor, sum.FeedHead)
		assert.Zero(t, sum.FeedPruned)
	})
}
