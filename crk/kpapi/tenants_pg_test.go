package kpapi

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// openReplica opens a Tenants on the database at url as one `kms serve` replica does: a
// pool of its own, crk services in a directory of its own (the crk store is not under test
// here), tokens on clock.
func openReplica(t *testing.T, url string, clock *crk.ManualClock) *Tenants {
	t.Helper()
	db, err := pgdb.Open(testContext(t), url, pgdb.Options{})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	dir := t.TempDir()
	tenants, err := OpenTenantsPostgres(testContext(t), db, func(id string) (*crk.Service, error) {
		return crk.Open(filepath.Join(dir, id+".db"), crk.Options{Clock: clock, MasterKey: testMasterKey(), Instance: id})
	})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	tenants.tokenClock = clock
	return tenants
}

func openPostgresTenants(t *testing.T) (*Tenants, *crk.ManualClock, func() *Tenants) {
	t.Helper()
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	url := pgtest.Start(t).NewDatabase(t)
	return openReplica(t, url, clock), clock, func() *Tenants { return openReplica(t, url, clock) }
}

// TestTenantsInstances: instances are listed default first, then oldest first, by this
// Tenants and another one on the same store; a service or
// an API key of an instance nobody made is refused as unauthorised.
func TestTenantsInstances(t *testing.T) {
	forEachStore(t, func(t *testing.T, tenants *Tenants, _ *crk.ManualClock, another func() *Tenants) {
		def, svc := tenants.Default()
		require.NotNil(t, svc)
		assert.Equal(t, def, svc.Instance())
		a, err := tenants.CreateInstance("team-a")
		require.NoError(t, err)
		b, err := tenants.CreateInstance("team-b")
		require.NoError(t, err)
		for _, tn := range []*Tenants{tenants, another()} {
			all, err := tn.ListInstances()
			require.NoError(t, err)
			require.Len(t, all, 3)
			assert.Equal(t, InstanceInfo{ID: def, Name: "default", Created: all[0].Created, Default: true}, all[0])
			assert.Equal(t, []string{a, b}, []string{all[1].ID, all[2].ID})
			assert.Equal(t, []string{"team-a", "team-b"}, []string{all[1].Name, all[2].Name})
			assert.False(t, all[1].Created.IsZero())
		}
		got, err := tenants.Service(b)
		require.NoError(t, err)
		assert.Equal(t, b, got.Instance())
		const nobody = "00000000-0000-4000-8000-000000000000"
		_, err = tenants.Service(nobody)
		assert.ErrorIs(t, err, ErrUnauthorized)
		assert.ErrorIs(t, err, ErrUnknownInstance)
		_, err = tenants.CreateAPIKey(nobody)
		assert.ErrorIs(t, err, ErrUnknownInstance)
	})
}

// TestTokensAcrossReplicas: a token issued by one replica is accepted by another, for its
// own instance only; the token limits hold over the tokens of every replica, also when
// they issue at the same time.
func TestTokensAcrossReplicas(t *testing.T) {
	t.Parallel()
	a, clock, another := openPostgresTenants(t)
	b := another()
	inst, _ := a.Default()
	other, err := b.CreateInstance("team-b")
	require.NoError(t, err)
	key, err := b.CreateAPIKey(inst)
	require.NoError(t, err)
	tokA, _, err := a.Exchange(key)
	require.NoError(t, err)
	tokB, _, err := b.Exchange(key)
	require.NoError(t, err)
	for _, tc := range []struct {
		name     string
		tenants  *Tenants
		tok      string
		instance string
		ok       bool
	}{
		{"A's token on B", b, tokA, inst, true},
		{"B's token on A", a, tokB, inst, true},
		{"A's token on B, other instance", b, tokA, other, false},
		{"an unknown token", b, "not-a-token", inst, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := tc.tenants.Authorize(tc.tok, tc.instance)
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, ErrUnauthorized)
			}
		})
	}

	t.Run("limits under concurrent issuing", func(t *testing.T) {
		clock.Advance(2 * TokenLifetime) // the tokens above expire
		for _, tn := range []*Tenants{a, b} {
			tn.maxTokens, tn.maxPerKey = 10, 4
		}
		keys := make([]string, 4)
		for i := range keys {
			keys[i], err = a.CreateAPIKey(inst)
			require.NoError(t, err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(keys)*15)
		for _, tn := range []*Tenants{a, b} {
			for _, k := range keys {
				wg.Go(func() {
					for range 15 {
						_, _, err := tn.Exchange(k)
						errs <- err
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		assert.Equal(t, 10, tokenCount(t, a), "the table is exactly full")
		var perKey []int
		require.NoError(t, a.store.(*pgStore).db.ReadTx(testContext(t), func(tx pgx.Tx) error {
			rows, err := tx.Query(testContext(t), `SELECT count(*) FROM kp_tokens GROUP BY key_hash`)
			if err != nil {
				return err
			}
			perKey, err = pgx.CollectRows(rows, pgx.RowTo[int])
			return err
		}))
		for _, n := range perKey {
			assert.LessOrEqual(t, n, 4, "no key holds more than its share")
		}
	})
}

// TestDefaultInstanceConcurrent: replicas starting together on an empty database agree on
// one default instance.
func TestDefaultInstanceConcurrent(t *testing.T) {
	t.Parallel()
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	url := pgtest.Start(t).NewDatabase(t)
	const n = 4
	dbs := make([]*pgdb.DB, n)
	for i := range dbs {
		db, err := pgdb.Open(testContext(t), url, pgdb.Options{})
		require.NoError(t, err)
		t.Cleanup(db.Close)
		dbs[i] = db
	}
	defs := make([]string, n)
	errs := make([]error, n)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i, db := range dbs {
		wg.Go(func() {
			start.Wait()
			var tn *Tenants
			tn, errs[i] = OpenTenantsPostgres(testContext(t), db, func(id string) (*crk.Service, error) {
				return crk.Open(filepath.Join(t.TempDir(), "crk.db"), crk.Options{Clock: clock, MasterKey: testMasterKey(), Instance: id})
			})
			if errs[i] == nil {
				defs[i], _ = tn.Default()
				tn.Close()
			}
		})
	}
	start.Done()
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assert.Equal(t, defs[0], defs[i], "replica %d", i)
	}
	var count int
	require.NoError(t, dbs[0].ReadTx(testContext(t), func(tx pgx.Tx) error {
		return tx.QueryRow(testContext(t), `SELECT count(*) FROM kp_instances`).Scan(&count)
	}))
	assert.Equal(t, 1, count, "one instance, the default")
}

// TestTokensStoredHashed: the tables hold only sha256 hashes of API keys and tokens, never
// either in clear.
func TestTokensStoredHashed(t *testing.T) {
	t.Parallel()
	tenants, _, _ := openPostgresTenants(t)
	inst, _ := tenants.Default()
	key, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	tok, _, err := tenants.Exchange(key)
	require.NoError(t, err)
	db := tenants.store.(*pgStore).db
	var (
		dump       string
		tokHash    []byte
		keyHash    string
		tokKeyHash string
	)
	require.NoError(t, db.ReadTx(testContext(t), func(tx pgx.Tx) error {
		err := tx.QueryRow(testContext(t), `SELECT
			(SELECT string_agg(k::text, ',') FROM kp_api_keys k) || (SELECT string_agg(t::text, ',') FROM kp_tokens t),
			(SELECT hash FROM kp_tokens), (SELECT key_hash FROM kp_tokens), (SELECT hash FROM kp_api_keys)`).
			Scan(&dump, &tokHash, &tokKeyHash, &keyHash)
		return err
	}))
	for _, secret := range []string{tok, key, strings.TrimPrefix(key, "crkvol-")} {
		assert.NotContains(t, dump, secret, "no secret in clear")
	}
	sum := sha256.Sum256([]byte(tok))
	assert.Equal(t, sum[:], tokHash, "the token's sha256")
	assert.Equal(t, APIKeyID(key), keyID(keyHash), "the key's sha256")
	assert.Equal(t, keyHash, tokKeyHash)
}

// TestCopyTenants: a state directory's instances and API keys, keys of several instances
// included, move to a database, where the same default instance and the same API keys work
// for the same instances; copying again changes nothing, and a database with another
// default instance is refused.
func TestCopyTenants(t *testing.T) {
	t.Parallel()
	from, _, _ := openFileTenants(t)
	def, _ := from.Default()
	team, err := from.CreateInstance("team-b")
	require.NoError(t, err)
	k1, err := from.CreateAPIKey(def)
	require.NoError(t, err)
	k2, err := from.CreateAPIKey(team)
	require.NoError(t, err)
	k3, err := from.CreateAPIKey(team, def)
	require.NoError(t, err)
	wantInstances, err := from.ListInstances()
	require.NoError(t, err)
	wantKeys, err := from.ListAPIKeys()
	require.NoError(t, err)

	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	url := pgtest.Start(t).NewDatabase(t)
	db, err := pgdb.Open(testContext(t), url, pgdb.Options{})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	for range 2 {
		require.NoError(t, CopyTenants(testContext(t), from, db), "copying is idempotent")
	}
	to := openReplica(t, url, clock)
	gotDef, _ := to.Default()
	assert.Equal(t, def, gotDef)
	gotInstances, err := to.ListInstances()
	require.NoError(t, err)
	require.Len(t, gotInstances, len(wantInstances))
	for i, want := range wantInstances {
		got := gotInstances[i]
		assert.Equal(t, []any{want.ID, want.Name, want.Default}, []any{got.ID, got.Name, got.Default})
	}
	gotKeys, err := to.ListAPIKeys()
	require.NoError(t, err)
	require.Len(t, gotKeys, len(wantKeys))
	for i, want := range wantKeys {
		got := gotKeys[i]
		assert.Equal(t, []any{want.ID, want.Instance, want.Instances}, []any{got.ID, got.Instance, got.Instances})
		assert.WithinDuration(t, want.Created, got.Created, time.Microsecond, "PostgreSQL keeps microseconds")
	}
	for _, tc := range []struct {
		key, instance string
		ok            bool
	}{{k1, def, true}, {k2, team, true}, {k3, team, true}, {k3, def, true}, {k1, team, false}, {k2, def, false}} {
		tok, _, err := to.Exchange(tc.key)
		require.NoError(t, err)
		_, _, err = to.Authorize(tok, tc.instance)
		if tc.ok {
			require.NoError(t, err)
		} else {
			require.ErrorIs(t, err, ErrUnauthorized)
		}
	}

	other, _, _ := openPostgresTenants(t)
	err = CopyTenants(testContext(t), from, other.store.(*pgStore).db)
	require.ErrorIs(t, err, ErrDefaultInstanceMismatch)
	assert.ErrorIs(t, CopyTenants(testContext(t), to, db), ErrNotStateDirectory)
}
