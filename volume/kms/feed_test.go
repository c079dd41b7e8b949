package kms_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// feedHangGuard bounds the waits of the feed tests, far beyond what they expect.
const feedHangGuard = 30 * time.Second

// TestKeyEventsBothSides: Local and Remote follow the same feed the same way: the head, a
// long poll woken by a rotation, a wait that passes with an empty page, and a cursor the
// feed cannot continue from.
func TestKeyEventsBothSides(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		f := newErrFixtureOn(t, st)
		k := f.root(t, "followed")
		_, err := f.svc.Register(f.ctx, k.ID, crn, crk.RegisterOptions{})
		require.NoError(t, err)
		for _, side := range []struct {
			name string
			feed volume.KeyFeed
		}{{"local", f.local}, {"remote", f.remote}} {
			t.Run(side.name, func(t *testing.T) {
				head, err := side.feed.KeyEvents(f.ctx, "", time.Minute)
				require.NoError(t, err, "the head comes at once")
				assert.Empty(t, head.Events)
				require.NotEmpty(t, head.Cursor)

				type answer struct {
					page volume.KeyEventPage
					err  error
				}
				got := make(chan answer, 1)
				go func() {
					p, err := side.feed.KeyEvents(f.ctx, head.Cursor, time.Minute)
					got <- answer{p, err}
				}()
				time.Sleep(20 * time.Millisecond) // usually in the wait; either way the event comes
				f.clock.Advance(2 * time.Hour)
				before, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
				require.NoError(t, err)
				_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
				require.NoError(t, err)
				var a answer
				select {
				case a = <-got:
				case <-time.After(feedHangGuard):
					t.Fatal("the long poll was not woken by the rotation")
				}
				require.NoError(t, a.err)
				require.Len(t, a.page.Events, 1)
				ev := a.page.Events[0]
				assert.Equal(t, volume.KeyRotated, ev.Type)
				assert.Equal(t, k.ID, ev.KeyID)
				assert.Equal(t, before.KeyVersion.ID, ev.OldVersion)
				assert.NotEqual(t, ev.OldVersion, ev.NewVersion)
				assert.Equal(t, volume.KeyStateActive, ev.State)
				assert.Equal(t, ev.Cursor, a.page.Cursor)

				// A wait that passes: an empty page at the same cursor.
				p, err := side.feed.KeyEvents(f.ctx, a.page.Cursor, 50*time.Millisecond)
				require.NoError(t, err)
				assert.Empty(t, p.Events)
				assert.Equal(t, a.page.Cursor, p.Cursor)

				// A cursor ahead of the feed: resync, whichever side.
				_, err = side.feed.KeyEvents(f.ctx, "999", 0)
				assert.ErrorIs(t, err, volume.ErrResyncNeeded)
				assert.ErrorIs(t, err, crk.ErrResyncNeeded)
			})
		}
	})
}

// TestRemoteKeyEventsOutlastsTimeout: the wait of a long poll is not cut by the Remote's
// request timeout, which bounds the service's answer beyond the wait.
func TestRemoteKeyEventsOutlastsTimeout(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		f := newErrFixtureOn(t, st)
		r, err := kms.NewRemote(kms.RemoteConfig{URL: f.remoteURL, Instance: f.instance, APIKey: f.apiKey, Timeout: 100 * time.Millisecond})
		require.NoError(t, err)
		head, err := r.KeyEvents(f.ctx, "", 0)
		require.NoError(t, err)
		start := time.Now()
		p, err := r.KeyEvents(f.ctx, head.Cursor, 500*time.Millisecond)
		require.NoError(t, err, "a wait longer than the request timeout")
		t.Logf("waited %s", time.Since(start))
		assert.Empty(t, p.Events)
		assert.Equal(t, head.Cursor, p.Cursor)

		// The caller's ctx still ends the wait.
		ctx, cancel := context.WithTimeout(f.ctx, 50*time.Millisecond)
		defer cancel()
		_, err = r.KeyEvents(ctx, head.Cursor, time.Minute)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

// TestRemoteKeyEventsMalformedAnswers: an answer that cannot be followed is an incomplete
// answer, never a page.
func TestRemoteKeyEventsMalformedAnswers(t *testing.T) {
	for _, tc := range []struct{ name, body string }{
		{"empty object", `{}`},
		{"no cursor", `{"events":[]}`},
		{"malformed cursor", `{"events":[],"cursor":"x1"}`},
		{"event without cursor", `{"events":[{"type":"rotate","keyId":"00000000-0000-4000-8000-000000000001"}],"cursor":"1"}`},
		{"event with a malformed key id", `{"events":[{"cursor":"1","type":"rotate","keyId":"../x"}],"cursor":"1"}`},
		{"not json", `events`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newErrFixture(t)
			f.mu.Lock()
			f.respond = func(w http.ResponseWriter) bool {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(tc.body))
				return true
			}
			f.mu.Unlock()
			_, err := f.remote.KeyEvents(f.ctx, "", 0)
			require.Error(t, err)
			assert.True(t, errors.Is(err, volume.ErrIncompleteAnswer), "%v", err)
			assert.NotErrorIs(t, err, volume.ErrKeyRefused)
		})
	}
}

// TestRemoteKeyEventsResyncAfterRetention: events deleted by the feed's retention make the
// cursor before them a resync answer (410) that crosses HTTP as both sentinels; the head is
// still followable.
func TestRemoteKeyEventsResyncAfterRetention(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
		tenants, inst, svc := st.open(t, t.TempDir(), crk.Options{Clock: clock,
			MasterKey: bytes.Repeat([]byte{6}, 32), FeedRetention: crk.FeedRetention{MaxCount: 1}})
		tenants.SetStaticToken("feed-token")
		srv := httptest.NewServer(kpapi.NewServer(tenants))
		t.Cleanup(srv.Close)
		r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, Token: "feed-token"})
		require.NoError(t, err)

		k, err := svc.CreateRootKey(t.Context(), "retained")
		require.NoError(t, err)
		_, err = svc.Register(t.Context(), k.ID, crn, crk.RegisterOptions{})
		require.NoError(t, err)
		_, err = svc.DisableKey(t.Context(), k.ID)
		require.NoError(t, err)
		clock.Advance(time.Hour)
		_, err = svc.EnableKey(t.Context(), k.ID)
		require.NoError(t, err)

		_, err = r.KeyEvents(t.Context(), "0", 0)
		require.Error(t, err, "the disable event was deleted")
		assert.ErrorIs(t, err, volume.ErrResyncNeeded)
		assert.ErrorIs(t, err, crk.ErrResyncNeeded)
		assert.Contains(t, err.Error(), "410")
		p, err := r.KeyEvents(t.Context(), "1", 0)
		require.NoError(t, err, "the enable event is kept")
		require.Len(t, p.Events, 1)
		assert.Equal(t, volume.KeyEnabled, p.Events[0].Type)
		head, err := r.KeyEvents(t.Context(), "", 0)
		require.NoError(t, err)
		assert.Equal(t, "2", head.Cursor)
	})
}

// TestRemoteKeyEventsAsksForALimit: the client asks for a page small enough to fit the body
// it accepts, whatever the server's default.
func TestRemoteKeyEventsAsksForALimit(t *testing.T) {
	queries := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case queries <- r.URL.RawQuery:
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"events":[],"cursor":"7"}`))
	}))
	defer srv.Close()
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "00000000-0000-4000-8000-000000000001", Token: "t"})
	require.NoError(t, err)
	_, err = r.KeyEvents(context.Background(), "7", 0)
	require.NoError(t, err)
	q, err := url.ParseQuery(<-queries)
	require.NoError(t, err)
	assert.Equal(t, []string{strconv.Itoa(kms.RemoteFeedLimit)}, q["limit"])
	assert.LessOrEqual(t, kms.RemoteFeedLimit, kpapi.MaxLifecycleLimit)
}
