package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"crkvol/internal/tooltest"
)

// TestScriptsInProcess runs the scripts of testdata/inproc/*.txtar, where "inproc crkvol
// ARGS..." runs crkvol in this process (run, what main passes to os.Exit) with the script's
// environment, and so does "exitcode N crkvol ARGS...": a command line costs ~1 ms of CPU
// there against ~40 ms as a process ("exec crkvol" and testscript's own "crkvol" still start
// a process). testdata/*.txtar run crkvol as a process. An in-process command shares this
// process's working directory, so these scripts name files by absolute path ($WORK/...): a
// relative path that names a file of the script's directory, or a command that leaves a new
// file in the package directory, fails the script.
func TestScriptsInProcess(t *testing.T) {
	t.Parallel()
	pkgDir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	before, err := dirNames(pkgDir)
	if err != nil {
		t.Fatal(err)
	}
	inProcess := func(ts *testscript.TestScript, args []string) int {
		for _, a := range args {
			if _, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "-") {
				a = v
			}
			if a == "" || filepath.IsAbs(a) || strings.HasPrefix(a, "-") {
				continue
			}
			if _, err := os.Lstat(ts.MkAbs(a)); err == nil {
				ts.Fatalf("crkvol %s: %s is a relative path: an in-process script names files as $WORK/%s", strings.Join(args, " "), a, a)
			}
		}
		code := run(args, strings.NewReader(""), ts.Stdout(), ts.Stderr(), ts.Getenv)
		after, err := dirNames(pkgDir)
		ts.Check(err)
		if !slices.Equal(before, after) {
			var added []string
			for _, n := range after {
				if !slices.Contains(before, n) {
					added = append(added, n)
				}
			}
			ts.Fatalf("crkvol %s: the package directory changed (a relative path?): new %v", strings.Join(args, " "), added)
		}
		return code
	}
	root := ""
	if f := flag.Lookup("testwork"); f == nil || f.Value.String() != "true" {
		root = t.TempDir()
	}
	testscript.Run(t, testscript.Params{
		Dir:         filepath.Join(pkgDir, "testdata", "inproc"),
		WorkdirRoot: root,
		Condition: func(cond string) (bool, error) {
			if cond == "long" {
				return tooltest.Long(), nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Setup: func(env *testscript.Env) error {
			env.Setenv("CRKVOL_STATE", env.WorkDir+"/state")
			env.Setenv("CRKVOL_NOW", "2026-06-01T12:00:00Z")
			env.Setenv("CRKVOL_MASTER_KEY", "")
			// As TestScripts sets them.
			env.Setenv("SIM_VOLUMES", strconv.Itoa(tooltest.Scale(30, 4)))
			env.Setenv("SIM_MONTHS", strconv.Itoa(tooltest.Scale(4, 2)))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"inproc": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 1 || args[0] != "crkvol" {
					ts.Fatalf("usage: inproc crkvol args...")
				}
				args = args[1:]
				code := inProcess(ts, args)
				if neg && code == 0 {
					ts.Fatalf("crkvol %s: unexpected success", strings.Join(args, " "))
				}
				if !neg && code != 0 {
					ts.Fatalf("crkvol %s: exit status %d", strings.Join(args, " "), code)
				}
			},
			"exitcode": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) < 2 || args[1] != "crkvol" {
					ts.Fatalf("usage: exitcode N crkvol args...")
				}
				want, err := strconv.Atoi(args[0])
				ts.Check(err)
				if code := inProcess(ts, args[2:]); code != want {
					ts.Fatalf("crkvol %s: exit status %d, want %d", strings.Join(args[2:], " "), code, want)
				}
			},
			"setjson":            cmdSetJSON,
			"later":              cmdLater,
			"cmpprefix":          cmdCmpPrefix,
			"mode":               cmdMode,
			"truncate-to-header": cmdTruncateToHeader,
			"zerofile":           cmdZeroFile,
			"setout":             cmdSetOut,
			"randfile":           cmdRandFile,
			"cmpmasked":          cmdCmpMasked,
			"isjson":             cmdIsJSON,
			"setmatch":           cmdSetMatch,
			"waitfile":           cmdWaitFile,
			"waitsock":           cmdWaitSock,
			"waitattached":       cmdWaitAttached,
		},
	})
}

// dirNames returns the sorted names in dir.
func dirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}
