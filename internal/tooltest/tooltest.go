// Package tooltest finds the external programs that crkvol's interoperability tests drive
// (cryptsetup, openssl, nbdinfo, nbdcopy, qemu-img, qemu-nbd).
//
// A developer without a tool gets a skipped test and the Debian package to install; CI, which
// sets CI=true, gets a failure instead, so an interoperability test can never be skipped
// silently there. It is the one place that rule is written; test files call [Require] or
// [Available] instead of exec.LookPath.
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
