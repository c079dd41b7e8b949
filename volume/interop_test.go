package volume_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
)

// TestCryptsetupReadsCrkvolVolume: cryptsetup accepts the unwrapped passphrase, and its own
// offline decryption turns the data written through crkvol back into the same plaintext.
func TestCryptsetupReadsCrkvolVolume(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	f := newFixture(t)
	const size = 4 << 20
	info := f.create(t, "interop.img", size)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	plain := pattern(size, 42)
	_, err = v.WriteAt(plain, 0)
	require.NoError(t, err)
	require.NoError(t, v.Close())
	f.rotate(t) // the passphrase is the same after a rotation; only its wrapping changed

	keyFile := filepath.Join(f.dir, "passphrase")
	require.NoError(t, os.WriteFile(keyFile, unwrapPassphrase(t, f, info.Path), 0o600))
	run(t, cs, "open", "--test-passphrase", "--key-file", keyFile, info.Path)

	img := filepath.Join(f.dir, "decrypt.img")
	raw, err := os.ReadFile(info.Path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(img, raw, 0o600))
	run(t, cs, "reencrypt", "--decrypt", "--batch-mode", "--key-file", keyFile, "--force-offline-reencrypt",
		"--hotzone-size", "256k", "--header", filepath.Join(f.dir, "decrypt.hdr"), img)
	out, err := os.ReadFile(img)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(plain, out[:size]), "cryptsetup's decryption of the data area equals what crkvol wrote")
}

// TestAdoptCryptsetupEncryptedFile: a plaintext file encrypted in place by cryptsetup, then
// adopted, reads back identical through crkvol; the original passphrase still works in
// cryptsetup, and the volume follows key rotations.
func TestAdoptCryptsetupEncryptedFile(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	f := newFixture(t)
	const fileSize, kept = 8 << 20, 6 << 20 // --reduce-device-size 2M gives up the last 2 MiB
	plain := pattern(fileSize, 7)
	path := filepath.Join(f.dir, "legacy.img")
	require.NoError(t, os.WriteFile(path, plain, 0o600))
	passFile := filepath.Join(f.dir, "pass")
	require.NoError(t, os.WriteFile(passFile, []byte("legacy passphrase"), 0o600))
	run(t, cs, "reencrypt", "--encrypt", "--batch-mode", "--reduce-device-size", "2M", "--sector-size", "4096",
		"--key-file", passFile, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--force-offline-reencrypt", path)

	_, err := f.mgr.Adopt(f.ctx, path, []byte("not it"), f.key.ID, volume.AdoptOptions{})
	require.ErrorIs(t, err, keyslot.ErrWrongPassphrase)
	info, err := f.mgr.Adopt(f.ctx, path, []byte("legacy passphrase"), f.key.ID, volume.AdoptOptions{})
	require.NoError(t, err)
	assert.Equal(t, f.key.KeyVersion.ID, info.KeyVersion)
	_, err = f.mgr.Adopt(f.ctx, path, []byte("legacy passphrase"), f.key.ID, volume.AdoptOptions{})
	require.ErrorIs(t, err, volume.ErrAlreadyAdopted)

	read := func() {
		t.Helper()
		v, err := f.mgr.Open(f.ctx, path)
		require.NoError(t, err)
		defer v.Close()
		got := make([]byte, kept)
		_, err = v.ReadAt(got, 0)
		require.NoError(t, err)
		require.True(t, bytes.Equal(plain[:kept], got), "adopted volume reads back the original plaintext")
	}
	read()
	f.rotate(t)
	require.NoError(t, f.lastReport().Err())
	read()
	run(t, cs, "open", "--test-passphrase", "--key-file", passFile, path)

	// A cryptsetup-made image without a token is not a crkvol volume yet.
	plainImg := filepath.Join(f.dir, "plain-luks.img")
	require.NoError(t, os.WriteFile(plainImg, make([]byte, 4<<20), 0o600))
	run(t, cs, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--luks2-keyslots-size", "1m", "--key-file", passFile, plainImg)
	_, err = f.mgr.Open(f.ctx, plainImg)
	require.ErrorIs(t, err, volume.ErrNoToken)
	v, err := volume.OpenWithPassphrase(plainImg, []byte("legacy passphrase"))
	require.NoError(t, err)
	require.NoError(t, v.Close())
}
