package pgtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// templateCacheEnv names the directory that keeps the data directory initdb makes, shared
// by every test binary and every run (initdb costs about 1.5 CPU-seconds, and go test ./...
// runs several binaries that start clusters); "off" makes each binary run initdb itself.
// Default: crkvol-pgtest in the user's cache directory (else in the temporary directory).
const templateCacheEnv = "CRKVOL_PGTEST_CACHE"

// templateFormat changes when what initCluster does to a fresh data directory changes, so
// that an older cached template is not used.
const templateFormat = "1"

// cachedTemplate returns the data directory initdb made for the server programs in bin,
// kept in the template cache: made on first use by one test binary (a concurrent one that
// loses the race uses the winner's), reused by later ones as long as the server programs, the
// user the server runs as and initdb's arguments are the same. It returns "" when the cache
// is off or cannot be used; the caller then runs initdb itself.
func cachedTemplate(bin string) string {
	dir, key, err := templateCachePlace(bin)
	if err != nil || dir == "" {
		return ""
	}
	final := filepath.Join(dir, key)
	if complete(final) {
		return filepath.Join(final, "data")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	c, err := initCluster(bin, "")
	if err != nil {
		return ""
	}
	defer c.removeDir()
	staging, err := os.MkdirTemp(dir, key+".tmp-")
	if err != nil {
		return ""
	}
	defer os.RemoveAll(staging) // left empty by the rename below when it succeeds
	// cp -a keeps the owner and the 0700 mode postgres insists on.
	if out, err := exec.Command("cp", "-a", c.dataDir(), filepath.Join(staging, "data")).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cache the template data directory: %v: %s\n", err, strings.TrimSpace(string(out)))
		return ""
	}
	if err := os.WriteFile(filepath.Join(staging, "complete"), nil, 0o644); err != nil {
		return ""
	}
	// A rename is atomic: another binary sees no template or a whole one. When one got
	// there first, its template is as good as ours.
	if err := os.Rename(staging, final); err != nil && !complete(final) {
		return ""
	}
	return filepath.Join(final, "data")
}

// complete reports whether dir holds a whole cached template.
func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "complete"))
	return err == nil
}

// templateCachePlace returns the template cache's directory ("" when it is off) and the name
// of the template for the server programs in bin.
func templateCachePlace(bin string) (dir, key string, err error) {
	dir = os.Getenv(templateCacheEnv)
	switch dir {
	case "off":
		return "", "", nil
	case "":
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		dir = filepath.Join(base, "crkvol-pgtest")
	}
	h := sha256.New()
	fmt.Fprintf(h, "format %s\nbin %s\nuid %d\nargs %q\n", templateFormat, bin, os.Geteuid(), initdbArgs)
	for _, prog := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(bin, prog))
		if err != nil {
			return "", "", err
		}
		fmt.Fprintf(h, "%s %d %d\n", prog, fi.Size(), fi.ModTime().UnixNano())
	}
	return dir, hex.EncodeToString(h.Sum(nil))[:20], nil
}
