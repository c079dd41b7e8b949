package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readOnlyState makes a read-only view of dir's state directory (a read-only bind mount:
// the tests run as root, whom file modes do not stop) and returns its path. It skips the
// test where mounting is not allowed.
func readOnlyState(t *testing.T, dir string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a read-only bind mount needs root")
	}
	ro := filepath.Join(dir, "ro-state")
	require.NoError(t, os.Mkdir(ro, 0o700))
	if out, err := exec.Command("mount", "--bind", "-o", "ro", filepath.Join(dir, "state"), ro).CombinedOutput(); err != nil {
		t.Skipf("cannot make a read-only bind mount here: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", ro).Run() })
	if err := os.WriteFile(filepath.Join(ro, "probe"), nil, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Skipf("the bind mount is not read-only here (%v)", err)
	}
	return ro
}

// runIn runs the crkvol under test in dir with the state directory state and the service
// clock at now; it returns the exit status, stdout and stderr.
func runIn(t *testing.T, dir, state, now string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command("crkvol", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CRKVOL_STATE="+state, "CRKVOL_MASTER_KEY=", "CRKVOL_NOW="+now)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	}
	require.NoError(t, err)
	return 0, out.String(), errb.String()
}

// TestReadOnlyStateDirectory: the read-only commands work on a state directory that cannot
// be written (a read-only bind mount); a rotation policy that came due is reported as due,
// not run; a command that writes fails.
func TestReadOnlyStateDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "readonly"), "id")
	img := filepath.Join(dir, "v.img")
	cli(t, dir, "volume", "create", img, "--size", "1MiB", "--key", key)
	cli(t, dir, "key", "policy", key, "--rotation-months", "1")
	ro := readOnlyState(t, dir)
	const later = "2030-01-01T00:00:00Z" // the policy is due

	for _, args := range [][]string{
		{"key", "list"}, {"key", "show", key}, {"key", "versions", key}, {"key", "registrations", key},
		{"volume", "list"}, {"volume", "status", img}, {"events"}, {"--json", "events"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, stderr := runIn(t, dir, ro, later, args...)
			require.Equal(t, 0, code, stderr)
			assert.NotEmpty(t, out)
			assert.Contains(t, stderr, "crkvol: rotation policy: key "+key+" is due for rotation")
			assert.NotContains(t, stderr, "rotated key")
		})
	}
	code, out, stderr := runIn(t, dir, ro, later, "key", "create", "another")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, stderr, "read-only")
	// Nothing ran: the key still has one version.
	_, out, _ = runIn(t, dir, ro, later, "--json", "key", "versions", key)
	assert.Equal(t, 1, strings.Count(out, `"creationDate"`), out)
}
