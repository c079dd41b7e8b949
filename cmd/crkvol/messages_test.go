package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// TestNoDoubledCommandPath: a failing command's error line names the command path once, in
// its "crkvol: <command>: " prefix, never again in the message (needLocal and the like).
func TestNoDoubledCommandPath(t *testing.T) {
	t.Parallel()
	f := newFakeKMS(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"resources": []any{
			map[string]any{"id": remoteKeyID, "name": "k", "state": 1, "extractable": false, "keyVersion": map[string]string{"id": remoteKeyID}},
		}})
	})
	remote := []struct {
		path string
		args []string
	}{
		{"events", []string{"events"}},
		{"key prune", []string{"key", "prune", remoteKeyID}},
		{"key show", []string{"key", "show", "--reveal", remoteKeyID}},
	}
	for _, tc := range remote {
		code, _, stderr := f.run(tc.args...)
		assert.Equal(t, 1, code, stderr)
		assertPathOnce(t, tc.path, stderr)
	}
	local := []struct {
		path string
		args []string
	}{
		{"volume read", []string{"volume", "read", "nosuch.img"}},
		{"volume status", []string{"volume", "status", "nosuch.img"}},
		{"key show", []string{"key", "show", "nosuch"}},
		{"key rotate", []string{"key", "rotate", "nosuch"}},
		{"volume delete", []string{"volume", "delete", "nosuch.img"}},
	}
	for _, tc := range local {
		dir := t.TempDir()
		env := map[string]string{"CRKVOL_STATE": dir + "/state", "CRKVOL_NOW": "2026-06-01T12:00:00Z"}
		var stdout, stderr bytes.Buffer
		code := run(tc.args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
		assert.NotEqual(t, 0, code, stderr.String())
		assertPathOnce(t, tc.path, stderr.String())
	}
}

// assertPathOnce fails when a line of stderr names the command path more than once.
func assertPathOnce(t *testing.T, path, stderr string) {
	t.Helper()
	assert.Contains(t, stderr, "crkvol: "+path+": ")
	for _, line := range strings.Split(stderr, "\n") {
		rest := strings.TrimPrefix(line, "crkvol: "+path+": ")
		assert.False(t, strings.Contains(rest, path+":") || strings.Contains(rest, path+" "), "command path repeated: %q", line)
	}
}

type syncer struct{}

func (syncer) Sync() error { return nil }

// TestWriteInterruptedHint: the resume hint of an interrupted `volume write` is a command that
// works: tail -c of a regular --input file (quoted for the shell), and for stdin or a pipe the
// number of bytes to skip, never `tail -c +N stdin`.
func TestWriteInterruptedHint(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "my data.bin")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o600))
	for _, tc := range []struct {
		name, input, want string
	}{
		{"stdin", "", "/v.img: wrote the first 100 bytes of the input at offset 4096 (synced); the rest was not written; to resume, skip the first 100 bytes of the input and write the rest with: crkvol volume write /v.img --offset 4196"},
		{"pipe", "/dev/stdin", "skip the first 100 bytes of the input"},
		{"file", file, "/v.img: wrote the first 100 bytes of " + file + " at offset 4096 (synced); the rest was not written; to resume: tail -c +101 '" + file + "' | crkvol volume write /v.img --offset 4196"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := writeInterrupted(syncer{}, "/v.img", tc.input, 4096, 100)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "stdin |")
		})
	}
}

// TestByteBarBinaryUnits: byte progress is in binary units, like every size crkvol prints.
func TestByteBarBinaryUnits(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	bar := byteBar(&out, 400<<20, "writing")
	require.NoError(t, bar.Set64(200<<20))
	require.NoError(t, bar.Finish())
	assert.Contains(t, out.String(), "400 MiB")
	assert.NotContains(t, out.String(), " MB")
}

// TestRewrapBarFramesConsistent: in every frame a rewrap bar draws, the rewrapped and failed
// counts of its description add up to the count of volumes done beside them.
func TestRewrapBarFramesConsistent(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	b := &rewrapBars{w: &gatedWriter{w: &out}, min: 1}
	const n = 40
	for done := 0; done <= n; done++ {
		b.update(volume.RewrapProgress{KeyID: "K", Volumes: n, Done: done, Rewrapped: done - done/10, Failed: done / 10})
	}
	frame := regexp.MustCompile(`rewrapped (\d+), failed (\d+).*\((\d+)/(\d+)`)
	frames := 0
	for _, f := range strings.FieldsFunc(out.String(), func(r rune) bool { return r == '\r' || r == '\n' }) {
		m := frame.FindStringSubmatch(f)
		if m == nil {
			continue
		}
		frames++
		r, _ := strconv.Atoi(m[1])
		fl, _ := strconv.Atoi(m[2])
		d, _ := strconv.Atoi(m[3])
		assert.Equal(t, d, r+fl, "frame %q", f)
	}
	assert.GreaterOrEqual(t, frames, n+1, "a frame per update (every is 0):\n%s", out.String())
}
