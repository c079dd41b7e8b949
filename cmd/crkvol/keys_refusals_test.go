package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeyRefusals: the key commands' refusals of inproc/keys.txtar and
// inproc/keys_lifecycle.txtar (imported keys rotate only with material of the right size,
// policies only on generated root keys, standard keys never rotate, root keys never reveal,
// bad material and unknown keys), each with its exit status and message, and none changes a
// key. The command lines run in this process; the scripts keep one refusal of each kind.
func TestKeyRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := testEnv(t)
	create := func(args ...string) string {
		t.Helper()
		code, out, stderr := runCLI(t, env, append([]string{"--json", "key", "create"}, args...)...)
		require.Zero(t, code, stderr)
		return jsonField(t, out, "id")
	}
	key := create("volumes")
	imp := create("imported", "--import-material", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	std := create("std", "--standard", "--import-material", "c2VjcmV0IHBheWxvYWQ=")
	short, material := filepath.Join(dir, "short.bin"), filepath.Join(dir, "material.bin")
	require.NoError(t, os.WriteFile(short, []byte("too short\n"), 0o644))
	require.NoError(t, os.WriteFile(material, []byte("0123456789abcdef0123456789ABCDE\n"), 0o644))
	code, before, stderr := runCLI(t, env, "--json", "key", "list")
	require.Zero(t, code, stderr)

	rows := []struct {
		code   int
		args   string
		stderr string // a regexp (multi-line, as in a testscript)
	}{
		{1, "key rotate $IMP", `key material is required to rotate an imported key`},
		{1, "key rotate $IMP --material AAEC", `invalid key material: 24 bits`},
		{1, "key rotate $KEY --material AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", `key material must be provided only if the key is imported`},
		{1, "key policy $IMP --rotation-months 1", `rotation policies can only be set on generated root keys`},
		{1, "key create badfile --material-file $SHORT", `invalid key material`},
		{2, "key create both --import-material AAAA --material-file $MATERIAL", ``},
		{2, "key create bad64 --import-material !!", `not standard base64`},
		{1, "key show $KEY --reveal", `never extractable`},
		{1, "key rotate $STD", `can only be completed with a root key`},
		{1, "key rotate nope", `key does not exist`},
		{2, "key show", ``},
		{2, "key frobnicate x", ``},
		{1, "key show nope", `key does not exist`},
		// keys_lifecycle.txtar's usage errors and out-of-range months.
		{1, "key policy $KEY --rotation-months 0", `^crkvol: key policy: the rotation interval must be an integer between 1 and 12 months: got 0$`},
		{2, "key policy $KEY", ``},
		{2, "key policy $KEY --rotation-months x", ``},
		{2, "key policy $KEY --rotation-months 3 --disable", ``},
		{2, "key purge", ``},
		{2, "key restore a b", ``},
	}
	expand := strings.NewReplacer("$KEY", key, "$IMP", imp, "$STD", std, "$SHORT", short, "$MATERIAL", material)
	for _, r := range rows {
		code, stdout, stderr := runCLI(t, env, strings.Fields(expand.Replace(r.args))...)
		assert.Equal(t, r.code, code, "crkvol %s: %s", r.args, stderr)
		assert.NotEmpty(t, stderr, "crkvol %s says nothing", r.args)
		assert.Empty(t, stdout, "crkvol %s", r.args)
		if r.stderr != "" {
			assert.Regexp(t, regexp.MustCompile("(?m)"+r.stderr), stderr, "crkvol %s", r.args)
		}
	}
	code, after, stderr := runCLI(t, env, "--json", "key", "list")
	require.Zero(t, code, stderr)
	assert.Equal(t, before, after, "a refused key command changed the keys")
}
