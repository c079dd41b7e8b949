package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
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
