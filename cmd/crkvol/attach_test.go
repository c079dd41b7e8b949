package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// cli runs the crkvol under test (the test binary, put in $PATH by testscript) in dir.
func cli(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("crkvol", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CRKVOL_STATE="+filepath.Join(dir, "state"), "CRKVOL_MASTER_KEY=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Run(), "crkvol %s: %s", strings.Join(args, " "), errb.String())
	return out.String()
}

func jsonField(t *testing.T, s, field string) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(s), &m), s)
	v, ok := m[field].(string)
	require.True(t, ok, "no %s in %s", field, s)
	return v
}

// TestRotateWhileAttachedAndCopying: while nbdcopy streams a 32 MiB write (8 MiB outside the
// long run) into an attached volume, the volume's root key is rotated; the rotation rewraps the attached volume's header,
// the copy finishes without error, and the data verifies through NBD and after detach.
func TestRotateWhileAttachedAndCopying(t *testing.T) {
	t.Parallel()
	nbdcopy := tooltest.Require(t, "nbdcopy")["nbdcopy"]
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "live"), "id")
	// nbdcopy cannot finish before its stdin closes, after the rotation, whatever the size.
	size := tooltest.Scale(32<<20, 8<<20)
	cli(t, dir, "volume", "create", "live.img", "--size", strconv.Itoa(size>>20)+"MiB", "--key", key)
	v1 := jsonField(t, cli(t, dir, "--json", "volume", "status", "live.img"), "keyVersion")
	src := randBytes(size, 11)

	sock := filepath.Join(dir, "live.sock")
	attach := exec.Command("crkvol", "volume", "attach", "live.img", "--listen", "unix:"+sock)
	attach.Dir = dir
	attach.Env = append(os.Environ(), "CRKVOL_STATE="+filepath.Join(dir, "state"), "CRKVOL_MASTER_KEY=")
	var attachErr bytes.Buffer
	attach.Stderr = &attachErr
	require.NoError(t, attach.Start())
	t.Cleanup(func() { _ = attach.Process.Kill(); _ = attach.Wait() })
	require.Eventually(t, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	uri := "nbd+unix:///?socket=" + sock

	// nbdcopy reads the data from a pipe: half of it now, the rest after the rotation, so the
	// copy is certainly in progress while the key rotates.
	copyCmd := exec.Command(nbdcopy, "-", uri)
	stdin, err := copyCmd.StdinPipe()
	require.NoError(t, err)
	var copyOut bytes.Buffer
	copyCmd.Stdout, copyCmd.Stderr = &copyOut, &copyOut
	require.NoError(t, copyCmd.Start())
	_, err = stdin.Write(src[:size/2])
	require.NoError(t, err)

	out := cli(t, dir, "key", "rotate", key)
	assert.Contains(t, out, "rewrapped 1 of 1 volumes")
	v2 := jsonField(t, cli(t, dir, "--json", "volume", "status", "live.img"), "keyVersion")
	assert.NotEqual(t, v1, v2, "the attached volume was rewrapped to the new version")
	require.NoError(t, copyCmd.Process.Signal(syscall.Signal(0)), "nbdcopy was still copying during the rotation")

	_, err = stdin.Write(src[size/2:])
	require.NoError(t, err)
	require.NoError(t, stdin.Close())
	require.NoError(t, copyCmd.Wait(), "nbdcopy: %s", copyOut.String())

	back := filepath.Join(dir, "back.bin")
	require.NoError(t, exec.Command(nbdcopy, uri, back).Run())
	got, err := os.ReadFile(back)
	require.NoError(t, err)
	require.True(t, bytes.Equal(src, got), "data read back through NBD differs")

	cli(t, dir, "volume", "detach", "live.img")
	require.NoError(t, attach.Wait(), attachErr.String())
	assert.Regexp(t, `detached .*/live\.img: flushed, closed, key cleared`, attachErr.String())
	after := filepath.Join(dir, "after.bin")
	cli(t, dir, "volume", "read", "live.img", "--output", after)
	got, err = os.ReadFile(after)
	require.NoError(t, err)
	require.True(t, bytes.Equal(src, got), "data read after detach differs")
	// Opening it did not need the old version again: the header keeps the new wrapping.
	assert.Equal(t, v2, jsonField(t, cli(t, dir, "--json", "volume", "status", "live.img"), "keyVersion"))
}

// TestAttachMaxConnections: --max-connections bounds the NBD clients served at once (further
// ones are disconnected without a greeting, and a place frees up when one leaves), and a
// value below 1 is a usage error.
func TestAttachMaxConnections(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "conns"), "id")
	cli(t, dir, "volume", "create", "c.img", "--size", "4MiB", "--key", key)

	for _, bad := range []string{"0", "-3"} {
		cmd := exec.Command("crkvol", "volume", "attach", "c.img", "--max-connections", bad)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CRKVOL_STATE="+filepath.Join(dir, "state"), "CRKVOL_MASTER_KEY=")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "--max-connections %s: %s", bad, out)
		assert.Equal(t, 1, ee.ExitCode(), "--max-connections %s parses but is out of range (exit 1): %s", bad, out)
		assert.Contains(t, string(out), "--max-connections "+bad+": want at least 1")
	}
	help := cli(t, dir, "volume", "attach", "--help")
	assert.Regexp(t, `--max-connections int +.*\(default 64\)`, help)

	sock := filepath.Join(dir, "c.sock")
	attach := exec.Command("crkvol", "volume", "attach", "c.img", "--listen", "unix:"+sock, "--max-connections", "2")
	attach.Dir = dir
	attach.Env = append(os.Environ(), "CRKVOL_STATE="+filepath.Join(dir, "state"), "CRKVOL_MASTER_KEY=")
	var attachErr bytes.Buffer
	attach.Stderr = &attachErr
	require.NoError(t, attach.Start())
	t.Cleanup(func() { _ = attach.Process.Kill(); _ = attach.Wait() })

	// greeted dials and reports whether the server greets the client.
	greeted := func() (net.Conn, bool) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return nil, false
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := io.ReadFull(c, make([]byte, 18))
		return c, n == 18
	}
	var first net.Conn
	require.Eventually(t, func() bool {
		c, ok := greeted()
		if ok {
			first = c
		} else if c != nil {
			c.Close()
		}
		return ok
	}, 20*time.Second, 20*time.Millisecond)
	defer first.Close()
	second, ok := greeted()
	require.True(t, ok, "a second client is served")
	defer second.Close()
	third, ok := greeted()
	assert.False(t, ok, "a third client is disconnected at once")
	if third != nil {
		third.Close()
	}
	first.Close()
	require.Eventually(t, func() bool {
		c, ok := greeted()
		if c != nil {
			c.Close()
		}
		return ok
	}, 10*time.Second, 20*time.Millisecond, "a place frees up when a client leaves")

	require.NoError(t, attach.Process.Signal(syscall.SIGTERM))
	require.NoError(t, attach.Wait(), attachErr.String())
	assert.Contains(t, attachErr.String(), "too many connections")
	assert.Contains(t, attachErr.String(), "max=2")
}

// TestNBDURI: the socket path is percent-encoded as an RFC 3986 query value (a space is
// %20, never "+", which NBD clients read as a plus sign; "/" stays) and the export name as a
// path segment.
func TestNBDURI(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, network, addr, export, want string
	}{
		{"unix", "unix", "/tmp/vol.sock", "", "nbd+unix:///?socket=/tmp/vol.sock"},
		{"unix space", "unix", "/tmp/my dir/vol.sock", "", "nbd+unix:///?socket=/tmp/my%20dir/vol.sock"},
		{"unix reserved", "unix", "/tmp/a+b&c=d#e?f%g.sock", "", "nbd+unix:///?socket=/tmp/a%2Bb%26c%3Dd%23e%3Ff%25g.sock"},
		{"unix export", "unix", "/s", "my disk/1", "nbd+unix:///my%20disk%2F1?socket=/s"},
		{"tcp", "tcp", "127.0.0.1:10809", "", "nbd://127.0.0.1:10809/"},
		{"tcp export", "tcp", "[::1]:10809", "a b", "nbd://[::1]:10809/a%20b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tc.want, nbdURI(tc.network, tc.addr, tc.export))
		})
	}
}
