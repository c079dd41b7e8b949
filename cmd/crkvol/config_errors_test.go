package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/txtar"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConfigFileErrors: a config file that cannot be used is an error naming the file (and
// the line, when there is one) and what is wrong, never echoing a secret. The files are
// inproc/config.txtar's; the command lines run in this process (a process each cost ~40 ms of
// CPU), as inproc/config.txtar runs its own; json.txtar runs crkvol config as a process.
func TestConfigFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ar, err := txtar.ParseFile(filepath.Join("testdata", "inproc", "config.txtar"))
	require.NoError(t, err)
	for _, f := range ar.Files {
		if !strings.Contains(f.Name, "/") {
			require.NoError(t, os.WriteFile(filepath.Join(dir, f.Name), f.Data, 0o644))
		}
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "dir.toml"), 0o755))
	env := testEnv(t)
	env["XDG_CONFIG_HOME"] = filepath.Join(dir, "nowhere")
	d := regexp.QuoteMeta(dir)
	rows := []struct {
		file   string
		stderr string // a regexp (multi-line, as in a testscript)
	}{
		{"unknown.toml", `^crkvol: key list: config file ` + d + `/unknown.toml:3: unknown key "stat"`},
		{"syntax.toml", `^crkvol: key list: config file ` + d + `/syntax.toml:2: `},
		{"type.toml", `^crkvol: key list: config file ` + d + `/type.toml:1: kms-insecure: invalid TOML: want true or false$`},
		{"secret.toml", `^crkvol: key list: config file ` + d + `/secret.toml:2: apikey: secrets do not belong in the config file; give the API key in CRKVOL_KMS_APIKEY`},
		{"missing.toml", `^crkvol: key list: config file ` + d + `/missing.toml: `},
		{"dir.toml", `^crkvol: key list: config file ` + d + `/dir.toml: not a regular file$`},
	}
	for _, r := range rows {
		code, stdout, stderr := runCLI(t, env, "--config", filepath.Join(dir, r.file), "key", "list")
		assert.NotZero(t, code, "--config %s: %s", r.file, stdout)
		assert.Regexp(t, regexp.MustCompile("(?m)"+r.stderr), stderr, "--config %s", r.file)
		assert.NotContains(t, stderr, "hunter2", "--config %s", r.file)
	}
	// Each file was refused before the store was opened: no state directory was made.
	assert.NoDirExists(t, env["CRKVOL_STATE"])
}
