package crk

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const feedCRN = "crn:v1:bluemix:public:is:us-south:a/crkvol::volume:r006-00000000-0000-4000-8000-000000000001"

func feedTypes(evs []LifecycleEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type
	}
	return out
}

func TestLifecycleFeedRecordsEveryLifecycleChangeOfRegisteredKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		require.NoError(t, f.svc.Close())
		svc, err := st.open(f.path, Options{Clock: f.clock, FeedRetention: FeedRetention{MaxAge: -1}}) // months pass
		require.NoError(t, err)
		f.svc = svc
		k := f.root(t, "key-k")
		unreg := f.root(t, "unregistered")
		head, err := f.svc.Lifecycle(f.ctx, "", 0)
		require.NoError(t, err)
		require.Equal(t, "0", head.Cursor)
		require.Empty(t, head.Events)

		// A key without registrations has events too (a resource whose registration was deleted
		// still follows its key).
		_, err = f.svc.RotateKey(f.ctx, unreg.ID, nil)
		require.NoError(t, err)
		first, err := f.svc.Lifecycle(f.ctx, "0", 0)
		require.NoError(t, err)
		require.Len(t, first.Events, 1)
		require.Equal(t, unreg.ID, first.Events[0].KeyID)
		require.Equal(t, 0, first.Events[0].Registrations)
		afterUnreg := first.Cursor
		_, err = f.svc.Register(f.ctx, k.ID, feedCRN, RegisterOptions{})
		require.NoError(t, err)
		v1 := k.KeyVersion.ID

		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		_, err = f.svc.DisableKey(f.ctx, k.ID)
		require.NoError(t, err)
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil) // refused: suspended; no event
		require.ErrorIs(t, err, ErrKeySuspended)
		f.clock.Advance(time.Minute)
		_, err = f.svc.EnableKey(f.ctx, k.ID)
		require.NoError(t, err)
		require.NoError(t, f.svc.SyncKey(f.ctx, k.ID))
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		require.NoError(t, err)
		f.clock.Advance(time.Minute)
		_, err = f.svc.RestoreKey(f.ctx, k.ID)
		require.NoError(t, err)
		_, err = f.svc.SetRotationPolicy(f.ctx, k.ID, 1, true)
		require.NoError(t, err)
		f.clock.Advance(32 * 24 * time.Hour)
		res, err := f.svc.RunDue(f.ctx)
		require.NoError(t, err)
		require.Equal(t, []string{k.ID}, res.Rotated)
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		require.NoError(t, err)
		f.clock.Advance(RestoreWindow + time.Hour)
		_, err = f.svc.PurgeKey(f.ctx, k.ID)
		require.NoError(t, err)

		page, err := f.svc.Lifecycle(f.ctx, afterUnreg, 0)
		require.NoError(t, err)
		require.Equal(t, []string{"rotate", "disable", "enable", "sync", "delete", "restore", "rotate", "delete", "purge"}, feedTypes(page.Events))
		rot := page.Events[0]
		require.Equal(t, "2", rot.Cursor)
		require.Equal(t, v1, rot.OldVersion)
		require.NotEqual(t, v1, rot.NewVersion)
		require.False(t, rot.Policy)
		require.Equal(t, k.ID, rot.KeyID)
		require.Equal(t, 1, rot.Registrations)
		require.Equal(t, "active", rot.State)
		require.Equal(t, "suspended", page.Events[1].State)
		require.Equal(t, "destroyed", page.Events[4].State)
		pol := page.Events[6]
		require.True(t, pol.Policy)
		require.Equal(t, rot.NewVersion, pol.OldVersion)
		require.Equal(t, "crk-rotation-policy", pol.Initiator)
		require.Equal(t, pol.Cursor, page.Events[6].Cursor)
		require.Equal(t, page.Events[len(page.Events)-1].Cursor, page.Cursor)

		// Paging: limit, and resuming from a cursor.
		p1, err := f.svc.Lifecycle(f.ctx, afterUnreg, 4)
		require.NoError(t, err)
		require.Len(t, p1.Events, 4)
		p2, err := f.svc.Lifecycle(f.ctx, p1.Cursor, 0)
		require.NoError(t, err)
		require.Equal(t, page.Events[4:], p2.Events)
		end, err := f.svc.Lifecycle(f.ctx, p2.Cursor, 0)
		require.NoError(t, err)
		require.Empty(t, end.Events)
		require.Equal(t, p2.Cursor, end.Cursor)

		// The feed and its cursors survive a restart; another process reads it without the
		// master key.
		require.NoError(t, f.svc.Close())
		if st.kind == "bolt" {
			read, err := ReadLifecycle(f.path, p1.Cursor, 0, time.Second)
			require.NoError(t, err)
			require.Equal(t, page.Events[4:], read.Events)
		}
		svc, err = st.open(f.path, Options{Clock: f.clock, FeedRetention: FeedRetention{MaxAge: -1}})
		require.NoError(t, err)
		defer svc.Close()
		again, err := svc.Lifecycle(f.ctx, p1.Cursor, 0)
		require.NoError(t, err)
		require.Equal(t, page.Events[4:], again.Events)
	})
}

func TestLifecycleFeedCursors(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "key-k")
		_, err := f.svc.Register(f.ctx, k.ID, feedCRN, RegisterOptions{})
		require.NoError(t, err)
		_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		for _, c := range []string{"x", "-1", "01", " 1", "1.0", "18446744073709551616"} {
			_, err := f.svc.Lifecycle(f.ctx, c, 0)
			require.ErrorIs(t, err, ErrInvalidArgument, c)
		}
		_, err = f.svc.Lifecycle(f.ctx, "0", -1)
		require.ErrorIs(t, err, ErrInvalidArgument)
		_, err = f.svc.Lifecycle(f.ctx, "2", 0)
		require.ErrorIs(t, err, ErrResyncNeeded, "a cursor ahead of the head")
		require.Contains(t, err.Error(), "ahead of the feed's last event 1")
		info, ok := LookupError(err)
		require.True(t, ok)
		require.Equal(t, 410, info.Status)
	})
}

func TestLifecycleFeedRetentionAsksForResync(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		clock := NewManualClock(t0)
		path := filepath.Join(t.TempDir(), "crk.db")
		svc, err := st.open(path, Options{Clock: clock, FeedRetention: FeedRetention{MaxCount: 3}})
		require.NoError(t, err)
		ctx := context.Background()
		k, err := svc.CreateRootKey(ctx, "key-k")
		require.NoError(t, err)
		_, err = svc.Register(ctx, k.ID, feedCRN, RegisterOptions{})
		require.NoError(t, err)
		for range 5 {
			_, err = svc.DisableKey(ctx, k.ID)
			require.NoError(t, err)
			clock.Advance(time.Minute)
			_, err = svc.EnableKey(ctx, k.ID)
			require.NoError(t, err)
		}
		page, err := svc.Lifecycle(ctx, "7", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"enable", "disable", "enable"}, feedTypes(page.Events))
		_, err = svc.Lifecycle(ctx, "6", 0)
		require.ErrorIs(t, err, ErrResyncNeeded)
		require.Contains(t, err.Error(), "deleted by the feed's retention")
		require.NoError(t, svc.Close())

		// Age: reopening with a 1-hour window after two hours deletes everything, and the
		// last cursor seen needs a resync while the head stays.
		clock.Advance(2 * time.Hour)
		svc, err = st.open(path, Options{Clock: clock, FeedRetention: FeedRetention{MaxAge: time.Hour, MaxCount: -1}})
		require.NoError(t, err)
		defer svc.Close()
		_, err = svc.Lifecycle(ctx, "9", 0)
		require.ErrorIs(t, err, ErrResyncNeeded)
		head, err := svc.Lifecycle(ctx, "", 0)
		require.NoError(t, err)
		require.Equal(t, "10", head.Cursor)
		tail, err := svc.Lifecycle(ctx, "10", 0)
		require.NoError(t, err)
		require.Empty(t, tail.Events)
	})
}

func TestWaitLifecycleWakesOnCommit(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "key-k")
		_, err := f.svc.Register(f.ctx, k.ID, feedCRN, RegisterOptions{})
		require.NoError(t, err)
		done := make(chan LifecyclePage, 1)
		go func() {
			p, err := f.svc.WaitLifecycle(f.ctx, "0", 0, 20*time.Second)
			if err != nil {
				p.Cursor = "error: " + err.Error()
			}
			done <- p
		}()
		_, err = f.svc.DisableKey(f.ctx, k.ID)
		require.NoError(t, err)
		select {
		case p := <-done:
			require.Equal(t, []string{"disable"}, feedTypes(p.Events), p.Cursor)
		case <-time.After(20 * time.Second):
			t.Fatal("WaitLifecycle did not return after the disable")
		}

		// Nothing new: an empty page once the wait passes; a cancelled context ends it.
		p, err := f.svc.WaitLifecycle(f.ctx, "1", 0, 10*time.Millisecond)
		require.NoError(t, err)
		require.Empty(t, p.Events)
		require.Equal(t, "1", p.Cursor)
		ctx, cancel := context.WithCancel(f.ctx)
		cancel()
		_, err = f.svc.WaitLifecycle(ctx, "1", 0, time.Minute)
		require.True(t, errors.Is(err, context.Canceled))
	})
}
