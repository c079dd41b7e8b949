package layout

import (
	"errors"
	"fmt"
	"go/build"
	"go/build/constraint"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// level places each package of the module in the layering of the package doc. A package
// under crkvol/internal/ is level 0 unless listed.
var level = map[string]int{
	"crkvol/cmd/crkvol":   5,
	"crkvol/sim":          4,
	"crkvol/bench":        4,
	"crkvol/volume/kms":   3,
	"crkvol/agent":        3,
	"crkvol/crk/console":  3,
	"crkvol/volume":       2,
	"crkvol/crk/kpapi":    2,
	"crkvol/keyslot":      1,
	"crkvol/crk":          1,
	"crkvol/sector":       0,
	"crkvol/nbd":          0,
	"crkvol/qcow2":        0,
	"crkvol/internal/...": 0,
}

// forbidden are edges the levels alone would allow.
var forbidden = map[string][]string{
	"crkvol/volume": {"crkvol/crk", "crkvol/crk/kpapi"},
}

// testOnly are packages only tests, and each other, may import.
var testOnly = []string{"crkvol/internal/tooltest", "crkvol/internal/pgtest", "crkvol/internal/chrometest"}

func levelOf(pkg string) (int, bool) {
	if l, ok := level[pkg]; ok {
		return l, true
	}
	if strings.HasPrefix(pkg, "crkvol/internal/") {
		return level["crkvol/internal/..."], true
	}
	return 0, false
}

type listed struct {
	ImportPath string
	Imports    []string // crkvol packages imported by the non-test files
	Deps       []string // crkvol packages reached through them
}

// packages lists the module's packages (without tests) with their crkvol imports and
// dependencies. It reads the source with go/build, so the test cache sees every file it
// depends on and reruns the test when an import changes.
func packages(t *testing.T) []listed {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	imports := map[string][]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata") {
			return filepath.SkipDir
		}
		// Every file counts, whatever its build constraints (purego, other
		// architectures): an import behind a tag still points somewhere.
		// Files built only with the ignore tag (go:generate helpers, often package main)
		// are not part of the package.
		ctx := build.Default
		ctx.UseAllFiles = true
		ctx.ReadDir = readDirWithoutIgnored
		bp, err := ctx.ImportDir(path, 0)
		var noGo *build.NoGoError
		if errors.As(err, &noGo) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		ip := "crkvol"
		if rel != "." {
			ip += "/" + filepath.ToSlash(rel)
		}
		var own []string
		for _, imp := range bp.Imports {
			if imp == "crkvol" || strings.HasPrefix(imp, "crkvol/") {
				own = append(own, imp)
			}
		}
		imports[ip] = own
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(imports) < len(level)-1 {
		t.Fatalf("found %d packages, fewer than the layering names", len(imports))
	}
	var pkgs []listed
	for ip, own := range imports {
		seen := map[string]bool{}
		var walk func(string)
		walk = func(p string) {
			for _, d := range imports[p] {
				if !seen[d] {
					seen[d] = true
					walk(d)
				}
			}
		}
		walk(ip)
		deps := make([]string, 0, len(seen))
		for d := range seen {
			deps = append(deps, d)
		}
		sort.Strings(deps)
		pkgs = append(pkgs, listed{ImportPath: ip, Imports: own, Deps: deps})
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].ImportPath < pkgs[j].ImportPath })
	return pkgs
}

// readDirWithoutIgnored lists dir without the Go files whose build constraint names the
// ignore tag.
func readDirWithoutIgnored(dir string) ([]fs.FileInfo, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var infos []fs.FileInfo
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".go") {
			ignored, err := ignoredFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return nil, err
			}
			if ignored {
				continue
			}
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// ignoredFile reports whether the //go:build line of a Go file (before its package clause)
// names the ignore tag.
func ignoredFile(path string) (bool, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(src), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "package ") {
			return false, nil
		}
		if constraint.IsGoBuild(line) {
			expr, err := constraint.Parse(line)
			if err != nil {
				return false, fmt.Errorf("%s: %w", path, err)
			}
			return namesTag(expr, "ignore"), nil
		}
	}
	return false, nil
}

// namesTag reports whether expr mentions tag anywhere (Eval would stop at the first operand
// that decides an || or &&).
func namesTag(expr constraint.Expr, tag string) bool {
	switch e := expr.(type) {
	case *constraint.TagExpr:
		return e.Tag == tag
	case *constraint.NotExpr:
		return namesTag(e.X, tag)
	case *constraint.AndExpr:
		return namesTag(e.X, tag) || namesTag(e.Y, tag)
	case *constraint.OrExpr:
		return namesTag(e.X, tag) || namesTag(e.Y, tag)
	}
	return false
}

// TestImportsPointDown fails on any import that points up or sideways in the layering, and
// on a package the layering does not place.
func TestImportsPointDown(t *testing.T) {
	for _, p := range packages(t) {
		if p.ImportPath == "crkvol/internal/layout" {
			continue
		}
		from, ok := levelOf(p.ImportPath)
		if !ok {
			t.Errorf("package %s is not placed in the layering: add it to internal/layout (doc.go and level)", p.ImportPath)
			continue
		}
		for _, imp := range p.Imports {
			to, ok := levelOf(imp)
			if !ok {
				continue // reported as a package of its own
			}
			if to >= from && !(from == 0 && to == 0 && strings.HasPrefix(imp, "crkvol/internal/")) {
				t.Errorf("%s (level %d) imports %s (level %d): imports must point down", p.ImportPath, from, imp, to)
			}
			for _, f := range testOnly {
				if imp == f && !slices.Contains(testOnly, p.ImportPath) { // test helpers may share
					t.Errorf("%s imports %s outside its tests: that package is for tests only", p.ImportPath, imp)
				}
			}
			for _, f := range forbidden[p.ImportPath] {
				if imp == f {
					t.Errorf("%s imports %s: it must reach it only through an interface it declares", p.ImportPath, imp)
				}
			}
		}
	}
}

// TestCoreDoesNotReachVolume is the acceptance check in go list -deps terms: neither keyslot
// nor crk (nor anything under crk) depends on crkvol/volume or a package under it.
func TestCoreDoesNotReachVolume(t *testing.T) {
	for _, p := range packages(t) {
		if p.ImportPath != "crkvol/keyslot" && p.ImportPath != "crkvol/crk" && !strings.HasPrefix(p.ImportPath, "crkvol/crk/") {
			continue
		}
		for _, d := range p.Deps {
			if d == "crkvol/volume" || strings.HasPrefix(d, "crkvol/volume/") {
				t.Errorf("%s depends on %s", p.ImportPath, d)
			}
		}
	}
}
