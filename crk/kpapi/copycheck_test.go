package kpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// TestCheckCopyTenants: before copying, the check tells an empty database, a complete copy
// and a partial one apart, refuses a database with another default instance or instances
// and API keys of its own, and writes nothing.
func TestCheckCopyTenants(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("the copy check (kms migrate's) runs with CRKVOL_LONG_TESTS=1 (CI), as kms migrate's tests do")
	}
	t.Parallel()
	from, _, _ := openFileTenants(t)
	def, _ := from.Default()
	team, err := from.CreateInstance("team-b")
	require.NoError(t, err)
	_, err = from.CreateAPIKey(def)
	require.NoError(t, err)
	_, err = from.CreateAPIKey(team)
	require.NoError(t, err)
	both, err := from.CreateAPIKey(def, team)
	require.NoError(t, err)
	bothHash := func() string { sum := sha256.Sum256([]byte(both)); return hex.EncodeToString(sum[:]) }()
	cluster := pgtest.Start(t)
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))

	tests := []struct {
		name    string
		prepare func(t *testing.T, url string, db *pgdb.DB)
		copied  bool
		err     error
	}{
		{name: "empty", prepare: func(*testing.T, string, *pgdb.DB) {}},
		{name: "copied", copied: true, prepare: func(t *testing.T, _ string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
		}},
		{name: "partial", prepare: func(t *testing.T, _ string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
			_, err := db.Pool().Exec(testContext(t), `DELETE FROM kp_api_keys WHERE instance = $1`, team)
			require.NoError(t, err)
		}},
		{name: "another default", err: ErrDefaultInstanceMismatch, prepare: func(t *testing.T, url string, _ *pgdb.DB) {
			openReplica(t, url, clock)
		}},
		{name: "another instance", err: ErrTenantsDiffer, prepare: func(t *testing.T, url string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
			_, err := openReplica(t, url, clock).CreateInstance("team-c")
			require.NoError(t, err)
		}},
		{name: "another API key", err: ErrTenantsDiffer, prepare: func(t *testing.T, url string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
			_, err := openReplica(t, url, clock).CreateAPIKey(def)
			require.NoError(t, err)
		}},
		{name: "API key of fewer instances", err: ErrTenantsDiffer, prepare: func(t *testing.T, _ string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
			_, err := db.Pool().Exec(testContext(t), `DELETE FROM kp_api_key_instances WHERE hash = $1 AND instance = $2`, bothHash, team)
			require.NoError(t, err)
		}},
		{name: "API key of its instances in another order", err: ErrTenantsDiffer, prepare: func(t *testing.T, _ string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
			for _, swap := range []string{"position + 2", "3 - position"} { // 0, 1 → 2, 3 → 1, 0
				_, err := db.Pool().Exec(testContext(t), `UPDATE kp_api_key_instances SET position = `+swap+` WHERE hash = $1`, bothHash)
				require.NoError(t, err)
			}
		}},
		{name: "renamed instance", err: ErrTenantsDiffer, prepare: func(t *testing.T, _ string, db *pgdb.DB) {
			require.NoError(t, CopyTenants(testContext(t), from, db))
			_, err := db.Pool().Exec(testContext(t), `UPDATE kp_instances SET name = 'team-x' WHERE id = $1`, team)
			require.NoError(t, err)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := cluster.NewDatabase(t)
			db, err := pgdb.Open(testContext(t), url, pgdb.Options{})
			require.NoError(t, err)
			t.Cleanup(db.Close)
			tc.prepare(t, url, db)
			var before []string
			dump := func() []string {
				rows, err := db.Pool().Query(testContext(t), `SELECT id || ' ' || name || ' ' || is_default FROM kp_instances
					UNION ALL SELECT hash || ' ' || instance FROM kp_api_keys
					UNION ALL SELECT hash || ' ' || instance || ' ' || position FROM kp_api_key_instances ORDER BY 1`)
				require.NoError(t, err)
				var out []string
				for rows.Next() {
					var s string
					require.NoError(t, rows.Scan(&s))
					out = append(out, s)
				}
				require.NoError(t, rows.Err())
				return out
			}
			before = dump()
			copied, err := CheckCopyTenants(testContext(t), from, db)
			assert.Equal(t, before, dump(), "the check writes nothing")
			if tc.err != nil {
				assert.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.copied, copied)
		})
	}
}

// TestListInstancesPostgres: an empty database lists no instance and is left without one;
// a copied one lists the state directory's, the default first.
func TestListInstancesPostgres(t *testing.T) {
	t.Parallel()
	from, _, _ := openFileTenants(t)
	_, err := from.CreateInstance("team-b")
	require.NoError(t, err)
	db, err := pgdb.Open(testContext(t), pgtest.Start(t).NewDatabase(t), pgdb.Options{})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	for range 2 {
		got, err := ListInstancesPostgres(testContext(t), db)
		require.NoError(t, err)
		assert.Empty(t, got)
	}
	copied, err := CheckCopyTenants(testContext(t), from, db)
	require.NoError(t, err)
	assert.False(t, copied, "listing made no default instance")
	require.NoError(t, CopyTenants(testContext(t), from, db))
	want, err := from.ListInstances()
	require.NoError(t, err)
	got, err := ListInstancesPostgres(testContext(t), db)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.True(t, got[0].Default)
	assert.Equal(t, []string{want[0].ID, want[1].ID}, []string{got[0].ID, got[1].ID})
}
