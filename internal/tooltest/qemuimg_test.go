package tooltest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestQemuImgWrapperRetriesTheBenchmarkFlake runs the wrapper around a stand-in that fails
// twice with QEMU's benchmark message, then succeeds: the wrapper's caller sees only the
// success, with the stand-in's output and arguments; another failure is passed through at once.
func TestQemuImgWrapperRetriesTheBenchmarkFlake(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	fake := filepath.Join(dir, "fake-qemu-img")
	script := `#!/bin/sh
echo x >> ` + shellQuote(count) + `
n=$(wc -l < ` + shellQuote(count) + `)
if [ "$1" = fail ]; then echo "qemu-img: other error" >&2; exit 3; fi
if [ "$n" -le 2 ]; then echo "qemu-img: out.qcow2: error while converting qcow2: ` + qemuImgFlake + `" >&2; exit 1; fi
echo "args: $*"
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	path := os.Getenv("PATH")
	t.Cleanup(func() { os.Setenv("PATH", path) })
	w, err := wrapQemuImg(fake)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(os.Getenv("PATH"), filepath.Dir(w)+string(os.PathListSeparator)) {
		t.Errorf("PATH %q does not start with the wrapper's directory %s", os.Getenv("PATH"), filepath.Dir(w))
	}
	out, err := exec.Command(w, "convert", "a b").Output()
	if err != nil || string(out) != "args: convert a b\n" {
		t.Fatalf("wrapper: %q, %v; want the third attempt's output", out, err)
	}
	os.Remove(count)
	cmd := exec.Command(w, "fail")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || stderr.String() != "qemu-img: other error\n" {
		t.Fatalf("another failure: %v, stderr %q; want exit status 3 and its message, once", err, stderr.String())
	}
	if b, _ := os.ReadFile(count); strings.Count(string(b), "x") != 1 {
		t.Errorf("another failure ran %d times, want once", strings.Count(string(b), "x"))
	}
}
