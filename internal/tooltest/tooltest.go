// Package tooltest holds what crkvol's tests share about their environment: the external
// programs the interoperability tests drive (cryptsetup, openssl, nbdinfo, nbdcopy, qemu-img,
// qemu-nbd, and PostgreSQL's server programs, which Debian keeps off PATH: [PostgresBinDir])
// and the switch between quick and full-length runs.
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
// # Read-only mounts
//
// [ReadOnlyBind] gives tests of read-only state directories and images a read-only bind
// mount, with the same rule: skipped where mounting is not allowed, a failure under CI=true.
//
// # Output
//
// [SyncBuffer] collects what a child process or a logger writes while the test reads it.
//
// The package is meant for tests only and imports nothing of crkvol's.
package tooltest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	case "initdb", "postgres", "pg_ctl":
		return "postgresql"
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
		if tool == "qemu-img" && !strings.HasPrefix(filepath.Base(filepath.Dir(p)), "crkvol-qemu-img-") {
			// qemu-img's PBKDF2 benchmark sometimes fails on a fast CPU: see wrapQemuImg.
			if w, err := wrapQemuImg(p); err == nil {
				p = w
			}
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

// ReadOnlyBind mounts src read-only at dst (an existing directory; dst may be src itself)
// and unmounts it when the test ends: a read-only view that stops even root, whom file modes
// do not stop. Where mounting is not allowed (not root, no mount permission in a container)
// the test is skipped, but under CI=true it fails, as a missing tool does: CI runs as root and
// must run these tests.
func ReadOnlyBind(t testing.TB, src, dst string) {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		if inCI() {
			t.Fatalf("read-only bind mount required in CI: "+format, args...)
		}
		t.Skipf("no read-only bind mount here: "+format, args...)
	}
	if os.Geteuid() != 0 {
		unavailable("it needs root")
		return
	}
	if out, err := exec.Command("mount", "--bind", "-o", "ro", src, dst).CombinedOutput(); err != nil {
		unavailable("mount --bind -o ro %s %s: %v: %s", src, dst, err, out)
		return
	}
	t.Cleanup(func() { _ = exec.Command("umount", dst).Run() })
	probe := filepath.Join(dst, ".crkvol-ro-probe")
	if err := os.WriteFile(probe, nil, 0o600); !errors.Is(err, syscall.EROFS) {
		_ = os.Remove(probe)
		unavailable("the bind mount at %s is not read-only (%v)", dst, err)
	}
}

// PostgresRoot is where Debian installs each PostgreSQL major version's server programs,
// one directory per version: PostgresRoot/15/bin/initdb.
const PostgresRoot = "/usr/lib/postgresql"

// PostgresBinDir returns the directory holding PostgreSQL's server programs (initdb,
// postgres), which Debian installs off PATH: the one `pg_config --bindir` names when it
// holds them, or else the highest version under [PostgresRoot]. When there is none it skips
// t, or fails t when CI=true, as [Require] does for a missing tool.
func PostgresBinDir(t testing.TB) string {
	t.Helper()
	if dir, ok := postgresBinDir(PostgresRoot); ok {
		return dir
	}
	missing := []string{"initdb", "postgres"}
	if inCI() {
		t.Fatalf("PostgreSQL server (%s) required in CI but not installed (apt-get install %s)", strings.Join(missing, ", "), packages(missing))
	}
	t.Skipf("PostgreSQL server (%s) not installed (apt-get install %s); skipping this test", strings.Join(missing, ", "), packages(missing))
	return "" // not reached: Skipf stops the test
}

// postgresBinDir finds the server programs: pg_config's bindir first, then the highest
// numbered version directory under root.
func postgresBinDir(root string) (string, bool) {
	hasServer := func(dir string) bool {
		for _, prog := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, prog)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			if dir := strings.TrimSpace(string(out)); dir != "" && hasServer(dir) {
				return dir, true
			}
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", false
	}
	best, bestVersion := "", -1.0
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64) // "15", or "9.6" before PostgreSQL 10
		if err != nil || v <= bestVersion {
			continue
		}
		if dir := filepath.Join(root, e.Name(), "bin"); hasServer(dir) {
			best, bestVersion = dir, v
		}
	}
	return best, best != ""
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: for the output of a child process or
// a logger written while the test reads it. The zero value is ready to use.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
