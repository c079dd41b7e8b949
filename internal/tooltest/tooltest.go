// Package tooltest holds what crkvol's tests share about their environment: the external
// programs the interoperability tests drive (cryptsetup, openssl, nbdinfo, nbdcopy, qemu-img,
// qemu-nbd) and the switch between quick and full-length runs.
//
// # Tools
//
// A developer without a tool gets a skipped test and the Debian package to install; CI, which
// sets CI=true, gets a failure instead, so an interoperability test can never be skipped
// silently there. It is the one place that rule is written; test files call [Require] or
// [Available] instead of exec.LookPath.
//
// # Long runs
//
// A plain `go test ./...` runs a shorter but still meaningful version of each simulation and
// crash trial (fewer months, volumes and kills), so that it finishes in well under a minute on
// two cores. CI sets CRKVOL_LONG_TESTS=1 and gets the full lengths; [Long] tells a test which
// to run, and [Scale] picks its sizes.
//
// The package is meant for tests only and imports nothing of crkvol's.
package tooltest

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// CIEnv is the environment variable that, set to "true", turns a missing tool from a skip
// into a failure. GitHub Actions, GitLab CI and .ci/run set it.
const CIEnv = "CI"

// Package returns the Debian package that provides tool, or tool itself when it is not one
// of the tools crkvol's tests use.
func Package(tool string) string {
	switch tool {
	case "cryptsetup":
		return "cryptsetup-bin"
	case "nbdinfo", "nbdcopy":
		return "libnbd-bin"
	case "qemu-img", "qemu-nbd":
		return "qemu-utils"
	default:
		return tool
	}
}

// Require returns the path of each tool, keyed by its name. When one is missing it skips t,
// or fails t when CI=true; either way it does not return. It looks every tool up before
// deciding, so the message names all that are missing.
func Require(t testing.TB, tools ...string) map[string]string {
	t.Helper()
	found, missing := lookup(tools)
	if len(missing) == 0 {
		return found
	}
	if inCI() {
		t.Fatalf("%s required in CI but not installed (apt-get install %s)", strings.Join(missing, ", "), packages(missing))
	}
	t.Skipf("%s not installed (apt-get install %s); skipping this interoperability test", strings.Join(missing, ", "), packages(missing))
	return nil // not reached: Skipf stops the test
}

// Available returns the path of each tool that is installed, keyed by its name, and leaves
// the missing ones out, for a test whose parts check each tool themselves (a testscript
// `[exec:tool]` condition). Under CI=true a missing tool fails t, as with [Require].
func Available(t testing.TB, tools ...string) map[string]string {
	t.Helper()
	found, missing := lookup(tools)
	if len(missing) != 0 && inCI() {
		t.Fatalf("%s required in CI but not installed (apt-get install %s)", strings.Join(missing, ", "), packages(missing))
	}
	return found
}

// LongEnv is the environment variable that, set to "1" or "true", asks for the full-length
// simulations and crash trials. .ci/run sets it.
const LongEnv = "CRKVOL_LONG_TESTS"

// Long reports whether LongEnv asks for full-length runs.
func Long() bool {
	v := os.Getenv(LongEnv)
	return v == "1" || v == "true"
}

// Scale returns long when [Long] reports true, and short otherwise: the size of a simulation
// or the number of crash trials.
func Scale(long, short int) int {
	if Long() {
		return long
	}
	return short
}

func inCI() bool { return os.Getenv(CIEnv) == "true" }

func lookup(tools []string) (found map[string]string, missing []string) {
	found = make(map[string]string, len(tools))
	for _, tool := range tools {
		p, err := exec.LookPath(tool)
		if err != nil {
			missing = append(missing, tool)
			continue
		}
		found[tool] = p
	}
	return found, missing
}

func packages(tools []string) string {
	var pkgs []string
	for _, tool := range tools {
		if p := Package(tool); !slices.Contains(pkgs, p) {
			pkgs = append(pkgs, p)
		}
	}
	return strings.Join(pkgs, " ")
}
