package kpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

const feedCRN = "crn:v1:local:public:is:local:a/crkvol::volume:v1"

// hangGuard bounds the waits of these tests: far beyond any wait they expect to end early.
const hangGuard = 30 * time.Second

// feedGet asks srvURL for the lifecycle feed with the query q, the token tok and the instance
// inst; it returns the status and the body.
func feedGet(t *testing.T, ctx context.Context, srvURL, tok, inst string, q url.Values) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srvURL+LifecyclePath+"?"+q.Encode(), nil)
	require.NoError(t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("bluemix-instance", inst)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

// page decodes a 200 answer of the feed.
func page(t *testing.T, status int, body []byte) crk.LifecyclePage {
	t.Helper()
	require.Equal(t, http.StatusOK, status, "%s", body)
	var p crk.LifecyclePage
	require.NoError(t, json.Unmarshal(body, &p), "%s", body)
	require.NotNil(t, p.Events, "events is a list, never null: %s", body)
	return p
}

// feedPage asks for the feed as feedGet does and decodes its 200 answer.
func feedPage(t *testing.T, ctx context.Context, srvURL, tok, inst string, q url.Values) crk.LifecyclePage {
	t.Helper()
	status, body := feedGet(t, ctx, srvURL, tok, inst, q)
	return page(t, status, body)
}

// registeredKey makes a root key with a registration in the default instance (only keys
// with registrations have feed events), through the official client and the service.
func (e *env) registeredKey(t *testing.T, name string) *kp.Key {
	t.Helper()
	k, err := e.client.CreateRootKey(e.ctx, name, nil)
	require.NoError(t, err)
	svc := e.svc(t)
	_, err = svc.Register(e.ctx, k.ID, feedCRN, crk.RegisterOptions{})
	require.NoError(t, err)
	return k
}

// TestLifecycleFeedLongPoll: a long poll from the head is woken by a rotation made through
// the official Key Protect client (a tool that is not crkvol), and its event names the old
// and new versions; the cursor then resumes after it.
func TestLifecycleFeedLongPoll(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k := e.registeredKey(t, "followed")
		head := feedPage(t, e.ctx, e.srv.URL, staticToken, e.inst, nil)
		assert.Empty(t, head.Events)
		require.NotEmpty(t, head.Cursor)

		got := make(chan crk.LifecyclePage, 1)
		go func() {
			status, body := feedGet(t, e.ctx, e.srv.URL, staticToken, e.inst, url.Values{"cursor": {head.Cursor}, "wait": {"60s"}})
			var p crk.LifecyclePage
			if status == http.StatusOK && json.Unmarshal(body, &p) == nil {
				got <- p
			}
			close(got)
		}()
		e.clock.Advance(2 * time.Hour)
		require.NoError(t, e.client.Rotate(e.ctx, k.ID, ""))
		var p crk.LifecyclePage
		select {
		case p = <-got:
		case <-time.After(hangGuard):
			t.Fatal("the long poll was not woken by the rotation")
		}
		require.Len(t, p.Events, 1)
		ev := p.Events[0]
		assert.Equal(t, crk.LifecycleRotate, ev.Type)
		assert.Equal(t, k.ID, ev.KeyID)
		assert.Equal(t, k.KeyVersion.ID, ev.OldVersion)
		assert.NotEqual(t, ev.OldVersion, ev.NewVersion)
		assert.Equal(t, "active", ev.State)
		assert.False(t, ev.Policy)
		assert.Equal(t, ev.Cursor, p.Cursor)

		// Nothing after it: an answer without waiting is empty, at the same cursor.
		again := feedPage(t, e.ctx, e.srv.URL, staticToken, e.inst, url.Values{"cursor": {p.Cursor}})
		assert.Empty(t, again.Events)
		assert.Equal(t, p.Cursor, again.Cursor)
		// A short wait that passes is an empty page too.
		again = feedPage(t, e.ctx, e.srv.URL, staticToken, e.inst, url.Values{"cursor": {p.Cursor}, "wait": {"0.05"}})
		assert.Empty(t, again.Events)
	})
}

// TestLifecycleFeedBadRequests: each malformed parameter is a 400 naming it; a cursor the
// feed cannot continue from is the 410 of the error table.
func TestLifecycleFeedBadRequests(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name   string
			q      url.Values
			target string
		}{
			{"cursor not a number", url.Values{"cursor": {"abc"}}, "cursor"},
			{"cursor negative", url.Values{"cursor": {"-1"}}, "cursor"},
			{"cursor with zeros", url.Values{"cursor": {"007"}}, "cursor"},
			{"wait too long", url.Values{"wait": {"61s"}}, "wait"},
			{"wait negative", url.Values{"wait": {"-1s"}}, "wait"},
			{"wait seconds too long", url.Values{"wait": {"61"}}, "wait"},
			{"wait not a duration", url.Values{"wait": {"soon"}}, "wait"},
			{"limit zero", url.Values{"limit": {"0"}}, "limit"},
			{"limit too big", url.Values{"limit": {"1001"}}, "limit"},
			{"limit not a number", url.Values{"limit": {"all"}}, "limit"},
			{"cursor twice", url.Values{"cursor": {"1", "2"}}, "cursor"},
			{"wait twice", url.Values{"wait": {"1s", "1s"}}, "wait"},
			{"limit twice", url.Values{"limit": {"5", "10"}}, "limit"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := feedGet(t, e.ctx, e.srv.URL, staticToken, e.inst, tc.q)
				require.Equal(t, http.StatusBadRequest, status, "%s", body)
				re := ParseError(status, body)
				assert.Equal(t, "INVALID_QUERY_PARAM_ERR", re.Code)
				var env ErrorBody
				require.NoError(t, json.Unmarshal(body, &env))
				require.NotNil(t, env.Resources[0].Reasons[0].Target)
				assert.Equal(t, tc.target, env.Resources[0].Reasons[0].Target.Name)
			})
		}
		t.Run("cursor ahead of the feed", func(t *testing.T) {
			status, body := feedGet(t, e.ctx, e.srv.URL, staticToken, e.inst, url.Values{"cursor": {"42"}})
			require.Equal(t, http.StatusGone, status, "%s", body)
			re := ParseError(status, body)
			assert.Equal(t, "FEED_RESYNC_REQUIRED_ERR", re.Code)
			assert.ErrorIs(t, re, crk.ErrResyncNeeded)
		})
		t.Run("limits and waits accepted", func(t *testing.T) {
			for _, q := range []url.Values{{"limit": {"1"}}, {"limit": {"1000"}}, {"wait": {"0"}}, {"wait": {"60"}, "cursor": {""}}, {"wait": {"1m"}}} {
				feedPage(t, e.ctx, e.srv.URL, staticToken, e.inst, q)
			}
		})
	})
}

// TestLifecycleFeedAuthorization: the feed needs a token for its instance, as the rest of
// the API does, and each instance reads its own feed.
func TestLifecycleFeedAuthorization(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k := e.registeredKey(t, "default's")
		require.NoError(t, e.client.DisableKey(e.ctx, k.ID))

		teamA, err := e.tenants.CreateInstance("team-a")
		require.NoError(t, err)
		apiKey, err := e.tenants.CreateAPIKey(teamA)
		require.NoError(t, err)
		tok, _, err := e.tenants.Exchange(apiKey)
		require.NoError(t, err)

		status, body := feedGet(t, e.ctx, e.srv.URL, "", e.inst, url.Values{"cursor": {"0"}})
		assert.Equal(t, http.StatusUnauthorized, status, "no token: %s", body)
		status, body = feedGet(t, e.ctx, e.srv.URL, "wrong", e.inst, url.Values{"cursor": {"0"}})
		assert.Equal(t, http.StatusUnauthorized, status, "wrong token: %s", body)
		status, body = feedGet(t, e.ctx, e.srv.URL, tok, e.inst, url.Values{"cursor": {"0"}})
		assert.Equal(t, http.StatusUnauthorized, status, "team-a's token for the default instance: %s", body)
		status, body = feedGet(t, e.ctx, e.srv.URL, staticToken, "not-a-uuid", url.Values{"cursor": {"0"}})
		assert.Equal(t, http.StatusBadRequest, status, "malformed instance: %s", body)

		def := feedPage(t, e.ctx, e.srv.URL, staticToken, e.inst, url.Values{"cursor": {"0"}})
		require.Len(t, def.Events, 1)
		assert.Equal(t, crk.LifecycleDisable, def.Events[0].Type)
		assert.Equal(t, "suspended", def.Events[0].State)
		// team-a's feed is its own: empty.
		mine := feedPage(t, e.ctx, e.srv.URL, tok, teamA, url.Values{"cursor": {"0"}})
		assert.Empty(t, mine.Events)
		assert.Equal(t, "0", mine.Cursor)
	})
}

// TestLifecycleFeedShutdown: an http.Server shutting down with a client in a long poll
// returns at once (StopWaiting, registered with RegisterOnShutdown), the client answered
// with an empty page; a client that goes away ends its handler.
func TestLifecycleFeedShutdown(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		api := NewServer(e.tenants)
		handled := make(chan struct{}, 4)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() { handled <- struct{}{} }()
			api.ServeHTTP(w, r)
		}))
		srv.Config.RegisterOnShutdown(api.StopWaiting)
		srv.Start()
		t.Cleanup(srv.Close)
		head := feedPage(t, e.ctx, srv.URL, staticToken, e.inst, nil)
		<-handled

		// A client that goes away.
		ctx, cancel := context.WithCancel(e.ctx)
		gone := make(chan struct{})
		go func() {
			defer close(gone)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+LifecyclePath+"?wait=60s&cursor="+head.Cursor, nil)
			req.Header.Set("Authorization", "Bearer "+staticToken)
			req.Header.Set("bluemix-instance", e.inst)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		time.Sleep(50 * time.Millisecond) // let the request reach the handler (either way, it ends)
		cancel()
		<-gone
		select {
		case <-handled:
		case <-time.After(hangGuard):
			t.Fatal("the handler of a client that went away still waits")
		}

		// A client waiting while the server shuts down.
		answered := make(chan crk.LifecyclePage, 1)
		go func() {
			status, body := feedGet(t, e.ctx, srv.URL, staticToken, e.inst, url.Values{"cursor": {head.Cursor}, "wait": {"60s"}})
			var p crk.LifecyclePage
			if status == http.StatusOK && json.Unmarshal(body, &p) == nil {
				answered <- p
			}
			close(answered)
		}()
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		sctx, scancel := context.WithTimeout(e.ctx, hangGuard)
		defer scancel()
		require.NoError(t, srv.Config.Shutdown(sctx), "Shutdown waited for the long poll")
		t.Logf("shutdown took %s", time.Since(start))
		p, ok := <-answered
		require.True(t, ok, "the waiting client got no 200 answer")
		assert.Empty(t, p.Events)
		assert.Equal(t, head.Cursor, p.Cursor)
	})
}

// TestLifecycleFeedSurvivesRestart: events, and the cursors that reach them, outlive the
// server and its stores; a policy rotation fired by the server's clock has policy set.
func TestLifecycleFeedSurvivesRestart(t *testing.T) {
	forEachServerStore(t, testLifecycleFeedSurvivesRestart)
}

func testLifecycleFeedSurvivesRestart(t *testing.T, st serverStore) {
	open := st.place(t).open
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	opts := crk.Options{Clock: clock, MasterKey: bytes.Repeat([]byte{3}, 32)}
	serve := func() (*Tenants, *httptest.Server, string) {
		tenants, err := open(opts)
		require.NoError(t, err)
		tenants.SetStaticToken(staticToken)
		inst, _ := tenants.Default()
		return tenants, httptest.NewServer(NewServer(tenants)), inst
	}
	tenants, srv, inst := serve()
	_, svc := tenants.Default()
	k, err := svc.CreateRootKey(context.Background(), "policy")
	require.NoError(t, err)
	_, err = svc.Register(context.Background(), k.ID, feedCRN, crk.RegisterOptions{})
	require.NoError(t, err)
	_, err = svc.SetRotationPolicy(context.Background(), k.ID, 1, true)
	require.NoError(t, err)
	head := feedPage(t, context.Background(), srv.URL, staticToken, inst, nil)
	clock.Advance(32 * 24 * time.Hour)
	res, err := tenants.RunDue(context.Background())
	require.NoError(t, err)
	require.Equal(t, []string{k.ID}, res[inst].Rotated)
	srv.Close()
	require.NoError(t, tenants.Close())

	tenants, srv, inst2 := serve()
	t.Cleanup(func() { srv.Close(); tenants.Close() })
	require.Equal(t, inst, inst2)
	p := feedPage(t, context.Background(), srv.URL, staticToken, inst, url.Values{"cursor": {head.Cursor}})
	require.Len(t, p.Events, 1)
	assert.Equal(t, crk.LifecycleRotate, p.Events[0].Type)
	assert.True(t, p.Events[0].Policy, "a rotation by the policy")
	assert.Equal(t, k.KeyVersion.ID, p.Events[0].OldVersion)
	raw, err := json.Marshal(p.Events[0])
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"policy":true`)
}

// TestLifecycleFeedOutlastsServerTimeouts: a long poll is answered even when it outlasts the
// http.Server's read and write timeouts (kms serve's are 30 s and 60 s; a wait may be 60 s).
func TestLifecycleFeedOutlastsServerTimeouts(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		srv := httptest.NewUnstartedServer(NewServer(e.tenants))
		srv.Config.ReadTimeout, srv.Config.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond
		srv.Start()
		t.Cleanup(srv.Close)
		// The head from the environment's server, whose timeouts are the defaults: a
		// request that does not wait may take longer than 100 ms on a loaded machine.
		head := feedPage(t, e.ctx, e.srv.URL, staticToken, e.inst, nil)
		p := feedPage(t, e.ctx, srv.URL, staticToken, e.inst, url.Values{"cursor": {head.Cursor}, "wait": {"500ms"}})
		assert.Empty(t, p.Events)
		assert.Equal(t, head.Cursor, p.Cursor)
	})
}

// TestLifecycleLongPollRevoked: a long poll whose API key is revoked while it waits, by
// another process on the same store (the CLI's kms apikey revoke, another replica), is
// answered with the 401 of any request with the revoked token, never with an event made
// after the revocation: checked before answering (whatever the interval of the checks made
// while waiting), and by those checks when no event ends the wait. A poll whose key is not
// revoked gets its event.
func TestLifecycleLongPollRevoked(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, _ *crk.ManualClock, another func() *Tenants) {
		ctx := context.Background()
		inst, svc := tenants.Default()
		require.NotNil(t, svc)
		other := another()
		for _, tc := range []struct {
			name   string
			every  time.Duration // Server.reauthEvery
			revoke bool
			event  bool
			want   int
		}{
			{"revoked, then an event", time.Hour, true, true, http.StatusUnauthorized},
			{"revoked, no event: the wait ends", time.Millisecond, true, false, http.StatusUnauthorized},
			{"not revoked: the event", time.Millisecond, false, true, http.StatusOK},
		} {
			t.Run(tc.name, func(t *testing.T) {
				k, err := svc.CreateRootKey(ctx, "followed")
				require.NoError(t, err)
				_, err = svc.Register(ctx, k.ID, feedCRN, crk.RegisterOptions{})
				require.NoError(t, err)
				head, err := svc.Lifecycle(ctx, "", 1)
				require.NoError(t, err)
				apiKey, err := tenants.CreateAPIKey(inst)
				require.NoError(t, err)
				tok, _, err := tenants.Exchange(apiKey)
				require.NoError(t, err)

				api := NewServer(tenants)
				api.reauthEvery = tc.every
				// authorized is closed once the poll has passed its first authorization:
				// what follows happens while it waits (or about to).
				authorized := make(chan struct{})
				var once sync.Once
				check := api.authorize
				api.authorize = func(tok, instance string) (*crk.Service, string, error) {
					s, who, err := check(tok, instance)
					if err == nil {
						once.Do(func() { close(authorized) })
					}
					return s, who, err
				}
				srv := httptest.NewServer(api)
				t.Cleanup(srv.Close)

				type answer struct {
					status int
					body   []byte
					err    error
				}
				got := make(chan answer, 1)
				go func() {
					status, body, err := feedFetch(ctx, srv.URL, tok, inst, url.Values{"cursor": {head.Cursor}, "wait": {"60s"}})
					got <- answer{status, body, err}
				}()
				select {
				case <-authorized:
				case a := <-got:
					t.Fatalf("the long poll ended before it waited: %d %s %v", a.status, a.body, a.err)
				case <-time.After(hangGuard):
					t.Fatal("the long poll was never authorized")
				}
				if tc.revoke {
					require.NoError(t, other.RevokeAPIKey(APIKeyID(apiKey)))
				}
				if tc.event {
					_, err = svc.DisableKey(ctx, k.ID)
					require.NoError(t, err)
				}
				changed := time.Now()
				var a answer
				select {
				case a = <-got:
				case <-time.After(2 * MaxLifecycleWait):
					t.Fatal("the long poll never ended")
				}
				if tc.revoke && !tc.event {
					// Ended by the check made while waiting (every millisecond here), not by
					// the one before answering once the poll's 60 s had passed: half of
					// them is a margin of thousands of checks, not a measure of speed.
					assert.Less(t, time.Since(changed), 30*time.Second, "the revocation ended the wait")
				}
				require.NoError(t, a.err)
				require.Equal(t, tc.want, a.status, "%s", a.body)
				if tc.want == http.StatusOK {
					p := page(t, a.status, a.body)
					require.Len(t, p.Events, 1)
					assert.Equal(t, k.ID, p.Events[0].KeyID)
					return
				}
				assert.NotContains(t, string(a.body), k.ID, "no event of the key")
				assert.Equal(t, "UNAUTHORIZED_ERR", ParseError(a.status, a.body).Code)
				// The same answer as a new request with the revoked token.
				status, body, err := feedFetch(ctx, srv.URL, tok, inst, url.Values{"cursor": {head.Cursor}})
				require.NoError(t, err)
				assert.Equal(t, http.StatusUnauthorized, status)
				assert.Equal(t, string(body), string(a.body))
			})
		}
	})
}

// feedFetch asks srvURL for the lifecycle feed as feedGet does, returning its failure
// rather than failing the test: for another goroutine than the test's.
func feedFetch(ctx context.Context, srvURL, tok, inst string, q url.Values) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srvURL+LifecyclePath+"?"+q.Encode(), nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("bluemix-instance", inst)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
