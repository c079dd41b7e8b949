package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runCLI runs one command line with the given environment and returns its exit status, stdout
// and stderr.
func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
	return code, stdout.String(), stderr.String()
}

func testEnv(t *testing.T) map[string]string {
	return map[string]string{"CRKVOL_STATE": filepath.Join(t.TempDir(), "state"), "CRKVOL_NOW": "2026-06-01T12:00:00Z"}
}

var cursorLine = regexp.MustCompile(`(?m)^more events: next page with --cursor ([0-9a-f]{32})$`)

func eventSeqs(t *testing.T, stdout string) []uint64 {
	t.Helper()
	var evs []struct{ Seq uint64 }
	if err := json.Unmarshal([]byte(stdout), &evs); err != nil {
		t.Fatalf("events output is not a JSON array: %v\n%s", err, stdout)
	}
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// TestEventsPaging: `crkvol events` lists newest first a page at a time, printing the cursor
// of the next page, and the pages continue where they stopped while new events arrive.
func TestEventsPaging(t *testing.T) {
	env := testEnv(t)
	code, out, stderr := runCLI(t, env, "--json", "key", "create", "paged")
	if code != 0 {
		t.Fatalf("key create: %d %s", code, stderr)
	}
	var key struct{ ID string }
	if err := json.Unmarshal([]byte(out), &key); err != nil {
		t.Fatal(err)
	}
	// Five more events: rotation policy writes (reads by key show are not audited: it opens
	// the store read-only).
	for range 5 {
		if code, _, stderr := runCLI(t, env, "key", "policy", key.ID, "--rotation-months", "1"); code != 0 {
			t.Fatalf("key policy: %s", stderr)
		}
	}
	code, out, _ = runCLI(t, env, "--json", "events", "--key", key.ID, "--limit", "0")
	if code != 0 {
		t.Fatal("events failed")
	}
	all := eventSeqs(t, out)
	if len(all) != 6 || all[0] < all[5] {
		t.Fatalf("want 6 events newest first, got seqs %v", all)
	}

	// A page that holds exactly what is left offers no next page.
	code, _, stderr = runCLI(t, env, "--json", "events", "--key", key.ID, "--limit", "6")
	if code != 0 || cursorLine.MatchString(stderr) || strings.Contains(stderr, "cursor") {
		t.Fatalf("events --limit 6 of 6: exit %d, stderr %q", code, stderr)
	}

	var got []uint64
	args := []string{"--json", "events", "--key", key.ID, "--limit", "4"}
	for page := 0; ; page++ {
		code, out, stderr := runCLI(t, env, args...)
		if code != 0 {
			t.Fatalf("events page %d: %s", page, stderr)
		}
		got = append(got, eventSeqs(t, out)...)
		m := cursorLine.FindStringSubmatch(stderr)
		if m == nil {
			break
		}
		if page > 3 {
			t.Fatal("paging does not end")
		}
		runCLI(t, env, "key", "policy", key.ID, "--rotation-months", "2") // a new event between pages
		args = []string{"--json", "events", "--key", key.ID, "--limit", "4", "--cursor", m[1]}
	}
	if !equalSeqs(got, all) {
		t.Errorf("pages gave %v, want %v", got, all)
	}

	code, out, _ = runCLI(t, env, "--json", "events", "--key", key.ID, "--limit", "1", "--oldest-first")
	if code != 0 || !equalSeqs(eventSeqs(t, out), all[len(all)-1:]) {
		t.Errorf("--oldest-first --limit 1: %s", out)
	}
}

func equalSeqs(a, b []uint64) bool {
	return len(a) == len(b) && (len(a) == 0 || string(seqBytes(a)) == string(seqBytes(b)))
}

func seqBytes(s []uint64) []byte {
	b, _ := json.Marshal(s)
	return b
}

// TestEventRetentionFlags: the retention flags and variables configure the embedded service,
// which applies them when a command that changes the state opens it (here key create: a
// command that only reads, such as events, opens the store read-only and deletes nothing);
// bad values are usage errors.
func TestEventRetentionFlags(t *testing.T) {
	env := testEnv(t)
	for _, name := range []string{"a", "b", "c", "d"} {
		if code, _, stderr := runCLI(t, env, "key", "create", "kept-"+name); code != 0 {
			t.Fatalf("key create: %s", stderr)
		}
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		n    int // events listed
	}{
		{"default keeps all", nil, nil, 0, 5},
		{"count flag", nil, []string{"--event-max-count", "3"}, 0, 3},
		{"count variable", map[string]string{"CRKVOL_EVENT_MAX_COUNT": "2"}, nil, 0, 2},
		{"age flag", nil, []string{"--now", "2026-09-01T12:00:00Z", "--event-max-age", "30d"}, 0, 1}, // the new key's
		{"bad count", nil, []string{"--event-max-count", "many"}, 2, 0},
		{"negative age", nil, []string{"--event-max-age", "-1h"}, 2, 0},
		{"bad limit", nil, []string{"--limit", "-1"}, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := map[string]string{}
			for k, v := range env {
				e[k] = v
			}
			for k, v := range tc.env {
				e[k] = v
			}
			if tc.code == 0 {
				create := append([]string{"key", "create", "trimming-" + tc.name}, tc.args...)
				if code, _, stderr := runCLI(t, e, create...); code != 0 {
					t.Fatalf("key create: %s", stderr)
				}
			}
			args := append([]string{"--json", "events", "--limit", "0", "--action", "kms.secrets.create"}, tc.args...)
			code, out, stderr := runCLI(t, e, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, stderr)
			}
			if code == 0 && len(eventSeqs(t, out)) != tc.n {
				t.Errorf("%d events, want %d: %s", len(eventSeqs(t, out)), tc.n, out)
			}
		})
	}
}

// TestMasterKeyEnv: CRKVOL_MASTER_KEY (read by the command, passed to the library) holds the
// key service's master key instead of the key file; a malformed or wrong one is refused.
func TestMasterKeyEnv(t *testing.T) {
	key := func(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }
	env := testEnv(t)
	env[masterKeyEnv] = key(1)
	if code, _, stderr := runCLI(t, env, "key", "create", "env-key"); code != 0 {
		t.Fatalf("key create: %s", stderr)
	}
	if _, err := os.Stat(filepath.Join(env["CRKVOL_STATE"], "crk.db.masterkey")); !os.IsNotExist(err) {
		t.Fatalf("a key file was made although the key came from %s: %v", masterKeyEnv, err)
	}
	tests := []struct {
		name, value string
		code        int
		stderr      string
	}{
		{"same key", key(1), 0, ""},
		{"not base64", "not base64!", 1, "crkvol: key list: CRKVOL_MASTER_KEY must be 32 bytes in standard base64\n"},
		{"short", base64.StdEncoding.EncodeToString([]byte("short")), 1, "crkvol: key list: CRKVOL_MASTER_KEY must be 32 bytes in standard base64\n"},
		{"another key", key(2), 1, "service master key does not match the store"},
		{"unset: no key file for this store", "", 1, "crkvol: key list: store " + filepath.Join(env["CRKVOL_STATE"], "crk.db") + " exists but its master key file " +
			filepath.Join(env["CRKVOL_STATE"], "crk.db.masterkey") + " does not\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := map[string]string{"CRKVOL_STATE": env["CRKVOL_STATE"], "CRKVOL_NOW": env["CRKVOL_NOW"], masterKeyEnv: tc.value}
			code, _, stderr := runCLI(t, e, "key", "list")
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d with %q", code, stderr, tc.code, tc.stderr)
			}
			if strings.Contains(stderr, tc.value) && tc.value != "" {
				t.Errorf("the key's value is echoed: %q", stderr)
			}
			if tc.name != "another key" && strings.Contains(stderr, "does not match") {
				t.Errorf("not a mismatch, but reported as one: %q", stderr)
			}
		})
	}
	// A key file others can read: its own message, not a mismatch. (A command that only
	// reads creates no store: key create makes it.)
	dir := t.TempDir()
	e := map[string]string{"CRKVOL_STATE": dir, "CRKVOL_NOW": env["CRKVOL_NOW"]}
	if code, _, stderr := runCLI(t, e, "key", "create", "file-key"); code != 0 {
		t.Fatalf("key create: %s", stderr)
	}
	if err := os.Chmod(filepath.Join(dir, "crk.db.masterkey"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, e, "key", "list")
	want := "crkvol: key list: master key file " + filepath.Join(dir, "crk.db.masterkey") + " has mode -rw-r--r--; it must be 0600 (readable by its owner only)\n"
	if code != 1 || stderr != want {
		t.Fatalf("exit %d, stderr %q; want 1 with %q", code, stderr, want)
	}
}

// TestEventTime: --since and --until take an RFC 3339 time or a non-negative duration before
// now (Go's units, d for days); anything else is a usage error naming the flag.
func TestEventTime(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{"", time.Time{}, false},
		{"2026-05-01T10:00:00Z", time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), false},
		{"2026-05-01T12:00:00+02:00", time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"1h30m", now.Add(-90 * time.Minute), false},
		{"0s", now, false},
		{"7d", now.Add(-7 * 24 * time.Hour), false},
		{"-5m", time.Time{}, true},
		{"-1d", time.Time{}, true},
		{"1.5d", time.Time{}, true},
		{"yesterday", time.Time{}, true},
		{"2026-05-01", time.Time{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := eventTime("since", tc.in, now)
			if tc.bad {
				var u usageError
				if !errors.As(err, &u) || !strings.Contains(err.Error(), "--since") {
					t.Fatalf("eventTime(%q) = %v, %v; want a usage error naming --since", tc.in, got, err)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("eventTime(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}
