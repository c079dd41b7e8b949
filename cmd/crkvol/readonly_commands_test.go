package main

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadOnlyCommands: with a rotation policy due (the clock moved past it), key
// list/show/versions/registrations, volume list/status and events leave the store, its key
// file, the registry and every image byte-identical, and say the rotation is due; the next
// command that changes the state runs it. On a state directory that does not exist they give
// the empty answer and create nothing; key show --reveal is audited but rotates nothing. The
// command lines run in this process (a process each cost ~40 ms of CPU);
// readonly_commands.txtar runs a few of them as processes.
func TestReadOnlyCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	env := map[string]string{"CRKVOL_STATE": state, "CRKVOL_NOW": "2026-06-01T12:00:00Z"}
	later := func(d time.Duration) {
		now, err := time.Parse(time.RFC3339, env["CRKVOL_NOW"])
		require.NoError(t, err)
		env["CRKVOL_NOW"] = now.Add(d).Format(time.RFC3339)
	}
	ok := func(args ...string) (string, string) {
		t.Helper()
		code, stdout, stderr := runCLI(t, env, args...)
		require.Zero(t, code, "crkvol %s: %s", strings.Join(args, " "), stderr)
		return stdout, stderr
	}
	out, _ := ok("--json", "key", "create", "ro")
	key := jsonField(t, out, "id")
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	ok("volume", "create", a, "--size", "1MiB", "--key", key)
	ok("volume", "create", b, "--size", "1MiB", "--key", key)
	ok("key", "policy", key, "--rotation-months", "1")
	later(745 * time.Hour)

	files := []string{filepath.Join(state, "crk.db"), filepath.Join(state, "crk.db.masterkey"), filepath.Join(state, "volumes.db"), a, b}
	snapshot := func() map[string][sha256.Size]byte {
		t.Helper()
		sums := map[string][sha256.Size]byte{}
		for _, f := range files {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			sums[f] = sha256.Sum256(data)
		}
		entries, err := os.ReadDir(state)
		require.NoError(t, err)
		for _, e := range entries {
			sums["entry "+e.Name()] = [sha256.Size]byte{}
		}
		return sums
	}
	before := snapshot()
	due := regexp.MustCompile(`(?m)^crkvol: rotation policy: key ` + key + ` is due for rotation; the next command that changes the state, crkvol agent or crkvol kms serve runs it$`)
	for _, c := range []struct {
		args   string
		stdout string // a regexp stdout must match; "" for any
		due    bool   // stderr says the rotation is due
	}{
		{"key list", "", true},
		{"--json key list", "", false},
		{"key show $KEY", "", false},
		{"--json key show ro", "", false},
		{"key versions $KEY", "", false},
		{"key registrations $KEY", "", false},
		{"volume list", `a\.img`, false},
		{"--json volume list", "", false},
		{"volume status $A", "", true},
		{"--json volume status $B", "", false},
		{"events", "", false},
		{"--json events --key $KEY", "", false},
	} {
		args := strings.Fields(strings.NewReplacer("$KEY", key, "$A", a, "$B", b).Replace(c.args))
		stdout, stderr := ok(args...)
		assert.NotContains(t, stderr, "rotated", "crkvol %s", c.args)
		if c.due {
			assert.Regexp(t, due, stderr, "crkvol %s", c.args)
		}
		if c.stdout != "" {
			assert.Regexp(t, c.stdout, stdout, "crkvol %s", c.args)
		}
	}
	assert.Equal(t, before, snapshot(), "a read-only command changed the state or an image")

	// Nothing ran: the key still has one version. A command that changes the state rotates.
	out, _ = ok("--json", "key", "versions", key)
	assert.Equal(t, 1, strings.Count(out, `"creationDate"`), out)
	_, stderr := ok("key", "sync", key)
	assert.Regexp(t, `(?m)^crkvol: rotation policy rotated key `+key+`$`, stderr)
	out, _ = ok("--json", "key", "versions", key)
	assert.Equal(t, 2, strings.Count(out, `"creationDate"`), out)

	// A state directory that does not exist: the empty answers, and nothing is created.
	fresh := filepath.Join(dir, "fresh")
	env["CRKVOL_STATE"] = fresh
	out, _ = ok("key", "list")
	assert.Regexp(t, `(?m)^KEY ID +NAME +TYPE +STATE +VERSION$`, out)
	out, _ = ok("--json", "key", "list")
	assert.Contains(t, out, `"collectionTotal": 0`)
	out, _ = ok("--json", "volume", "list")
	assert.Regexp(t, `(?m)^\[\]$`, out)
	out, _ = ok("--json", "events")
	assert.Regexp(t, `(?m)^\[\]$`, out)
	code, _, stderr := runCLI(t, env, "key", "show", "11111111-1111-4111-8111-111111111111")
	assert.NotZero(t, code)
	assert.Regexp(t, `key show: .*11111111-1111-4111-8111-111111111111`, stderr)
	assert.NoDirExists(t, fresh)

	// key show --reveal hands out key material: its read is audited (it opens the store
	// read-write), but it runs no rotation either.
	env["CRKVOL_STATE"] = state
	out, _ = ok("--json", "key", "create", "std", "--standard")
	std := jsonField(t, out, "id")
	ok("key", "policy", key, "--rotation-months", "1")
	later(745 * time.Hour)
	_, stderr = ok("key", "show", "std", "--reveal")
	assert.Contains(t, stderr, "rotation policy: key "+key+" is due for rotation")
	assert.NotContains(t, stderr, "rotated")
	out, _ = ok("--json", "events", "--key", std, "--action", "kms.secrets.read")
	assert.Equal(t, 1, strings.Count(out, `"action": "kms.secrets.read"`), out)
}
