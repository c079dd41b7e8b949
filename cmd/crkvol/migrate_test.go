package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// TestMigrateResumesAndVerifiesWithoutWriting: a run that failed inside an instance's copy
// (the tenants copied, the instance opened in the database, its copy never committed) is
// completed by running kms migrate again; a later run, past the lifecycle feed's retention,
// verifies the copy and writes nothing into the database.
func TestMigrateResumesAndVerifiesWithoutWriting(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("starts a PostgreSQL cluster of its own: runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	env := func(now string) map[string]string {
		return map[string]string{"CRKVOL_STATE": state, "CRKVOL_NOW": now}
	}
	cli := func(now string, args ...string) string {
		t.Helper()
		code, stdout, stderr := runCLI(t, env(now), args...)
		require.Equal(t, 0, code, "crkvol %v: %s", args, stderr)
		return stdout
	}
	var key struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(cli("2026-01-01T12:00:00Z", "--json", "key", "create", "fed")), &key))
	cli("2026-01-01T12:00:00Z", "key", "disable", key.ID)
	cli("2026-01-01T12:01:00Z", "key", "enable", key.ID) // two lifecycle events on 1 January
	var instances []struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(cli("2026-01-01T12:02:00Z", "--json", "kms", "instance", "list")), &instances))
	require.Len(t, instances, 1)
	inst := instances[0].ID

	// The failed run: tenants copied, the instance opened in the database, no copy.
	url := pgtest.Start(t).NewDatabase(t)
	ctx := context.Background()
	opts := crk.Options{MasterKeyFile: filepath.Join(state, masterKeyFileName)}
	src, err := kpapi.OpenTenants(state, opts)
	require.NoError(t, err)
	db, err := pgdb.Open(ctx, url, pgdb.Options{})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, kpapi.CopyTenants(ctx, src, db))
	require.NoError(t, src.Close())
	services, err := crk.OpenDatabase(ctx, url, nil)
	require.NoError(t, err)
	o := opts
	o.Instance = inst
	half, err := services.Open(o)
	require.NoError(t, err)
	require.NoError(t, half.Close())
	require.NoError(t, services.Close())

	out := cli("2026-01-02T12:00:00Z", "kms", "migrate", "--from", state, "--to", url)
	assert.Contains(t, out, "verified")
	assert.Regexp(t, `(?m)^`+inst+` +default +1 +0 +\d+ +2 +default$`, out, "the instance left empty is copied, not taken for a copy")

	feed := func() (n, pruned int64) {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		defer conn.Close(ctx)
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM crk_feed WHERE instance = $1`, inst).Scan(&n))
		require.NoError(t, conn.QueryRow(ctx, `SELECT feed_pruned FROM crk_instances WHERE id = $1`, inst).Scan(&pruned))
		return n, pruned
	}
	n, pruned := feed()
	assert.Equal(t, int64(2), n)

	// Two months later (past the feed's 30 days), a run verifies and writes nothing.
	out = cli("2026-03-01T12:00:00Z", "kms", "migrate", "--from", state, "--to", url)
	assert.Regexp(t, `(?m)^`+inst+` +default +1 .*already copied$`, out)
	n2, pruned2 := feed()
	assert.Equal(t, n, n2, "no lifecycle event deleted by a verifying run")
	assert.Equal(t, pruned, pruned2)
}
