package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteReleasesStore: a `volume write` still reading its input (a pipe kept open) holds
// neither the key store nor the registry once the volume is unlocked: `key list` and a
// rotation of the volume's key run meanwhile, and the write then finishes.
func TestWriteReleasesStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := jsonField(t, cli(t, dir, "--json", "key", "create", "writes"), "id")
	img := filepath.Join(dir, "w.img")
	cli(t, dir, "volume", "create", img, "--size", "4MiB", "--key", key)

	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	t.Cleanup(func() { pw.Close() })
	_, wait := startCLI(t, dir, pr, "volume", "write", img)
	pr.Close()
	// Once this returns, the write has read most of it: it is past opening the volume.
	first := bytes.Repeat([]byte{0xa5}, 1<<20)
	_, err = pw.Write(first)
	require.NoError(t, err)

	assert.Contains(t, cli(t, dir, "key", "list"), key)
	assert.Contains(t, cli(t, dir, "key", "rotate", key), "rewrapped 1 of 1 volumes")

	_, err = pw.Write([]byte("end"))
	require.NoError(t, err)
	require.NoError(t, pw.Close())
	code, stderr := wait()
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "wrote 1048579 bytes at offset 0")
	got := cli(t, dir, "volume", "read", img, "--offset", "1048576", "--length", "3")
	assert.Equal(t, "end", got)
}
