package tooltest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder is a testing.TB that records Skipf and Fatalf instead of ending the real test.
// Like the real ones, both stop the calling goroutine.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// call runs f with a recorder on its own goroutine, so that Skipf and Fatalf can stop it.
func call(f func(testing.TB) map[string]string) (rec *recorder, got map[string]string) {
	rec = &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		got = f(rec)
	}()
	<-done
	return rec, got
}

// TestRequireAndAvailable: a missing tool skips (Require) or is left out (Available) on a
// developer's machine, and fails both under CI=true; the messages name every missing tool and
// its Debian package; installed tools come back with their paths.
func TestRequireAndAvailable(t *testing.T) {
	bin := t.TempDir()
	fake := filepath.Join(bin, "cryptsetup")
	require.NoError(t, os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755))
	t.Setenv("PATH", bin)

	tests := []struct {
		name      string
		ci        string
		available bool // Available instead of Require
		tools     []string
		want      map[string]string
		skip      string // substring of the skip message; "" means no skip
		fail      string // substring of the failure message; "" means no failure
	}{
		{name: "installed", tools: []string{"cryptsetup"}, want: map[string]string{"cryptsetup": fake}},
		{name: "installed in CI", ci: "true", tools: []string{"cryptsetup"}, want: map[string]string{"cryptsetup": fake}},
		{name: "missing skips", tools: []string{"cryptsetup", "nbdinfo", "nbdcopy"},
			skip: "nbdinfo, nbdcopy not installed (apt-get install libnbd-bin)"},
		{name: "missing fails in CI", ci: "true", tools: []string{"qemu-img", "cryptsetup", "openssl"},
			fail: "qemu-img, openssl required in CI but not installed (apt-get install qemu-utils openssl)"},
		{name: "CI other than true skips", ci: "1", tools: []string{"qemu-nbd"}, skip: "qemu-nbd not installed (apt-get install qemu-utils)"},
		{name: "available leaves missing out", available: true, tools: []string{"cryptsetup", "openssl"},
			want: map[string]string{"cryptsetup": fake}},
		{name: "available fails in CI", available: true, ci: "true", tools: []string{"cryptsetup", "nbdcopy"},
			fail: "nbdcopy required in CI but not installed (apt-get install libnbd-bin)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(CIEnv, tc.ci)
			f := func(tb testing.TB) map[string]string { return Require(tb, tc.tools...) }
			if tc.available {
				f = func(tb testing.TB) map[string]string { return Available(tb, tc.tools...) }
			}
			rec, got := call(f)
			if tc.skip != "" {
				assert.Contains(t, rec.skipped, tc.skip)
			} else {
				assert.Empty(t, rec.skipped)
			}
			if tc.fail != "" {
				assert.Contains(t, rec.failed, tc.fail)
			} else {
				assert.Empty(t, rec.failed)
			}
			if tc.skip == "" && tc.fail == "" {
				assert.Equal(t, tc.want, got)
			}
		})
	}
}

func TestPackage(t *testing.T) {
	for tool, pkg := range map[string]string{
		"cryptsetup": "cryptsetup-bin", "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin",
		"qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils", "openssl": "openssl", "other": "other",
		"initdb": "postgresql", "postgres": "postgresql",
	} {
		assert.Equal(t, pkg, Package(tool), tool)
	}
	assert.False(t, strings.Contains(packages([]string{"nbdinfo", "nbdcopy"}), "libnbd-bin libnbd-bin"), "each package once")
}

// TestLongAndScale: only "1" and "true" ask for long runs.
func TestLongAndScale(t *testing.T) {
	for _, tc := range []struct {
		env  string
		long bool
	}{{"", false}, {"0", false}, {"false", false}, {"yes", false}, {"1", true}, {"true", true}} {
		t.Run("env="+tc.env, func(t *testing.T) {
			t.Setenv(LongEnv, tc.env)
			assert.Equal(t, tc.long, Long())
			want := 3
			if tc.long {
				want = 50
			}
			assert.Equal(t, want, Scale(50, 3))
		})
	}
}

// TestPostgresBinDir: without pg_config on PATH the highest version directory under the root
// that holds both initdb and postgres wins; a root without one finds nothing.
func TestPostgresBinDir(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no pg_config
	mk := func(root, version string, progs ...string) {
		dir := filepath.Join(root, version, "bin")
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for _, p := range progs {
			require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\n"), 0o755))
		}
	}
	full, partial, empty := t.TempDir(), t.TempDir(), t.TempDir()
	mk(full, "9.6", "initdb", "postgres")
	mk(full, "13", "initdb", "postgres")
	mk(full, "15", "initdb", "postgres")
	mk(full, "16", "initdb") // no server binary: not a candidate
	mk(full, "notes")
	mk(partial, "14", "postgres")
	tests := []struct {
		name, root, want string
		ok               bool
	}{
		{"highest complete version", full, filepath.Join(full, "15", "bin"), true},
		{"no complete version", partial, "", false},
		{"empty root", empty, "", false},
		{"missing root", filepath.Join(empty, "absent"), "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := postgresBinDir(tc.root)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.want, got)
		})
	}
}
