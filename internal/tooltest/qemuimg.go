package tooltest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// qemuImgFlake is what qemu-img says when its PBKDF2 benchmark (encrypt.iter-time) measured
// no thread CPU time: the first round can finish within one tick of the clock on a fast
// CPU, a QEMU weakness unrelated to what a test checks. The run is simply tried again.
const qemuImgFlake = "Unable to get accurate CPU usage"

var qemuImgWrapper struct {
	once sync.Once
	path string
	err  error
}

// wrapQemuImg returns the path of a wrapper around the qemu-img at real that runs it again
// (at most four more times) when it fails with qemuImgFlake, and puts the wrapper's directory
// first on this process's PATH, so that testscripts and shell commands the tests run find it
// too. It writes the wrapper once per test binary, in a directory of its own under the
// temporary directory.
func wrapQemuImg(real string) (string, error) {
	w := &qemuImgWrapper
	w.once.Do(func() {
		dir, err := os.MkdirTemp("", "crkvol-qemu-img-")
		if err != nil {
			w.err = err
			return
		}
		script := fmt.Sprintf(`#!/bin/sh
# Written by crkvol's internal/tooltest for its tests: runs %[1]s, and runs it again (at most
# four more times) when it fails with %[2]q, a QEMU benchmark flake.
err=$(mktemp) || exit 1
for try in 1 2 3 4 5; do
	%[1]s "$@" 2>"$err"
	rc=$?
	if [ $rc -ne 0 ] && grep -q %[2]q "$err"; then
		continue
	fi
	break
done
cat "$err" >&2
rm -f "$err"
exit $rc
`, shellQuote(real), qemuImgFlake)
		p := filepath.Join(dir, "qemu-img")
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			w.err = err
			return
		}
		w.err = os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		w.path = p
	})
	return w.path, w.err
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
