package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// manDir holds the generated man pages checked into the repository.
const manDir = "../../docs/man"

// TestManPagesCurrent regenerates the man pages (with the date of the checked-in crkvol.1)
// and compares them with docs/man, so that the pages cannot drift from the commands.
func TestManPagesCurrent(t *testing.T) {
	t.Parallel()
	const regenerate = "the man pages in docs/man are stale: run go generate ./cmd/crkvol"
	root, err := os.ReadFile(filepath.Join(manDir, "crkvol.1"))
	if err != nil {
		t.Fatalf("%v: %s", err, regenerate)
	}
	m := regexp.MustCompile(`(?m)^\.TH "CRKVOL" "1" "([A-Z][a-z]{2} \d{4})"`).FindSubmatch(root)
	if m == nil {
		t.Fatalf("docs/man/crkvol.1 has no .TH line with a date: %s", regenerate)
	}
	tmp := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"man", "--date", string(m[1]), tmp}, strings.NewReader(""), &stdout, &stderr,
		func(string) string { return "" }); code != 0 {
		t.Fatalf("crkvol man: exit status %d: %s", code, stderr.String())
	}
	want, err := filepath.Glob(filepath.Join(manDir, "*.1"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := filepath.Glob(filepath.Join(tmp, "*.1"))
	if err != nil {
		t.Fatal(err)
	}
	base := func(paths []string) []string {
		out := []string{}
		for _, p := range paths {
			out = append(out, filepath.Base(p))
		}
		return out
	}
	if g, w := base(got), base(want); !slices.Equal(g, w) {
		missing := slices.DeleteFunc(slices.Clone(g), func(p string) bool { return slices.Contains(w, p) })
		extra := slices.DeleteFunc(slices.Clone(w), func(p string) bool { return slices.Contains(g, p) })
		t.Fatalf("docs/man lacks %v and has %v of no command: %s", missing, extra, regenerate)
	}
	for _, p := range got {
		g, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.ReadFile(filepath.Join(manDir, filepath.Base(p)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(g, w) {
			t.Errorf("%s differs: %s", filepath.Base(p), regenerate)
		}
	}
}

// TestManPages checks the pages' shape: one per command, each a roff page of section 1
// that names its command, and an existing DIR, a bad date and no DIR refused.
func TestManPages(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	env := func(string) string { return "" }
	var stdout, stderr bytes.Buffer
	if code := run([]string{"man", "--date", "Jan 2026", tmp}, strings.NewReader(""), &stdout, &stderr, env); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	for _, page := range []string{"crkvol.1", "crkvol-key-show.1", "crkvol-volume-create.1", "crkvol-completion-bash.1", "crkvol-version.1"} {
		b, err := os.ReadFile(filepath.Join(tmp, page))
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(page, ".1")
		head := fmt.Sprintf(".nh\n.TH %q \"1\" \"Jan 2026\" \"crkvol\" \"crkvol manual\"\n", strings.ToUpper(name))
		if !bytes.HasPrefix(b, []byte(head)) || !bytes.Contains(b, []byte("\n.SH NAME\n"+name+" - ")) {
			t.Errorf("%s, want it to start %q and name its command:\n%.300s", page, head, b)
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"no dir", []string{"man"}, 2},
		{"bad date", []string{"man", "--date", "yesterday", t.TempDir()}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, strings.NewReader(""), &stdout, &stderr, env); code != tc.code {
				t.Errorf("exit status %d, want %d: %s", code, tc.code, stderr.String())
			}
		})
	}
}

// TestManPagesReplaceLinks: crkvol man replaces what sits at a page's name — an old page, a
// symbolic link planted there — with a new 0644 file, never writing through the link.
func TestManPagesReplaceLinks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("victim"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, target string }{
		{"crkvol.1", victim},
		{"crkvol-volume-read.1", filepath.Join(dir, "dangling")},
	} {
		if err := os.Symlink(tc.target, filepath.Join(dir, tc.name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "crkvol-version.1"), []byte("old page"), 0o666); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"man", "--date", "Jan 2026", dir}, strings.NewReader(""), &stdout, &stderr, func(string) string { return "" }); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "victim" {
		t.Errorf("the link's target holds %q, %v; want it untouched", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "dangling")); err == nil {
		t.Errorf("the dangling link's target was created")
	}
	for _, page := range []string{"crkvol.1", "crkvol-volume-read.1", "crkvol-version.1"} {
		st, err := os.Lstat(filepath.Join(dir, page))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm() != 0o644 {
			t.Errorf("%s has mode %v, want a regular 0644 file", page, st.Mode())
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "crkvol") || !strings.HasSuffix(e.Name(), ".1") {
			t.Errorf("%s left in the directory", e.Name())
		}
	}
}

// TestManPagesStale: crkvol man DIR removes the pages it generated for commands that no
// longer exist, never a user's other crkvol*.1 files.
func TestManPagesStale(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		kept          bool
	}{
		{"crkvol-gone.1", ".nh\n.TH \"CRKVOL-GONE\" \"1\" \"Jan 2025\" \"crkvol\" \"crkvol manual\"\n", false},
		{"crkvol-notes.1", "my own notes about crkvol\n", true},
		{"crkvolume.1", ".TH \"CRKVOLUME\" \"1\"\nanother program\n", true},
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, tc.name), []byte(tc.content), 0o644))
		defer func() {
			_, err := os.Stat(filepath.Join(dir, tc.name))
			if tc.kept {
				assert.NoError(t, err, tc.name)
			} else {
				assert.ErrorIs(t, err, fs.ErrNotExist, tc.name)
			}
		}()
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"man", dir}, strings.NewReader(""), &stdout, &stderr, func(string) string { return "" }); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
}
