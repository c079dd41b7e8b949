package main

import (
	"bytes"
	"crkvol/internal/tooltest"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readOnlyState makes a read-only view of dir's state directory (tooltest.ReadOnlyBind) and
// returns its path.
func readOnlyState(t *testing.T, dir string) string {
	t.Helper()
	ro := filepath.Join(dir, "ro-state")
	require.NoError(t, os.Mkdir(ro, 0o700))
	tooltest.ReadOnlyBind(t, filepath.Join(dir, "state"), ro)
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
			if len(args) > 1 && args[1] == "status" {
				// The registry is read read-only, as volume list reads it.
				assert.Regexp(t, `(?m)^Registration +registered$`, out)
			}
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

// TestReadOnlyImage: an image file that can be read but not written (on a read-only bind
// mount of its directory over itself: the tests run as root, whom a 0444 mode does not stop)
// has its status shown, its data read and its registration listed, with the state directory
// writable or read-only too; writing it fails, naming the file and the missing write access.
func TestReadOnlyImage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "roimage"), "id")
	images := filepath.Join(dir, "images")
	require.NoError(t, os.Mkdir(images, 0o700))
	img := filepath.Join(images, "v.img")
	cli(t, dir, "volume", "create", img, "--size", "1MiB", "--key", key)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data.txt"), []byte("read back from a read-only image\n"), 0o600))
	cli(t, dir, "volume", "write", img, "--input", "data.txt")
	require.NoError(t, os.Chmod(img, 0o444))
	tooltest.ReadOnlyBind(t, images, images)
	state := filepath.Join(dir, "state")
	roState := readOnlyState(t, dir)
	const now = "2026-01-01T00:00:00Z"

	for _, tc := range []struct {
		state string
		args  []string
		want  string
	}{
		{state, []string{"volume", "status", img}, "Registration  registered"},
		{state, []string{"volume", "read", img, "--length", "33"}, "read back from a read-only image"},
		{state, []string{"volume", "list"}, img},
		{roState, []string{"volume", "status", img}, "Registration  registered"},
		{roState, []string{"volume", "list"}, img},
	} {
		t.Run(strings.Join(tc.args, " ")+" state "+filepath.Base(tc.state), func(t *testing.T) {
			code, out, stderr := runIn(t, dir, tc.state, now, tc.args...)
			require.Equal(t, 0, code, stderr)
			assert.Contains(t, out, tc.want)
			assert.NotContains(t, out, "error")
			assert.NotContains(t, out, "unknown")
		})
	}
	code, _, stderr := runIn(t, dir, state, now, "volume", "write", img, "--input", "data.txt")
	assert.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, img+": the image file cannot be written (read-only file system)")
}
