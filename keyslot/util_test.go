package keyslot

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// memDevice is an in-memory Device of fixed size.
type memDevice struct {
	mu  sync.Mutex
	buf []byte
}

func newMemDevice(size int) *memDevice { return &memDevice{buf: make([]byte, size)} }

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off >= int64(len(d.buf)) {
		return 0, io.EOF
	}
	n := copy(p, d.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.buf)) {
		return 0, errors.New("memDevice: write past the end")
	}
	return copy(d.buf[off:], p), nil
}

func (d *memDevice) clone() *memDevice {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &memDevice{buf: bytes.Clone(d.buf)}
}

var errCrash = errors.New("simulated crash")

// crashDevice passes the first `allow` writes through to dev; the next one is torn (only
// its first `torn` bytes land, when torn > 0) and it and every later write fail, as if the
// process had died at that point.
type crashDevice struct {
	dev    *memDevice
	allow  int
	torn   int
	writes int
}

func (c *crashDevice) ReadAt(p []byte, off int64) (int, error) { return c.dev.ReadAt(p, off) }

func (c *crashDevice) WriteAt(p []byte, off int64) (int, error) {
	c.writes++
	if c.writes <= c.allow {
		return c.dev.WriteAt(p, off)
	}
	if c.writes == c.allow+1 && c.torn > 0 {
		_, _ = c.dev.WriteAt(p[:min(c.torn, len(p))], off)
	}
	return 0, errCrash
}

// countingDevice counts writes.
type countingDevice struct {
	*memDevice
	writes int
}

func (c *countingDevice) WriteAt(p []byte, off int64) (int, error) {
	c.writes++
	return c.memDevice.WriteAt(p, off)
}

// run runs a command and returns its stdout, failing the test with stderr on error.
func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s %v: %s", name, args, stderr.String())
	return stdout.Bytes()
}

// testKDF is a cheap KDF for tests that do not measure KDF behaviour.
var testKDF = PBKDF2("sha256", 1000)

// smallFormat is a small-image layout: 16 KiB metadata, 768 KiB keyslots (three 512-bit
// keyslots), data at 1 MiB.
func smallFormat() FormatOptions {
	return FormatOptions{KDF: testKDF, KeyslotsSize: 768 << 10}
}

const smallSize = (1 << 20) + 64<<10

// newMemImage formats an in-memory image.
func newMemImage(t testing.TB, pass string) (*memDevice, *Image, []byte) {
	t.Helper()
	dev := newMemDevice(smallSize)
	img, vk, err := Format(dev, smallSize, []byte(pass), smallFormat())
	require.NoError(t, err)
	return dev, img, vk
}

// newFileImage formats an image file in a temporary directory.
func newFileImage(t testing.TB, pass string, opts FormatOptions) (string, *Image, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.NoError(t, f.Truncate(smallSize))
	img, vk, err := Format(f, smallSize, []byte(pass), opts)
	require.NoError(t, err)
	return path, img, vk
}

// tryRun runs a command that may fail and returns its error.
func tryRun(name string, args ...string) error {
	return exec.Command(name, args...).Run()
}
