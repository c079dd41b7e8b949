package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"crkvol/crk"
)

// TestCompletionScripts runs each shell's generator.
func TestCompletionScripts(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			env := func(string) string { return "" }
			if code := run([]string{"completion", shell}, strings.NewReader(""), &stdout, &stderr, env); code != 0 {
				t.Fatalf("exit status %d: %s", code, stderr.String())
			}
			if stdout.Len() == 0 || !strings.Contains(stdout.String(), "crkvol") {
				t.Errorf("the %s script is empty or does not mention crkvol:\n%.200s", shell, stdout.String())
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr: %s", stderr.String())
			}
		})
	}
}

// TestCompletionStoreInUse checks that a key store held by another process (here: an open
// service) makes the completion come back empty rather than wait or fail.
func TestCompletionStoreInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	svc, err := crk.Open(filepath.Join(dir, "crk.db"), crk.Options{MasterKey: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.CreateKey(context.Background(), crk.CreateOptions{Name: "held", Type: crk.RootKey}); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	env := func(k string) string {
		if k == "CRKVOL_STATE" {
			return dir
		}
		return ""
	}
	if code := run([]string{"__complete", "key", "show", ""}, strings.NewReader(""), &stdout, &stderr, env); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	if got := stdout.String(); got != ":4\n" {
		t.Errorf("completion with the store in use printed %q, want only the directive", got)
	}
	if strings.Contains(stderr.String(), "crkvol:") {
		t.Errorf("stderr: %s", stderr.String())
	}
}

// TestCompletionRemoteKeys: with --kms-url, key completion lists the remote service's keys,
// and a service that fails gives no candidates and no error.
func TestCompletionRemoteKeys(t *testing.T) {
	t.Parallel()
	const id = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"
	for _, tc := range []struct {
		name   string
		status int
		want   string
	}{
		{"listed", http.StatusOK, id + "\tvols\nvols\t" + id + "\n:4\n"},
		{"service fails", http.StatusForbidden, ":4\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeKMS(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_ = json.NewEncoder(w).Encode(map[string]any{"resources": []any{map[string]any{"id": id, "name": "vols", "state": 1}}})
			})
			code, stdout, stderr := f.run("__complete", "key", "show", "")
			if code != 0 || strings.Contains(stderr, "crkvol:") {
				t.Fatalf("exit status %d: %s", code, stderr)
			}
			if stdout != tc.want {
				t.Errorf("stdout %q, want %q", stdout, tc.want)
			}
		})
	}
}
