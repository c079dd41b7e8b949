package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// startCLI starts the crkvol under test in dir; wait returns its exit status and stderr.
func startCLI(t *testing.T, dir string, stdin io.Reader, args ...string) (cmd *exec.Cmd, wait func() (int, string)) {
	t.Helper()
	cmd = exec.Command("crkvol", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CRKVOL_STATE="+filepath.Join(dir, "state"), "CRKVOL_MASTER_KEY=")
	cmd.Stdin = stdin
	var errb bytes.Buffer
	cmd.Stderr = &errb
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, func() (int, string) {
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), errb.String()
		}
		require.NoError(t, err)
		return 0, errb.String()
	}
}

// TestInterruptedWipeResumes: SIGINT stops `volume create --wipe` of a large sparse image
// once progress is recorded: exit status 130, one "interrupted" line saying how far it got and
// how to finish, `status` showing the incomplete wipe, `create --wipe` again pointing at
// `volume wipe`, which finishes it; the data then reads as zeros.
func TestInterruptedWipeResumes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "wipes"), "id")
	img := filepath.Join(dir, "big.img")
	// 1 GiB in the long run, 64 MiB (4 progress records: the interrupt comes after the
	// first, with three to go) in a plain one.
	size := int64(tooltest.Scale(1<<30, 64<<20))
	sizeArg, sizeBytes := fmt.Sprintf("%dMiB", size>>20), strconv.FormatInt(size, 10)
	cmd, wait := startCLI(t, dir, nil, "volume", "create", img, "--size", sizeArg, "--key", key, "--wipe")
	require.Eventually(t, func() bool {
		info, err := volume.Describe(img)
		return err == nil && info.Wipe != nil && info.Wipe.Next > 0
	}, 20*time.Second, 2*time.Millisecond, "the wipe records progress")
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	code, stderr := wait()
	assert.Equal(t, 130, code, stderr)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	require.Len(t, lines, 1, stderr)
	assert.Regexp(t, `^crkvol: volume create: interrupted: .*big\.img: wiped \d+% \(\d+ of `+sizeBytes+` bytes, synced and recorded\); the rest is not wiped yet; run crkvol volume wipe .*big\.img to finish$`, lines[0])

	info, err := volume.Describe(img)
	require.NoError(t, err)
	require.NotNil(t, info.Wipe)
	assert.Less(t, info.Wipe.Next, size, "interrupted before the end")
	status := cli(t, dir, "volume", "status", img)
	assert.Regexp(t, `Wipe +incomplete, \d+% \(\d+ of `+sizeBytes+` bytes zeroed\); run crkvol volume wipe`, status)
	assert.NotContains(t, status, "<nil>")

	_, wait = startCLI(t, dir, nil, "volume", "create", img, "--size", sizeArg, "--key", key, "--wipe")
	code, stderr = wait()
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "exists, with an incomplete wipe")
	assert.Contains(t, stderr, "run crkvol volume wipe")

	cli(t, dir, "volume", "wipe", img)
	assert.NotRegexp(t, `(?m)^Wipe `, cli(t, dir, "volume", "status", img))
	out := filepath.Join(dir, "out.bin")
	cli(t, dir, "volume", "read", img, "--output", out)
	f, err := os.Open(out)
	require.NoError(t, err)
	defer f.Close()
	buf, zeros := make([]byte, 1<<20), make([]byte, 1<<20)
	var total int64
	for {
		n, err := io.ReadFull(f, buf)
		total += int64(n)
		require.True(t, bytes.Equal(buf[:n], zeros[:n]), "non-zero data near byte %d", total)
		if err != nil {
			break
		}
	}
	assert.Equal(t, size, total)
}

// TestInterruptedWrite: SIGTERM stops `volume write` from a stalled stdin at once: exit
// status 143, one line saying how many bytes were written and synced and how to resume, and
// those bytes read back.
func TestInterruptedWrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "writes"), "id")
	cli(t, dir, "volume", "create", "w.img", "--size", "64MiB", "--key", key)
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	defer pw.Close()
	cmd, wait := startCLI(t, dir, pr, "volume", "write", "w.img")
	pr.Close()
	src := randBytes(8<<20, 3)
	_, err = pw.Write(src) // returns once the command has read all but the pipe's buffer
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond) // let it write what it read, then block on stdin
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	code, stderr := wait()
	assert.Equal(t, 143, code, stderr)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	require.Len(t, lines, 1, stderr)
	assert.Regexp(t, `^crkvol: volume write: interrupted: /.*/w\.img: wrote the first 8388608 bytes of the input at offset 0 \(synced\); the rest was not written; to resume, skip the first 8388608 bytes of the input and write the rest with: crkvol volume write /.*/w\.img --offset 8388608$`, lines[0])
	out := filepath.Join(dir, "back.bin")
	cli(t, dir, "volume", "read", "w.img", "--length", "8388608", "--output", out)
	back, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(src, back), "the written bytes read back")
}

// TestRewrapInterruptedMessage: an interrupted rewrap pass says what it did, what remains and
// that key sync finishes it.
func TestRewrapInterruptedMessage(t *testing.T) {
	cases := []struct {
		name string
		reps []*volume.Report
		want string
	}{
		{"none", nil, ""},
		{"one pass", []*volume.Report{{KeyID: "k1", NewVersion: "v2", Volumes: 10, Rewrapped: 3, AlreadyCurrent: 1,
			Failed: map[string]error{"a": context.Canceled, "b": context.Canceled, "c": context.Canceled, "d": context.Canceled, "e": context.Canceled, "f": context.Canceled}}},
			"rewrapped 3 of 10 volumes of key k1 to version v2 (already current 1); 6 not done keep their old, still valid wrapping; run crkvol key sync k1 to rewrap them"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, ok := rewrapInterrupted(c.reps)
			assert.Equal(t, c.want != "", ok)
			assert.Equal(t, c.want, msg)
		})
	}
}

// TestInterruptedRead: SIGINT stops `volume read` between chunks: exit status 130 and one
// line saying how much of the output was written and how to read the rest.
func TestInterruptedRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "reads"), "id")
	cli(t, dir, "volume", "create", "r.img", "--size", "1GiB", "--key", key)
	out := filepath.Join(dir, "out.bin")
	cmd, wait := startCLI(t, dir, nil, "volume", "read", "r.img", "--output", out)
	require.Eventually(t, func() bool {
		st, err := os.Stat(out)
		return err == nil && st.Size() > 0
	}, 20*time.Second, 2*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	code, stderr := wait()
	assert.Equal(t, 130, code, stderr)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	require.Len(t, lines, 1, stderr)
	m := regexp.MustCompile(`^crkvol: volume read: interrupted: /.*/r\.img: read (\d+) of 1073741824 bytes from offset 0 to /.*out\.bin, which is incomplete; to read the rest: crkvol volume read /.*/r\.img --offset (\d+) --length (\d+)$`).FindStringSubmatch(lines[0])
	require.NotNil(t, m, lines[0])
	assert.Equal(t, m[1], m[2])
	st, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, m[1], strconv.FormatInt(st.Size(), 10), "the output holds what the message says")
}
