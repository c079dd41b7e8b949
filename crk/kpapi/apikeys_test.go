package kpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// TestAPIKeyInstances runs the tests of API keys' instances over each store, one after
// another on one Tenants.
func TestAPIKeyInstances(t *testing.T) {
	forEachStoreLong(t, func(t *testing.T, tenants *Tenants, _ *crk.ManualClock, another func() *Tenants) {
		t.Run("bad instances", func(t *testing.T) { apiKeyBadInstances(t, tenants) })
		t.Run("several instances", func(t *testing.T) { apiKeySeveralInstances(t, tenants, another) })
	})
}

// apiKeySeveralInstances: a key made for several instances lists them in the order given,
// its tokens are accepted for each of them and refused for any other, and its sessions
// offer them with the default instance first. tenants holds no API key yet.
func apiKeySeveralInstances(t *testing.T, tenants *Tenants, another func() *Tenants) {
	def, _ := tenants.Default()
	a, err := tenants.CreateInstance("team-a")
	require.NoError(t, err)
	b, err := tenants.CreateInstance("team-b")
	require.NoError(t, err)
	key, err := tenants.CreateAPIKey(a, def)
	require.NoError(t, err)
	single, err := tenants.CreateAPIKey(b)
	require.NoError(t, err)

	for _, tn := range []*Tenants{tenants, another()} {
		list, err := tn.ListAPIKeys()
		require.NoError(t, err)
		require.Len(t, list, 2)
		assert.Equal(t, APIKeyInfo{ID: APIKeyID(key), Instance: a, Instances: []string{a, def}, Created: list[0].Created}, list[0])
		assert.Equal(t, APIKeyInfo{ID: APIKeyID(single), Instance: b, Instances: []string{b}, Created: list[1].Created}, list[1])
	}

	tok, _, err := tenants.Exchange(key)
	require.NoError(t, err)
	singleTok, _, err := tenants.Exchange(single)
	require.NoError(t, err)
	tenants.SetStaticToken(staticToken)
	defer tenants.SetStaticToken("")
	for _, tc := range []struct {
		name, tok, instance string
		ok                  bool
		key                 string // the caller Authorize gives
	}{
		{"first instance", tok, a, true, APIKeyID(key)},
		{"second instance", tok, def, true, APIKeyID(key)},
		{"not its instance", tok, b, false, ""},
		{"an instance nobody made", tok, "00000000-0000-4000-8000-000000000000", false, ""},
		{"single-instance key, its instance", singleTok, b, true, APIKeyID(single)},
		{"single-instance key, another instance", singleTok, a, false, ""},
		{"static token", staticToken, b, true, StaticTokenID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, caller, err := tenants.Authorize(tc.tok, tc.instance)
			if !tc.ok {
				require.ErrorIs(t, err, ErrUnauthorized)
				assert.Contains(t, err.Error(), tc.instance, "the refusal names the instance")
				assert.Empty(t, caller)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.instance, svc.Instance())
			assert.Equal(t, tc.key, caller, "the caller is the token's API key")
		})
	}

	_, s, err := tenants.StartSession(key)
	require.NoError(t, err)
	assert.Equal(t, []string{a, def}, s.Instances, "the key's own order, the default instance not moved first")
	_, s, err = tenants.StartSession(single)
	require.NoError(t, err)
	assert.Equal(t, []string{b}, s.Instances)
}

// apiKeyBadInstances: a key needs at least one instance, each one that exists and none
// twice; a refusal names what is wrong and records nothing.
func apiKeyBadInstances(t *testing.T, tenants *Tenants) {
	def, _ := tenants.Default()
	team, err := tenants.CreateInstance("team-b")
	require.NoError(t, err)
	const nobody = "00000000-0000-4000-8000-000000000000"
	for _, tc := range []struct {
		name      string
		instances []string
		want      error
		names     string
	}{
		{"none", nil, ErrBadInstances, "at least one instance"},
		{"empty", []string{def, ""}, ErrBadInstances, "empty instance"},
		{"twice", []string{def, team, def}, ErrBadInstances, def},
		{"unknown first", []string{nobody, def}, ErrUnknownInstance, nobody},
		{"unknown second", []string{def, nobody}, ErrUnknownInstance, nobody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tenants.CreateAPIKey(tc.instances...)
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.names)
		})
	}
	list, err := tenants.ListAPIKeys()
	require.NoError(t, err)
	assert.Empty(t, list, "no refused key was recorded")
}

// TestOldTenantsFileReadable: a tenants.json written before keys had several instances (an
// entry with "instance" alone) is read as keys of that one instance, and stays so when the
// file is rewritten; a new key is written with both fields, the first instance in
// "instance" for older programs.
func TestOldTenantsFileReadable(t *testing.T) {
	t.Parallel()
	tenants, _, another := openFileTenants(t)
	def, _ := tenants.Default()
	team, err := tenants.CreateInstance("team-b")
	require.NoError(t, err)
	instances, err := tenants.ListInstances()
	require.NoError(t, err)
	const oldKey = "crkvol-an-api-key-made-by-an-older-crkvol-000000000"
	sum := sha256.Sum256([]byte(oldKey))
	old := map[string]any{
		"default":   def,
		"instances": []map[string]any{{"id": team, "name": "team-b", "created": instances[1].Created}},
		"apiKeys":   []map[string]any{{"hash": hex.EncodeToString(sum[:]), "instance": team, "created": "2026-01-02T03:04:05Z"}},
	}
	raw, err := json.MarshalIndent(old, "", "  ")
	require.NoError(t, err)
	path := filepath.Join(tenants.store.(*fileStore).dir, "tenants.json")
	require.NoError(t, os.WriteFile(path, raw, 0o600))

	// Only tenants opens services: a second Tenants on the directory (the CLI beside a
	// server) lists keys, it does not serve them.
	check := func(t *testing.T, tn *Tenants, serve bool) {
		t.Helper()
		list, err := tn.ListAPIKeys()
		require.NoError(t, err)
		require.NotEmpty(t, list)
		assert.Equal(t, APIKeyInfo{ID: APIKeyID(oldKey), Instance: team, Instances: []string{team},
			Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, list[0])
		if !serve {
			return
		}
		tok, _, err := tn.Exchange(oldKey)
		require.NoError(t, err)
		_, _, err = tn.Authorize(tok, team)
		require.NoError(t, err)
		_, _, err = tn.Authorize(tok, def)
		require.ErrorIs(t, err, ErrUnauthorized)
		_, s, err := tn.StartSession(oldKey)
		require.NoError(t, err)
		assert.Equal(t, []string{team}, s.Instances)
	}
	check(t, tenants, true)
	check(t, another(), false)

	newKey, err := tenants.CreateAPIKey(def, team) // rewrites the file
	require.NoError(t, err)
	check(t, tenants, true)
	check(t, another(), false)
	raw, err = os.ReadFile(path)
	require.NoError(t, err)
	var written struct {
		APIKeys []map[string]any `json:"apiKeys"`
	}
	require.NoError(t, json.Unmarshal(raw, &written))
	require.Len(t, written.APIKeys, 2)
	assert.NotContains(t, written.APIKeys[0], "instances", "the old entry is kept as it was")
	newSum := sha256.Sum256([]byte(newKey))
	assert.Equal(t, map[string]any{"hash": hex.EncodeToString(newSum[:]), "instance": def,
		"instances": []any{def, team}, "created": written.APIKeys[1]["created"]}, written.APIKeys[1])
	assert.NotContains(t, string(raw), strings.TrimPrefix(newKey, "crkvol-"), "only the hash is written")
}

// TestMigrationFromVersion1: a database made by the first schema, with instances, API keys
// and a token, is migrated when opened: each key sees its one instance, the token issued
// before still works for that instance only, and sessions, new keys and revocation work.
func TestMigrationFromVersion1(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("migrating a database made by migration 1 runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	t.Parallel()
	url := pgtest.Start(t).NewDatabase(t)
	v1, err := os.ReadFile(filepath.Join("..", "..", "internal", "pgdb", "migrations", "0001_init.sql"))
	require.NoError(t, err)
	const (
		def  = "11111111-1111-4111-8111-111111111111"
		team = "22222222-2222-4222-8222-222222222222"
		k1   = "crkvol-key-one-made-at-schema-version-1-00000000000"
		k2   = "crkvol-key-two-made-at-schema-version-1-00000000000"
		tok  = "a-token-issued-at-schema-version-1"
	)
	hash := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	tokSum := sha256.Sum256([]byte(tok))
	conn, err := pgx.Connect(testContext(t), url)
	require.NoError(t, err)
	for _, stmt := range []struct {
		sql  string
		args []any
	}{
		{`CREATE TABLE crkvol_schema (version integer NOT NULL)`, nil},
		{string(v1), nil},
		{`INSERT INTO crkvol_schema (version) VALUES (1)`, nil},
		{`INSERT INTO kp_instances (id, name, is_default) VALUES ($1, 'default', true), ($2, 'team-b', false)`, []any{def, team}},
		{`INSERT INTO kp_api_keys (hash, instance, created) VALUES ($1, $2, '2026-01-01T00:00:00Z'), ($3, $4, '2026-01-02T00:00:00Z')`,
			[]any{hash(k1), def, hash(k2), team}},
		{`INSERT INTO kp_tokens (hash, instance, key_hash, expires) VALUES ($1, $2, $3, $4)`,
			[]any{tokSum[:], def, hash(k1), clock.Now().Add(TokenLifetime)}},
	} {
		_, err := conn.Exec(testContext(t), stmt.sql, stmt.args...)
		require.NoError(t, err, stmt.sql)
	}
	require.NoError(t, conn.Close(testContext(t)))

	tenants := openReplica(t, url, clock)
	assert.Equal(t, pgdb.LatestVersion, tenants.Database().SchemaVersion())
	gotDef, _ := tenants.Default()
	assert.Equal(t, def, gotDef)
	list, err := tenants.ListAPIKeys()
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, []APIKeyInfo{
		{ID: APIKeyID(k1), Instance: def, Instances: []string{def}, Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{ID: APIKeyID(k2), Instance: team, Instances: []string{team}, Created: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)},
	}, list)
	_, _, err = tenants.Authorize(tok, def)
	require.NoError(t, err, "a token issued before the migration still works")
	_, _, err = tenants.Authorize(tok, team)
	require.ErrorIs(t, err, ErrUnauthorized, "for its key's instance only")
	tok2, _, err := tenants.Exchange(k2)
	require.NoError(t, err)
	_, _, err = tenants.Authorize(tok2, team)
	require.NoError(t, err)
	sid, s, err := tenants.StartSession(k1)
	require.NoError(t, err)
	assert.Equal(t, []string{def}, s.Instances)
	k3, err := tenants.CreateAPIKey(team, def)
	require.NoError(t, err)
	tok3, _, err := tenants.Exchange(k3)
	require.NoError(t, err)
	for _, in := range []string{def, team} {
		_, _, err = tenants.Authorize(tok3, in)
		require.NoError(t, err)
	}
	require.NoError(t, tenants.RevokeAPIKey(APIKeyID(k1)))
	_, _, err = tenants.Authorize(tok, def)
	assert.ErrorIs(t, err, ErrUnauthorized, "revocation ends the old token")
	_, err = tenants.CheckSession(sid)
	assert.ErrorIs(t, err, ErrUnauthorized, "and the session")
}
