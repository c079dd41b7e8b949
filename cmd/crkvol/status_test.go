package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStatusShowsNoNil: `volume status`, as text and as JSON, shows no Go "<nil>" for a
// volume in any state: healthy, with a damaged primary or secondary header copy, truncated,
// crypto-erased, an unregistered copy, with its key disabled, and without a registry. (The
// attached and wiping states are checked in attach.txtar and TestInterruptedWipeResumes.)
func TestStatusShowsNoNil(t *testing.T) {
	env := testEnv(t)
	dir := t.TempDir()
	code, out, stderr := runCLI(t, env, "--json", "key", "create", "states")
	if code != 0 {
		t.Fatalf("key create: %s", stderr)
	}
	var key struct{ ID string }
	if err := json.Unmarshal([]byte(out), &key); err != nil {
		t.Fatal(err)
	}
	img := func(name string) string { return filepath.Join(dir, name) }
	create := func(name string) string {
		t.Helper()
		if code, _, stderr := runCLI(t, env, "volume", "create", img(name), "--size", "1MiB", "--key", key.ID); code != 0 {
			t.Fatalf("volume create %s: %s", name, stderr)
		}
		return img(name)
	}
	damage := func(path string, off int64) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("damage"), off); err != nil {
			t.Fatal(err)
		}
	}

	create("healthy.img")
	damage(create("primary.img"), 600)
	damage(create("secondary.img"), 16384+600)
	if err := os.Truncate(create("truncated.img"), 16<<20+1000); err != nil {
		t.Fatal(err)
	}
	create("erased.img")
	if code, _, stderr := runCLI(t, env, "volume", "delete", img("erased.img"), "--erase", "--keep-image"); code != 0 {
		t.Fatalf("volume delete: %s", stderr)
	}
	b, err := os.ReadFile(img("healthy.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img("copy.img"), b, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, image string
		env         map[string]string
		before      []string // a command run first
	}{
		{"healthy", "healthy.img", env, nil},
		{"primary header damaged", "primary.img", env, nil},
		{"secondary header damaged", "secondary.img", env, nil},
		{"truncated", "truncated.img", env, nil},
		{"erased", "erased.img", env, nil},
		{"unregistered copy", "copy.img", env, nil},
		{"no registry", "healthy.img", map[string]string{"CRKVOL_STATE": filepath.Join(dir, "empty"), "CRKVOL_NOW": env["CRKVOL_NOW"]}, nil},
		{"key disabled", "healthy.img", env, []string{"key", "disable", key.ID}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				if code, _, stderr := runCLI(t, tc.env, tc.before...); code != 0 {
					t.Fatalf("%v: %s", tc.before, stderr)
				}
			}
			for _, args := range [][]string{
				{"volume", "status", img(tc.image)},
				{"--json", "volume", "status", img(tc.image)},
			} {
				_, stdout, stderr := runCLI(t, tc.env, args...)
				if stdout == "" {
					t.Errorf("%v: no output (stderr %s)", args, stderr)
				}
				if strings.Contains(stdout+stderr, "<nil>") {
					t.Errorf("%v shows <nil>:\n%s%s", args, stdout, stderr)
				}
			}
		})
	}
}
