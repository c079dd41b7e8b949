package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
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
