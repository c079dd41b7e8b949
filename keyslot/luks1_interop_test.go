package keyslot

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/sector"
)

// writeLUKS1Image writes a plain LUKS1 image to a new file: FormatLUKS1's header area, then
// data encrypted with mk (aes-xts-plain64, sectors counted from the payload, as cryptsetup
// and QEMU's raw luks driver count them). It returns the image and passphrase file paths.
func writeLUKS1Image(t *testing.T, mk, pass, data []byte, opts LUKS1Options) (string, string) {
	t.Helper()
	area, err := FormatLUKS1(context.Background(), mk, pass, opts)
	require.NoError(t, err)
	c, err := sector.New(mk, 512)
	require.NoError(t, err)
	enc := make([]byte, len(data))
	c.EncryptSectors(enc, data, 0)
	dir := t.TempDir()
	path := filepath.Join(dir, "luks1.img")
	require.NoError(t, os.WriteFile(path, append(area, enc...), 0o600))
	passFile := filepath.Join(dir, "pass")
	require.NoError(t, os.WriteFile(passFile, pass, 0o600))
	return path, passFile
}

// TestFormatLUKS1OpensInCryptsetup checks a FormatLUKS1 image with cryptsetup: luksDump names
// our parameters and --dump-volume-key gives the master key back; and, when qemu-img is
// installed, QEMU's luks driver decrypts the payload to the plaintext written.
func TestFormatLUKS1OpensInCryptsetup(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	mk := make([]byte, 64)
	for i := range mk {
		mk[i] = byte(i*7 + 3)
	}
	pass := []byte("4f1c0e2b9a7d6c5b4f1c0e2b9a7d6c5b")
	data := bytes.Repeat([]byte("crkvol luks1 payload "), 64<<10/21+1)[:64<<10]
	path, passFile := writeLUKS1Image(t, mk, pass, data, LUKS1Options{UUID: "c0ffee00-1234-4abc-8def-0123456789ab"})

	out := string(run(t, cs, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", passFile, path))
	assert.Contains(t, out, "c0ffee00-1234-4abc-8def-0123456789ab")
	assert.Regexp(t, `Cipher name:\s+aes\n`, out)
	assert.Regexp(t, `Cipher mode:\s+xts-plain64\n`, out)
	assert.Regexp(t, `Payload offset:\s+4040\n`, out)
	assert.Equal(t, hex.EncodeToString(mk), dumpedKey(t, out))

	qemu := tooltest.Available(t, "qemu-img")["qemu-img"]
	if qemu == "" {
		return
	}
	plain := filepath.Join(t.TempDir(), "plain.raw")
	run(t, qemu, "convert", "--object", "secret,id=sec0,file="+passFile, "--image-opts",
		"driver=luks,key-secret=sec0,file.filename="+path, "-O", "raw", plain)
	got, err := os.ReadFile(plain)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got), "qemu-img decrypted %d bytes that differ from the plaintext", len(got))
}

// TestCryptsetupLUKS1Images formats LUKS1 images with cryptsetup (pbkdf2 sha1 and sha256,
// 256- and 512-bit keys) and checks Unlock gives the master key luksDump --dump-volume-key
// shows. Eight cryptsetup runs: long runs only.
func TestCryptsetupLUKS1Images(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("runs cryptsetup eight times; set " + tooltest.LongEnv + "=1")
	}
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	for _, hash := range []string{"sha1", "sha256"} {
		for _, bits := range []int{256, 512} {
			t.Run(fmt.Sprintf("%s-%d", hash, bits), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				path := filepath.Join(dir, "luks1.img")
				require.NoError(t, os.WriteFile(path, nil, 0o600))
				require.NoError(t, os.Truncate(path, 3<<20))
				pass := []byte("cryptsetup luks1 " + hash)
				passFile := filepath.Join(dir, "pass")
				require.NoError(t, os.WriteFile(passFile, pass, 0o600))
				run(t, cs, "luksFormat", "--batch-mode", "--type", "luks1", "--cipher", "aes-xts-plain64",
					"--key-size", fmt.Sprint(bits), "--hash", hash, "--pbkdf-force-iterations", "1000",
					"--key-file", passFile, path)
				want := dumpedKey(t, string(run(t, cs, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", passFile, path)))

				f, err := os.Open(path)
				require.NoError(t, err)
				defer f.Close()
				h, err := ParseLUKS1(f, 3<<20)
				require.NoError(t, err)
				assert.Equal(t, hash, h.HashSpec)
				assert.Equal(t, bits/8, h.KeyBytes)
				key, slot, err := h.Unlock(context.Background(), f, pass)
				require.NoError(t, err)
				assert.Equal(t, 0, slot)
				assert.Equal(t, want, hex.EncodeToString(key))
			})
		}
	}
}
