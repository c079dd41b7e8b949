package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"crkvol/crk"
)

// TestCompletionScripts runs each shell's generator: each script carries its shell's own
// marker (completion.txtar runs the bash one as a process).
func TestCompletionScripts(t *testing.T) {
	t.Parallel()
	for shell, marker := range map[string]string{"bash": "__start_crkvol", "zsh": "#compdef crkvol", "fish": "complete -c crkvol"} {
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
			if !strings.Contains(stdout.String(), marker) {
				t.Errorf("the %s script does not contain %q:\n%.200s", shell, marker, stdout.String())
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr: %s", stderr.String())
			}
		})
	}
}

// TestCompletionAndHelpUsage: completion takes exactly one of the three shells and help takes
// a command path; anything else is a usage error (exit 2) naming what is wrong, with nothing
// on stdout. The lines run in this process; completion.txtar runs one of each as a process.
func TestCompletionAndHelpUsage(t *testing.T) {
	t.Parallel()
	rows := []struct {
		args   string
		code   int
		stdout string // a regexp stdout must match; "" for empty
		stderr string // a regexp (multi-line) stderr must match; "" for empty
	}{
		{"completion ksh", 2, "", `^crkvol: completion: unknown shell "ksh": want bash, zsh or fish$`},
		{"completion", 2, "", `^crkvol: completion: missing shell: want bash, zsh or fish$`},
		{"completion powershell", 2, "", `want bash, zsh or fish`},
		{"completion bash extra", 2, "", `(?s)^crkvol: completion bash: .*hint: see crkvol completion bash --help`},
		{"help", 0, `(?m)^Usage:`, ""},
		{"help volume create", 0, `crkvol volume create IMG`, ""},
		{"help nosuch", 2, "", `^crkvol: help: unknown help topic "nosuch"$`},
		{"help volume nosuch", 2, "", `^crkvol: help: unknown help topic "volume nosuch"$`},
	}
	for _, r := range rows {
		t.Run(r.args, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			env := func(string) string { return "" }
			code := run(strings.Fields(r.args), strings.NewReader(""), &stdout, &stderr, env)
			if code != r.code {
				t.Fatalf("exit status %d, want %d; stderr:\n%s", code, r.code, stderr.String())
			}
			for _, c := range []struct{ name, got, want string }{{"stdout", stdout.String(), r.stdout}, {"stderr", stderr.String(), r.stderr}} {
				if c.want == "" {
					if c.got != "" {
						t.Errorf("%s is not empty:\n%s", c.name, c.got)
					}
				} else if !regexp.MustCompile("(?m)" + c.want).MatchString(c.got) {
					t.Errorf("%s does not match %q:\n%s", c.name, c.want, c.got)
				}
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
