package sector

import (
	"bufio"
	"go/build/constraint"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requirePathsEnv names the environment variable that lists, comma-separated, the paths
// this machine must run (CI sets it from .ci/sector-paths, which reads the CPU's flags).
const requirePathsEnv = "CRKVOL_REQUIRE_PATHS"

// TestRequiredPaths fails when a path the environment says this machine supports is not in
// Paths(): the tests that loop over Paths() would then have skipped it silently (a dispatch
// bug, or a build that lost its assembly). Without the variable it is skipped.
func TestRequiredPaths(t *testing.T) {
	want := os.Getenv(requirePathsEnv)
	if want == "" {
		t.Skipf("%s is not set", requirePathsEnv)
	}
	have := Paths()
	for _, name := range strings.Split(want, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		assert.Contains(t, have, Path(name), "%s names path %q, which this build and CPU do not run (have %v)", requirePathsEnv, name, have)
	}
}

// buildConstraint returns the //go:build expression of a file in this directory.
func buildConstraint(t *testing.T, name string) constraint.Expr {
	t.Helper()
	f, err := os.Open(name)
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if constraint.IsGoBuild(line) {
			expr, err := constraint.Parse(line)
			require.NoError(t, err, "%s", name)
			return expr
		}
	}
	require.NoError(t, sc.Err())
	t.Fatalf("%s has no //go:build line", name)
	return nil
}

// TestBuildConstraints checks the build constraints of the assembly and its fallback, as
// x/crypto writes them: the assembly, its Go declarations and the Go code that uses them
// build only with the gc toolchain and without purego, and the portable fallback builds in
// exactly the other cases, so every build has exactly one of them.
func TestBuildConstraints(t *testing.T) {
	asm := []string{"xts_amd64.s", "xts_amd64.go", "keysched_amd64.go", "xts_amd64_test.go", "keysched_amd64_test.go"}
	fallback := buildConstraint(t, "sector_noasm.go")
	for _, name := range asm {
		expr := buildConstraint(t, name)
		assert.Equal(t, "gc && !purego", expr.String(), "%s", name)
	}
	// The _amd64 file name adds GOARCH=amd64 to the assembly files' constraint.
	for _, arch := range []string{"amd64", "arm64"} {
		for _, compiler := range []string{"gc", "gccgo"} {
			for _, purego := range []bool{false, true} {
				tags := map[string]bool{arch: true, compiler: true, "purego": purego}
				asmBuilds := arch == "amd64" && buildConstraint(t, "xts_amd64.s").Eval(func(tag string) bool { return tags[tag] })
				fallbackBuilds := fallback.Eval(func(tag string) bool { return tags[tag] })
				assert.NotEqual(t, asmBuilds, fallbackBuilds, "%s, %s, purego=%v: exactly one of the assembly and the fallback builds", arch, compiler, purego)
			}
		}
	}
}

// TestGeneratedRequires checks that every routine in the generated assembly says which CPU
// features it needs, and that the features match the paths' dispatch: the AES-NI routines
// (and their ceiling loop) and the key schedule need no AVX-512, the VAES routines (and
// theirs) nothing beyond what available() checks.
func TestGeneratedRequires(t *testing.T) {
	text, err := os.ReadFile("xts_amd64.s")
	require.NoError(t, err)
	lines := strings.Split(string(text), "\n")
	require.True(t, strings.HasPrefix(lines[0], "// Code generated ") && strings.HasSuffix(lines[0], " DO NOT EDIT."), "header %q", lines[0])
	want := map[string][]string{
		"xtsEncAESNI":  {"AES", "AVX"},
		"xtsDecAESNI":  {"AES", "AVX"},
		"expandKey128": {"AES", "AVX"},
		"expandKey256": {"AES", "AVX"},
		"xtsEncVAES":   {"AVX", "AVX512BW", "AVX512F", "AVX512VBMI2", "VAES", "VPCLMULQDQ"},
		"xtsDecVAES":   {"AVX", "AVX512BW", "AVX512F", "AVX512VBMI2", "VAES", "VPCLMULQDQ"},
		"ceilingAESNI": {"AES", "AVX"},
		"ceilingVAES":  {"AVX", "AVX512F", "VAES"},
	}
	seen := map[string]bool{}
	for i, line := range lines {
		if !strings.HasPrefix(line, "TEXT ·") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(line, "TEXT ·"), "(")
		seen[name] = true
		require.Positive(t, i, "%s", name)
		req, ok := strings.CutPrefix(lines[i-1], "// Requires: ")
		require.True(t, ok, "%s: no // Requires: line before TEXT", name)
		got := strings.Split(req, ", ")
		assert.True(t, slices.IsSorted(got), "%s: features sorted", name)
		assert.Equal(t, want[name], got, "%s", name)
	}
	for name := range want {
		assert.True(t, seen[name], "routine %s is in xts_amd64.s", name)
	}
}
