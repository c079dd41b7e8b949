package volume_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// TestImagePassphraseUTF8: QEMU takes only a UTF-8 LUKS passphrase, so an export with a
// binary passphrase, and an import whose passphrase (given or unwrapped) is binary, are
// refused; the random passphrase of a catalog export is printable.
func TestImagePassphraseUTF8(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	bin := []byte{0xff, 0xfe, 'x'}
	out := filepath.Join(f.dir, "bin.qcow2")
	_, err := f.mgr.ExportImage(f.ctx, info.Path, out, volume.ExportOptions{Passphrase: bin})
	assert.ErrorIs(t, err, volume.ErrPassphraseNotUTF8)
	assert.NoFileExists(t, out)

	img := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, img, guestContent(64<<10, 1), bin, 4096)
	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "bin", KeyID: f.key.ID, Passphrase: bin})
	assert.ErrorIs(t, err, volume.ErrPassphraseNotUTF8)
	w, err := f.ks.Wrap(f.ctx, f.key.ID, bin, nil)
	require.NoError(t, err)
	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "bin", KeyID: f.key.ID, WDEK: w.Ciphertext})
	assert.ErrorIs(t, err, volume.ErrPassphraseNotUTF8)

	res, err := f.mgr.ExportImage(f.ctx, info.Path, filepath.Join(f.dir, "cat.qcow2"), volume.ExportOptions{Name: "cat"})
	require.NoError(t, err)
	u, err := f.ks.Unwrap(f.ctx, f.key.ID, res.Image.WDEK, nil)
	require.NoError(t, err)
	assert.Len(t, u.Plaintext, 44, "32 random bytes in base64")
	assert.True(t, utf8.Valid(u.Plaintext))
	assert.NotContains(t, string(u.Plaintext), "\n")
}

// TestQemuOpensCatalogExport: an image exported into the catalog (a random passphrase) opens
// in qemu-img with the passphrase its WDEK unwraps to, and reads as the volume's content.
func TestQemuOpensCatalogExport(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: runs qemu-img (CRKVOL_LONG_TESTS=1)")
	}
	bin := tooltest.Require(t, "qemu-img")["qemu-img"]
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	want := make([]byte, 1<<20)
	copy(want[4096:], pattern(8192, 3))
	_, err = v.WriteAt(want[4096:4096+8192], 4096)
	require.NoError(t, err)
	require.NoError(t, v.Close())

	out := filepath.Join(f.dir, "cat.qcow2")
	res, err := f.mgr.ExportImage(f.ctx, info.Path, out, volume.ExportOptions{Name: "cat", ClusterSize: 4096})
	require.NoError(t, err)
	u, err := f.ks.Unwrap(f.ctx, f.key.ID, res.Image.WDEK, nil)
	require.NoError(t, err)
	passFile := filepath.Join(f.dir, "pass")
	require.NoError(t, os.WriteFile(passFile, u.Plaintext, 0o600))
	got := qemuReadsExport(t, bin, out, passFile)
	assert.True(t, bytes.Equal(want, got), "qemu-img reads the export as the volume's content")
}
