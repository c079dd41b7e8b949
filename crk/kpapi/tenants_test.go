package kpapi

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/fsutil"
	"crkvol/internal/tooltest"
)

// tenantStores are the stores every Tenants test runs over. open returns a Tenants whose
// tokens run on a manual clock, and another, a function opening a second Tenants on the
// same store, as another process (the CLI beside a running server) or replica would.
var tenantStores = []struct {
	name string
	open func(t *testing.T) (tenants *Tenants, clock *crk.ManualClock, another func() *Tenants)
}{
	{"file", openFileTenants},
	{"postgres", openPostgresTenants},
}

func testMasterKey() []byte { return bytes.Repeat([]byte{3}, 32) }

func openFileTenants(t *testing.T) (*Tenants, *crk.ManualClock, func() *Tenants) {
	t.Helper()
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	tenants, err := OpenTenants(dir, crk.Options{Clock: clock, MasterKey: testMasterKey()})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	tenants.tokenClock = clock
	return tenants, clock, func() *Tenants {
		other, err := OpenTenants(dir, crk.Options{MasterKey: testMasterKey()})
		require.NoError(t, err)
		t.Cleanup(func() { other.Close() })
		return other
	}
}

// forEachStore runs test once per tenant store, as a subtest named after it.
func forEachStore(t *testing.T, test func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants)) {
	forEachStoreOf(t, false, test)
}

// forEachStoreLong is forEachStore with the PostgreSQL subtest in the long run only
// (CRKVOL_LONG_TESTS=1, as in CI), for the heavier suites, to keep a plain go test ./...
// within its time; the tenants tests of forEachStore run on PostgreSQL in every run.
func forEachStoreLong(t *testing.T, test func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants)) {
	forEachStoreOf(t, true, test)
}

func forEachStoreOf(t *testing.T, pgLong bool, test func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants)) {
	for _, st := range tenantStores {
		t.Run(st.name, func(t *testing.T) {
			if pgLong && st.name == "postgres" && !tooltest.Long() {
				t.Skip("the PostgreSQL variant runs with CRKVOL_LONG_TESTS=1 (CI)")
			}
			t.Parallel()
			tenants, clock, another := st.open(t)
			test(t, tenants, clock, another)
		})
	}
}

// tokenCount is tenants.TokenCount, which must not fail.
func tokenCount(t *testing.T, tenants *Tenants) int {
	t.Helper()
	n, err := tenants.TokenCount()
	require.NoError(t, err)
	return n
}

// TestTokenExpiry: a token works until its lifetime (on the wall clock, here a manual one) has
// passed; then it is refused and dropped from the table.
func TestTokenExpiry(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, _ func() *Tenants) {
		inst, _ := tenants.Default()
		key, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		tok, life, err := tenants.Exchange(key)
		require.NoError(t, err)
		assert.Equal(t, TokenLifetime, life)
		for _, tc := range []struct {
			name    string
			advance time.Duration
			ok      bool
			left    int
		}{
			{"fresh", 0, true, 1},
			{"just before expiry", TokenLifetime - time.Second, true, 1},
			{"expired", 2 * time.Second, false, 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				clock.Advance(tc.advance)
				_, _, err := tenants.Authorize(tok, inst)
				if tc.ok {
					require.NoError(t, err)
				} else {
					require.ErrorIs(t, err, ErrUnauthorized)
					assert.NotContains(t, err.Error(), tok, "errors never show a token")
				}
				assert.Equal(t, tc.left, tokenCount(t, tenants))
			})
		}
	})
}

// TestExpiredTokensDroppedWithoutUse: expired tokens leave the table on ExpireTokens (the
// server's timer), even if nobody presents them again.
func TestExpiredTokensDroppedWithoutUse(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, _ func() *Tenants) {
		inst, _ := tenants.Default()
		key, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		for range 5 {
			_, _, err := tenants.Exchange(key)
			require.NoError(t, err)
			clock.Advance(time.Minute)
		}
		require.Equal(t, 5, tokenCount(t, tenants))
		clock.Advance(TokenLifetime - 3*time.Minute - time.Second) // the first two are past their lifetime
		tenants.ExpireTokens()
		assert.Equal(t, 3, tokenCount(t, tenants))
		clock.Advance(time.Hour)
		tenants.ExpireTokens()
		assert.Equal(t, 0, tokenCount(t, tenants))
	})
}

// TestTokenTableBounded: the table never holds more than its maximum; when it is full a new
// token evicts the oldest one.
func TestTokenTableBounded(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants) {
		tenants.maxTokens = 8
		inst, _ := tenants.Default()
		key, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		var toks []string
		for range 20 {
			tok, _, err := tenants.Exchange(key)
			require.NoError(t, err)
			toks = append(toks, tok)
			clock.Advance(time.Second)
			assert.LessOrEqual(t, tokenCount(t, tenants), 8)
		}
		assert.Equal(t, 8, tokenCount(t, tenants))
		for i, tok := range toks {
			_, _, err := tenants.Authorize(tok, inst)
			if i < 12 {
				assert.ErrorIs(t, err, ErrUnauthorized, "token %d was evicted", i)
			} else {
				assert.NoError(t, err, "token %d is among the newest", i)
			}
		}
		assert.Equal(t, MaxTokens, another().maxTokens, "the documented maximum is the default")
	})
}

// TestAPIKeyListRevoke: API keys are listed by id (never by the key), revoked by id, and a
// revoked key's tokens stop working at once, also when another process (a second Tenants on
// the same directory, as the CLI beside a running server) revokes it.
func TestAPIKeyListRevoke(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, _ *crk.ManualClock, another func() *Tenants) {
		inst, _ := tenants.Default()
		other, err := tenants.CreateInstance("team-b")
		require.NoError(t, err)
		k1, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		k2, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		k3, err := tenants.CreateAPIKey(other)
		require.NoError(t, err)

		list, err := tenants.ListAPIKeys()
		require.NoError(t, err)
		require.Len(t, list, 3)
		ids := map[string]string{}
		for _, k := range list {
			assert.Regexp(t, `^[0-9a-f]{16}$`, k.ID)
			assert.False(t, k.Created.IsZero())
			for _, key := range []string{k1, k2, k3} {
				assert.NotContains(t, fmt.Sprintf("%+v", k), strings.TrimPrefix(key, "crkvol-"), "a listing never shows a key")
			}
			ids[k.ID] = k.Instance
		}
		assert.Len(t, ids, 3, "ids are distinct")
		assert.Equal(t, inst, list[0].Instance)
		assert.Equal(t, []string{APIKeyID(k1), APIKeyID(k2), APIKeyID(k3)}, []string{list[0].ID, list[1].ID, list[2].ID})
		assert.Equal(t, other, list[2].Instance)

		t1, _, err := tenants.Exchange(k1)
		require.NoError(t, err)
		t2, _, err := tenants.Exchange(k2)
		require.NoError(t, err)
		t3, _, err := tenants.Exchange(k3)
		require.NoError(t, err)

		// Revoked in this process.
		require.NoError(t, tenants.RevokeAPIKey(list[0].ID))
		_, _, err = tenants.Authorize(t1, inst)
		assert.ErrorIs(t, err, ErrUnauthorized, "the revoked key's token stops working")
		_, _, err = tenants.Exchange(k1)
		assert.ErrorIs(t, err, ErrUnauthorized, "the revoked key is refused")
		_, _, err = tenants.Authorize(t2, inst)
		assert.NoError(t, err, "other keys' tokens still work")

		// Revoked by another process.
		cli := another()
		require.NoError(t, cli.RevokeAPIKey(list[2].ID))
		_, _, err = tenants.Authorize(t3, other)
		assert.ErrorIs(t, err, ErrUnauthorized, "a revocation by another process takes effect at once")
		_, _, err = tenants.Authorize(t2, inst)
		assert.NoError(t, err)

		for _, tc := range []struct{ name, id string }{
			{"already revoked", list[0].ID},
			{"unknown", "0123456789abcdef"},
			{"empty", ""},
			{"a key instead of an id", k2},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := tenants.RevokeAPIKey(tc.id)
				require.ErrorIs(t, err, ErrAPIKeyNotFound)
				assert.NotContains(t, err.Error(), strings.TrimPrefix(k2, "crkvol-"))
			})
		}
		list, err = tenants.ListAPIKeys()
		require.NoError(t, err)
		require.Len(t, list, 1)
		assert.Equal(t, ids[list[0].ID], inst)
		require.NoError(t, tenants.RevokeAPIKey(list[0].ID))
		list, err = tenants.ListAPIKeys()
		require.NoError(t, err)
		assert.Empty(t, list)
	})
}

// TestTokenTablePerKey: one API key exchanged in a loop evicts only its own oldest tokens,
// never another key's (another tenant's), and the table's bookkeeping stays exact.
func TestTokenTablePerKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, clock *crk.ManualClock, another func() *Tenants) {
		tenants.maxTokens = 8
		tenants.maxPerKey = 3
		inst, _ := tenants.Default()
		victim, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		greedy, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		var kept []string
		for range 2 {
			tok, _, err := tenants.Exchange(victim)
			require.NoError(t, err)
			kept = append(kept, tok)
		}
		var greedyToks []string
		for range 50 {
			tok, _, err := tenants.Exchange(greedy)
			require.NoError(t, err)
			greedyToks = append(greedyToks, tok)
			clock.Advance(time.Second)
		}
		assert.Equal(t, 5, tokenCount(t, tenants), "2 of the victim's and the greedy key's 3 newest")
		for _, tok := range kept {
			_, _, err := tenants.Authorize(tok, inst)
			assert.NoError(t, err, "another key's token survives a greedy key")
		}
		for i, tok := range greedyToks {
			_, _, err := tenants.Authorize(tok, inst)
			if i < len(greedyToks)-3 {
				assert.ErrorIs(t, err, ErrUnauthorized, "greedy token %d was evicted by its own key", i)
			} else {
				assert.NoError(t, err, "greedy token %d is among its key's newest", i)
			}
		}
		assert.Equal(t, MaxTokensPerKey, another().maxPerKey, "the documented maximum is the default")
		// Expiry empties the per-key lists too.
		clock.Advance(2 * TokenLifetime)
		tenants.ExpireTokens()
		assert.Zero(t, tokenCount(t, tenants))
		if fs, ok := tenants.store.(*fileStore); ok {
			fs.mu.Lock()
			assert.Empty(t, fs.tokens.byKey)
			fs.mu.Unlock()
		}
	})
}

// TestTenantsDirectoryMustBePrivate: the tenants' file holds the API keys' hashes, so a
// directory its group or others can write is refused before anything is read or made in it.
func TestTenantsDirectoryMustBePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chmod(dir, 0o777))
	_, err := OpenTenants(dir, crk.Options{MasterKey: testMasterKey()})
	require.ErrorIs(t, err, fsutil.ErrNotPrivate)
	assert.Contains(t, err.Error(), dir+" has mode 0777")
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, ents)
}
