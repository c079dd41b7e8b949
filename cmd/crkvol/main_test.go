package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// defaultParallel is this package's -test.parallel when the command line does not set one.
// Its tests mostly wait for the crkvol processes and tools they start (about one core busy
// at GOMAXPROCS's default on two cores), so running more of them at once shortens the
// package's wall time at the same CPU time.
const defaultParallel = 4

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) != "crkvol" {
		// The test binary itself, not the crkvol command testscript runs through it.
		flag.Parse()
		set := false
		flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
		if f := flag.Lookup("test.parallel"); f != nil && !set {
			if err := f.Value.Set(strconv.Itoa(defaultParallel)); err != nil {
				panic(err)
			}
		}
	}
	testscript.Main(m, map[string]func(){
		"crkvol": func() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)) },
	})
}

// TestScripts runs the CLI scripts in testdata/*.txtar. Scripts that need cryptsetup are
// skipped without it, except under CI=true, where it is required; so are those that need
// openssl, the NBD tools, qemu-img, curl or jq.
func TestScripts(t *testing.T) {
	t.Parallel()
	tooltest.Available(t, "cryptsetup", "openssl", "nbdinfo", "nbdcopy", "qemu-img", "curl", "jq")
	// testscript removes its own go-test-script* directory only when every script in Dir has
	// run, so a -run filter left one behind per go test; under t.TempDir the testing package
	// removes the work directories. With -testwork they are kept where testscript puts them.
	root := ""
	if f := flag.Lookup("testwork"); f == nil || f.Value.String() != "true" {
		root = t.TempDir()
	}
	pg := scriptPostgres(t)
	testscript.Run(t, testscript.Params{
		Dir:         "testdata",
		WorkdirRoot: root,
		// [long] holds with CRKVOL_LONG_TESTS=1 (CI): scripts too heavy for a plain go test
		// skip themselves without it.
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "long":
				return tooltest.Long(), nil
			case "postgres":
				return pg != nil, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Setup: func(env *testscript.Env) error {
			env.Setenv("CRKVOL_STATE", env.WorkDir+"/state")
			env.Setenv("CRKVOL_NOW", "2026-06-01T12:00:00Z")
			env.Setenv("CRKVOL_MASTER_KEY", "")
			// The fleet a sim script simulates: full size in CI (CRKVOL_LONG_TESTS=1); TestScriptsInProcess
			// sets the same for inproc/sim.txtar.
			env.Setenv("SIM_VOLUMES", strconv.Itoa(tooltest.Scale(30, 4)))
			env.Setenv("SIM_MONTHS", strconv.Itoa(tooltest.Scale(4, 2)))
			// The volume attach.txtar serves to nbdcopy and qemu-img: 32 MiB in CI, 2 MiB otherwise.
			env.Setenv("ATTACH_SIZE", strconv.Itoa(tooltest.Scale(32<<20, 2<<20)))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"setjson":            cmdSetJSON,
			"pgdatabase":         pg.cmdDatabase,
			"exitcode":           cmdExitCode,
			"cmpprefix":          cmdCmpPrefix,
			"mode":               cmdMode,
			"later":              cmdLater,
			"truncate-to-header": cmdTruncateToHeader,
			"zerofile":           cmdZeroFile,
			"setout":             cmdSetOut,
			"waitfile":           cmdWaitFile,
			"waitsock":           cmdWaitSock,
			"waitattached":       cmdWaitAttached,
			"randfile":           cmdRandFile,
			"cmpmasked":          cmdCmpMasked,
			"isjson":             cmdIsJSON,
			"setmatch":           cmdSetMatch,
		},
	})
}

// setjson VAR PATH: set $VAR to the field at dotted PATH (e.g. keyVersion.id or
// resources.0.id) of the JSON on the last command's stdout.
func cmdSetJSON(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: setjson VAR PATH")
	}
	var v any
	if err := json.Unmarshal([]byte(ts.ReadFile("stdout")), &v); err != nil {
		ts.Fatalf("stdout is not JSON: %v", err)
	}
	for _, p := range strings.Split(args[1], ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(x) {
				ts.Fatalf("no element %s", p)
			}
			v = x[i]
		default:
			ts.Fatalf("cannot index %T with %s", v, p)
		}
	}
	if v == nil {
		ts.Fatalf("no field %s in stdout", args[1])
	}
	ts.Setenv(args[0], fmt.Sprint(v))
}

// exitcode N CMD ARGS...: run a command and check its exit status.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N command args...")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("bad exit code %q", args[0])
	}
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		ts.Fatalf("%v", err)
	}
	if got != want {
		ts.Fatalf("exit status %d, want %d", got, want)
	}
}

// cmpprefix A B: file A equals the first len(A) bytes of file B.
func cmdCmpPrefix(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: cmpprefix A B")
	}
	a, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	b, err := os.ReadFile(ts.MkAbs(args[1]))
	ts.Check(err)
	ok := len(b) >= len(a) && bytes.Equal(a, b[:len(a)])
	if ok == neg {
		ts.Fatalf("%s prefix of %s: %v", args[0], args[1], ok)
	}
}

// mode FILE PERM: check a file's permission bits, e.g. mode key.bin 0600.
func cmdMode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: mode FILE PERM")
	}
	st, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	if got := uint64(st.Mode().Perm()); got != want {
		ts.Fatalf("%s has mode %o, want %o", args[0], got, want)
	}
}

// later DURATION: move $CRKVOL_NOW forward.
func cmdLater(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: later DURATION")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	t, err := time.Parse(time.RFC3339, ts.Getenv("CRKVOL_NOW"))
	ts.Check(err)
	ts.Setenv("CRKVOL_NOW", t.Add(d).Format(time.RFC3339))
}

// truncate-to-header IMG: cut an image off at its data offset, as a failed copy would.
func cmdTruncateToHeader(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: truncate-to-header IMG")
	}
	info, err := volume.Describe(ts.MkAbs(args[0]))
	ts.Check(err)
	ts.Check(os.Truncate(ts.MkAbs(args[0]), info.DataOffset))
}

// zerofile FILE N: write a file of N zero bytes.
func cmdZeroFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: zerofile FILE N")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), make([]byte, n), 0o600))
}

// setout VAR: set $VAR to the last command's stdout, trimmed.
func cmdSetOut(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: setout VAR")
	}
	ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile("stdout")))
}

// waitfile FILE VAR: wait up to 20 s for FILE to hold a line, then set $VAR to it.
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitfile FILE VAR")
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(ts.MkAbs(args[0])); err == nil && strings.HasSuffix(string(b), "\n") {
			ts.Setenv(args[1], strings.TrimSpace(string(b)))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	ts.Fatalf("%s did not appear", args[0])
}

// waitsock PATH: wait up to 20 s for a unix socket to accept connections.
func cmdWaitSock(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitsock PATH")
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", ts.MkAbs(args[0])); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	ts.Fatalf("nothing listens on %s", args[0])
}

// waitattached IMG VAR: wait up to 20 s for IMG's attachment record, then set $VAR to its
// NBD URI.
func cmdWaitAttached(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitattached IMG VAR")
	}
	rec := recordPath(filepath.Join(ts.Getenv("CRKVOL_STATE"), "attached"), ts.MkAbs(args[0]))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var a attachment
		if b, err := os.ReadFile(rec); err == nil && json.Unmarshal(b, &a) == nil && a.URI != "" {
			ts.Setenv(args[1], a.URI)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	ts.Fatalf("%s was not attached", args[0])
}

// randfile FILE N SEED: write N pseudo-random bytes.
func cmdRandFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: randfile FILE N SEED")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	seed, err := strconv.ParseUint(args[2], 10, 64)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), randBytes(n, seed), 0o600))
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

// maskPatterns are what cmpmasked hides: values that differ between two runs of the same
// commands (ids, CRNs holding them, times, initiators), not the shape around them.
var maskPatterns = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`), "<uuid>"},
	{regexp.MustCompile(`\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})`), "<time>"},
	{regexp.MustCompile(`"(createdBy|deletedBy|updatedBy)": "[^"]*"`), `"$1": "<who>"`},
}

// cmpmasked FILE1 FILE2: compare two files after masking ids, times and initiators.
func cmdCmpMasked(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: cmpmasked FILE1 FILE2")
	}
	mask := func(s string) string {
		for _, p := range maskPatterns {
			s = p.re.ReplaceAllString(s, p.with)
		}
		return s
	}
	a, b := mask(ts.ReadFile(args[0])), mask(ts.ReadFile(args[1]))
	if a != b {
		ts.Logf("%s (masked):\n%s\n%s (masked):\n%s", args[0], a, args[1], b)
		ts.Fatalf("%s and %s differ", args[0], args[1])
	}
}

// isjson [stderr]: the last command's stdout (or stderr) is exactly one JSON value, with no
// empty date ("" under a key naming a time), every time in RFC 3339 UTC to the second, and no
// relative path under a key naming a file or directory.
func cmdIsJSON(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) > 1 || (len(args) == 1 && args[0] != "stderr") {
		ts.Fatalf("usage: isjson [stderr]")
	}
	name := "stdout"
	if len(args) == 1 {
		name = "stderr"
	}
	if problems := checkJSONOutput([]byte(ts.ReadFile(name))); len(problems) > 0 {
		ts.Fatalf("%s: %s", name, strings.Join(problems, "; "))
	}
}

// checkJSONOutput lists what makes out other than one JSON document as the CLI promises it.
func checkJSONOutput(out []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return []string{fmt.Sprintf("not JSON: %v", err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return []string{"more than one JSON value"}
	}
	var problems []string
	walkJSON("", v, func(path, key string, s string) {
		switch {
		case isTimeKey(key) && s == "":
			problems = append(problems, fmt.Sprintf("%s: empty date", path))
		case timeLike.MatchString(s) && !rfc3339Seconds.MatchString(s):
			problems = append(problems, fmt.Sprintf("%s: time %q is not RFC 3339 UTC to the second", path, s))
		case isPathKey(key) && s != "" && !filepath.IsAbs(s):
			problems = append(problems, fmt.Sprintf("%s: relative path %q", path, s))
		}
	})
	return problems
}

var (
	timeLike       = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}[T ]\d{2}:`)
	rfc3339Seconds = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$`)
)

// isTimeKey reports whether a JSON member name names a time.
func isTimeKey(k string) bool {
	switch k {
	case "time", "since", "until", "created", "updated", "expires", "start", "end":
		return true
	}
	return strings.HasSuffix(k, "Date") || strings.HasSuffix(k, "At") || strings.HasSuffix(k, "Time")
}

// isPathKey reports whether a JSON member name names a file or directory.
func isPathKey(k string) bool {
	switch k {
	case "path", "output", "input", "dir", "image", "file", "socket":
		return true
	}
	return strings.HasSuffix(k, "Path") || strings.HasSuffix(k, "File") || strings.HasSuffix(k, "Dir")
}

// walkJSON calls f on every string in v with its dotted path and member name (the member
// name of the enclosing object for strings in arrays).
func walkJSON(path string, v any, f func(path, key, s string)) {
	var walk func(path, key string, v any)
	walk = func(path, key string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(path+"."+k, k, e)
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s.%d", path, i), key, e)
			}
		case string:
			f(path, key, x)
		}
	}
	walk(path, "", v)
}
