package kpapi

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// sessionCount is tenants.SessionCount, which must not fail.
func sessionCount(t *testing.T, tenants *Tenants) int {
	t.Helper()
	n, err := tenants.SessionCount()
	require.NoError(t, err)
	return n
}

// TestSessions runs the session tests over each store, one after another on one Tenants
// (a database costs a third of a second to make): each starts on an empty session table,
// the default lifetime and limits, no static token and the clock on a whole second.
func TestSessions(t *testing.T) {
	forEachStoreLong(t, func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants) {
		for _, tc := range []struct {
			name string
			test func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants)
		}{
			{"start check end", sessionStartCheckEnd},
			{"expiry", sessionExpiry},
			{"ends with its key", sessionEndsWithItsKey},
			{"not tokens", sessionsAreNotTokens},
			{"table bounded", sessionTableBounded},
			{"across replicas", sessionsAcrossReplicas},
		} {
			// Every session of the tests before expires; the clock is on a whole second.
			clock.Set(clock.Now().Add(2 * SessionLifetime).Truncate(time.Second))
			require.NoError(t, tenants.ExpireTokens())
			require.Zero(t, sessionCount(t, tenants))
			tenants.SetSessionLifetime(SessionLifetime)
			tenants.SetStaticToken("")
			tenants.mu.Lock()
			tenants.maxSessions, tenants.maxSessionsPerKey = MaxSessions, MaxSessionsPerKey
			tenants.mu.Unlock()
			t.Run(tc.name, func(t *testing.T) { tc.test(t, tenants, clock, another) })
		}
	})
}

// sessionStartCheckEnd: a session started with an API key is checked by its id until it
// is ended; ending is idempotent and refuses the id at once; nothing shows the id.
func sessionStartCheckEnd(t *testing.T, tenants *Tenants, clock *crk.ManualClock, _ func() *Tenants) {
	def, _ := tenants.Default()
	key, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	clock.Advance(1500 * time.Nanosecond) // a time PostgreSQL cannot keep exactly
	id, s, err := tenants.StartSession(key)
	require.NoError(t, err)
	assert.Regexp(t, `^[A-Za-z0-9_-]{43}$`, id, "32 random bytes in base64url")
	want := Session{APIKeyID: APIKeyID(key), Instances: []string{def},
		Expires: clock.Now().Add(SessionLifetime).Truncate(time.Microsecond)}
	assert.Equal(t, want, s)
	got, err := tenants.CheckSession(id)
	require.NoError(t, err)
	assert.Equal(t, want, got, "CheckSession gives what StartSession gave")
	id2, _, err := tenants.StartSession(key)
	require.NoError(t, err)
	assert.NotEqual(t, id, id2, "every sign-in gets a new session")
	assert.Equal(t, 2, sessionCount(t, tenants))

	require.NoError(t, tenants.EndSession(id))
	_, err = tenants.CheckSession(id)
	require.ErrorIs(t, err, ErrUnauthorized, "an ended session is refused")
	assert.NotContains(t, err.Error(), id, "errors never show a session id")
	_, err = tenants.CheckSession(id2)
	assert.NoError(t, err, "ending one session leaves the key's others")
	for _, again := range []string{id, "", "never-a-session"} {
		assert.NoError(t, tenants.EndSession(again), "ending %q again is no error", again)
	}
	assert.Equal(t, 1, sessionCount(t, tenants))
}

// sessionExpiry: a session lasts its absolute lifetime on the wall clock (a manual one
// here), however much it is used; the lifetime can be changed for new sessions, and expired
// sessions leave the table, on use or on ExpireTokens.
func sessionExpiry(t *testing.T, tenants *Tenants, clock *crk.ManualClock, _ func() *Tenants) {
	def, _ := tenants.Default()
	key, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	long, _, err := tenants.StartSession(key)
	require.NoError(t, err)
	tenants.SetSessionLifetime(10 * time.Minute)
	short, s, err := tenants.StartSession(key)
	require.NoError(t, err)
	assert.Equal(t, clock.Now().Add(10*time.Minute), s.Expires)
	for _, tc := range []struct {
		name      string
		advance   time.Duration
		shortOK   bool
		longOK    bool
		remaining int
	}{
		{"fresh", 0, true, true, 2},
		{"used just before its expiry", 10*time.Minute - time.Second, true, true, 2},
		{"short one expired", time.Second, false, true, 1},
		{"just before the default lifetime", SessionLifetime - 10*time.Minute - time.Second, false, true, 1},
		{"long one expired, although used", time.Second, false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock.Advance(tc.advance)
			for _, c := range []struct {
				id string
				ok bool
			}{{short, tc.shortOK}, {long, tc.longOK}} {
				_, err := tenants.CheckSession(c.id)
				if c.ok {
					assert.NoError(t, err)
				} else {
					assert.ErrorIs(t, err, ErrUnauthorized)
				}
			}
			require.NoError(t, tenants.ExpireTokens())
			assert.Equal(t, tc.remaining, sessionCount(t, tenants))
		})
	}

	tenants.SetSessionLifetime(0)
	_, s, err = tenants.StartSession(key)
	require.NoError(t, err)
	assert.Equal(t, clock.Now().Add(SessionLifetime), s.Expires, "a lifetime of 0 restores the default")
	clock.Advance(SessionLifetime + time.Second)
	require.NoError(t, tenants.ExpireTokens())
	assert.Zero(t, sessionCount(t, tenants), "ExpireTokens drops sessions nobody presents")
}

// sessionEndsWithItsKey: revoking an API key ends its sessions at once, also when another
// process revokes it; another key's sessions stay.
func sessionEndsWithItsKey(t *testing.T, tenants *Tenants, _ *crk.ManualClock, another func() *Tenants) {
	def, _ := tenants.Default()
	k1, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	k2, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	k3, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	s1, _, err := tenants.StartSession(k1)
	require.NoError(t, err)
	s2, _, err := tenants.StartSession(k2)
	require.NoError(t, err)
	s3, _, err := tenants.StartSession(k3)
	require.NoError(t, err)

	require.NoError(t, tenants.RevokeAPIKey(APIKeyID(k1)))
	_, err = tenants.CheckSession(s1)
	assert.ErrorIs(t, err, ErrUnauthorized, "revoked in this process")
	require.NoError(t, another().RevokeAPIKey(APIKeyID(k2)))
	_, err = tenants.CheckSession(s2)
	assert.ErrorIs(t, err, ErrUnauthorized, "revoked by another process")
	_, _, err = tenants.StartSession(k2)
	assert.ErrorIs(t, err, ErrUnauthorized, "a revoked key cannot sign in")
	_, err = tenants.CheckSession(s3)
	assert.NoError(t, err, "another key's session stays")
	assert.Equal(t, 1, sessionCount(t, tenants), "the revoked keys' sessions are dropped")
}

// sessionsAreNotTokens: a session id is not a bearer token and a bearer token is not a
// session id; the static token is neither an API key nor a session; nothing but an API key
// starts a session.
func sessionsAreNotTokens(t *testing.T, tenants *Tenants, _ *crk.ManualClock, _ func() *Tenants) {
	const static = "static-test-token"
	tenants.SetStaticToken(static)
	def, _ := tenants.Default()
	key, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	tok, _, err := tenants.Exchange(key)
	require.NoError(t, err)
	sid, _, err := tenants.StartSession(key)
	require.NoError(t, err)
	_, _, err = tenants.Authorize(static, def)
	require.NoError(t, err, "the static token is a bearer token")
	_, _, err = tenants.Authorize(tok, def)
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		try  func() error
	}{
		{"session id as bearer token", func() error { _, _, err := tenants.Authorize(sid, def); return err }},
		{"bearer token as session", func() error { _, err := tenants.CheckSession(tok); return err }},
		{"static token as session", func() error { _, err := tenants.CheckSession(static); return err }},
		{"API key as session", func() error { _, err := tenants.CheckSession(key); return err }},
		{"empty session", func() error { _, err := tenants.CheckSession(""); return err }},
		{"sign-in with the static token", func() error { _, _, err := tenants.StartSession(static); return err }},
		{"sign-in with a bearer token", func() error { _, _, err := tenants.StartSession(tok); return err }},
		{"sign-in with a session id", func() error { _, _, err := tenants.StartSession(sid); return err }},
		{"sign-in with nothing", func() error { _, _, err := tenants.StartSession(""); return err }},
		{"session id exchanged for a token", func() error { _, _, err := tenants.Exchange(sid); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.try()
			require.ErrorIs(t, err, ErrUnauthorized)
			for _, secret := range []string{sid, tok, static, key} {
				assert.NotContains(t, err.Error(), secret)
			}
		})
	}
	require.NoError(t, tenants.EndSession(tok), "ending a token as a session does nothing")
	_, _, err = tenants.Authorize(tok, def)
	assert.NoError(t, err, "the token still works")
}

// sessionTableBounded: sessions are bounded in all and per API key; a new one evicts
// the key's own oldest first, then the table's oldest.
func sessionTableBounded(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants) {
	tenants.maxSessions, tenants.maxSessionsPerKey = 8, 3
	def, _ := tenants.Default()
	victim, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	greedy, err := tenants.CreateAPIKey(def)
	require.NoError(t, err)
	var kept []string
	for range 2 {
		id, _, err := tenants.StartSession(victim)
		require.NoError(t, err)
		kept = append(kept, id)
		clock.Advance(time.Second)
	}
	var greedyIDs []string
	for range 20 {
		id, _, err := tenants.StartSession(greedy)
		require.NoError(t, err)
		greedyIDs = append(greedyIDs, id)
		clock.Advance(time.Second)
		assert.LessOrEqual(t, sessionCount(t, tenants), 8)
	}
	assert.Equal(t, 5, sessionCount(t, tenants), "the victim's 2 and the greedy key's newest 3")
	for _, id := range kept {
		_, err := tenants.CheckSession(id)
		assert.NoError(t, err, "another key's session survives a greedy key")
	}
	for i, id := range greedyIDs {
		_, err := tenants.CheckSession(id)
		if i < len(greedyIDs)-3 {
			assert.ErrorIs(t, err, ErrUnauthorized, "greedy session %d was evicted by its own key", i)
		} else {
			assert.NoError(t, err, "greedy session %d is among its key's newest", i)
		}
	}

	// The table's limit: keys of one session each push out the oldest sessions.
	tenants.maxSessions = 4
	var newest []string
	for range 4 {
		k, err := tenants.CreateAPIKey(def)
		require.NoError(t, err)
		id, _, err := tenants.StartSession(k)
		require.NoError(t, err)
		newest = append(newest, id)
		clock.Advance(time.Second)
	}
	assert.Equal(t, 4, sessionCount(t, tenants))
	for _, id := range newest {
		_, err := tenants.CheckSession(id)
		assert.NoError(t, err)
	}
	o := another()
	assert.Equal(t, []int{MaxSessions, MaxSessionsPerKey}, []int{o.maxSessions, o.maxSessionsPerKey}, "the documented maxima are the defaults")
	if fs, ok := tenants.store.(*fileStore); ok {
		clock.Advance(2 * SessionLifetime)
		require.NoError(t, tenants.ExpireTokens())
		fs.mu.Lock()
		assert.Empty(t, fs.sessions.byKey, "expiry empties the per-key lists")
		assert.Empty(t, fs.sessions.byHash)
		fs.mu.Unlock()
	}
}

// sessionsAcrossReplicas: on PostgreSQL, a session started on one replica is accepted by
// another, and ended or revoked on one is refused by all at once; the limits hold over the
// sign-ins of both, with a revocation among them. (A state directory keeps its sessions in
// the memory of its one server process.)
func sessionsAcrossReplicas(t *testing.T, a *Tenants, _ *crk.ManualClock, another func() *Tenants) {
	if a.Database() == nil {
		t.Skip("a state directory's sessions live in its server's memory")
	}
	b := another()
	def, _ := a.Default()
	key, err := a.CreateAPIKey(def)
	require.NoError(t, err)
	id, started, err := a.StartSession(key)
	require.NoError(t, err)
	got, err := b.CheckSession(id)
	require.NoError(t, err, "B accepts A's session")
	assert.Equal(t, started, got)

	require.NoError(t, b.EndSession(id))
	_, err = a.CheckSession(id)
	assert.ErrorIs(t, err, ErrUnauthorized, "ended on B, refused on A")

	id2, _, err := b.StartSession(key)
	require.NoError(t, err)
	_, err = a.CheckSession(id2)
	require.NoError(t, err)
	require.NoError(t, b.RevokeAPIKey(APIKeyID(key)))
	_, err = a.CheckSession(id2)
	assert.ErrorIs(t, err, ErrUnauthorized, "revoked on B, refused on A")

	t.Run("limits under concurrent sign-ins and a revocation", func(t *testing.T) {
		for _, tn := range []*Tenants{a, b} {
			tn.maxSessions, tn.maxSessionsPerKey = 10, 4
		}
		keys := make([]string, 4)
		for i := range keys {
			keys[i], err = a.CreateAPIKey(def)
			require.NoError(t, err)
		}
		doomed, err := a.CreateAPIKey(def)
		require.NoError(t, err)
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(keys)*10+2*10+1)
		for _, tn := range []*Tenants{a, b} {
			for _, k := range append([]string{doomed}, keys...) {
				wg.Go(func() {
					for range 10 {
						_, _, err := tn.StartSession(k)
						if k == doomed && errors.Is(err, ErrUnauthorized) {
							err = nil // revoked meanwhile
						}
						errs <- err
					}
				})
			}
		}
		wg.Go(func() { errs <- b.RevokeAPIKey(APIKeyID(doomed)) })
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		// The revocation may have come last, leaving the table short of the doomed key's
		// sessions: ten more sign-ins, over the four keys, fill it again exactly.
		assert.LessOrEqual(t, sessionCount(t, a), 10)
		for i := range 10 {
			_, _, err := a.StartSession(keys[i%len(keys)])
			require.NoError(t, err)
		}
		assert.Equal(t, 10, sessionCount(t, a), "the table is exactly full")
		var perKey []int
		require.NoError(t, a.Database().ReadTx(testContext(t), func(tx pgx.Tx) error {
			rows, err := tx.Query(testContext(t), `SELECT count(*) FROM kp_sessions GROUP BY key_hash`)
			if err != nil {
				return err
			}
			perKey, err = pgx.CollectRows(rows, pgx.RowTo[int])
			return err
		}))
		for _, n := range perKey {
			assert.LessOrEqual(t, n, 4, "no key holds more than its share")
		}
		_, _, err = a.StartSession(doomed)
		assert.ErrorIs(t, err, ErrUnauthorized, "the revoked key signs in no more")
	})
}
