package keyslot

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
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
// our parameters and --dump-volume-key gives the master key back. (TestQEMULUKS1Headers has
// QEMU decrypt such an image's payload; cryptsetup open needs device-mapper.)
func TestFormatLUKS1OpensInCryptsetup(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	mk, pass, data := formatTestInputs()
	path, passFile := writeLUKS1Image(t, mk, pass, data, LUKS1Options{UUID: "c0ffee00-1234-4abc-8def-0123456789ab"})

	out := string(run(t, cs, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", passFile, path))
	assert.Contains(t, out, "c0ffee00-1234-4abc-8def-0123456789ab")
	assert.Regexp(t, `Cipher name:\s+aes\n`, out)
	assert.Regexp(t, `Cipher mode:\s+xts-plain64\n`, out)
	assert.Regexp(t, `Payload offset:\s+4040\n`, out)
	assert.Equal(t, hex.EncodeToString(mk), dumpedKey(t, out))
}

// formatTestInputs returns a 64-byte master key, a passphrase and 64 KiB of plaintext.
func formatTestInputs() (mk, pass, data []byte) {
	mk = make([]byte, 64)
	for i := range mk {
		mk[i] = byte(i*7 + 3)
	}
	pass = []byte("4f1c0e2b9a7d6c5b4f1c0e2b9a7d6c5b")
	data = bytes.Repeat([]byte("crkvol luks1 payload "), 64<<10/21+1)[:64<<10]
	return mk, pass, data
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

// TestQEMULUKS1Headers checks that QEMU opens a FormatLUKS1 image and decrypts its payload,
// and reads headers QEMU's LUKS writer made: a raw luks image from
// qemu-img convert -O luks, whose payload then decrypts to the source, and the LUKS header
// area of a qcow2 image (header extension 0x0537be77), parsed with the extension's length as
// the area size. qemu-img takes seconds per image (it times PBKDF2): long runs only.
func TestQEMULUKS1Headers(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("qemu-img takes seconds per LUKS image; set " + tooltest.LongEnv + "=1")
	}
	t.Parallel()
	qemu := tooltest.Require(t, "qemu-img")["qemu-img"]
	dir := t.TempDir()
	pass := []byte("qemu passphrase")
	passFile := filepath.Join(dir, "pass")
	require.NoError(t, os.WriteFile(passFile, pass, 0o600))
	src := bytes.Repeat([]byte("qemu luks1 source "), 256<<10/18+1)[:256<<10]
	srcFile := filepath.Join(dir, "src.raw")
	require.NoError(t, os.WriteFile(srcFile, src, 0o600))
	secret := "secret,id=sec0,file=" + passFile

	t.Run("formatted", func(t *testing.T) {
		// QEMU's luks driver opens a FormatLUKS1 image and decrypts its payload.
		t.Parallel()
		mk, pass, data := formatTestInputs()
		path, passFile := writeLUKS1Image(t, mk, pass, data, LUKS1Options{Hash: "sha512"})
		plain := filepath.Join(t.TempDir(), "plain.raw")
		run(t, qemu, "convert", "--object", "secret,id=sec1,file="+passFile, "--image-opts",
			"driver=luks,key-secret=sec1,file.filename="+path, "-O", "raw", plain)
		got, err := os.ReadFile(plain)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(data, got), "qemu-img decrypted %d bytes that differ from the plaintext", len(got))
	})
	t.Run("raw", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "raw.luks")
		run(t, qemu, "convert", "-f", "raw", "-O", "luks", "--object", secret,
			"-o", "key-secret=sec0,iter-time=10,cipher-alg=aes-128,hash-alg=sha1", srcFile, out)
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		h, err := ParseLUKS1(bytes.NewReader(b), int64(len(b)))
		require.NoError(t, err)
		assert.Equal(t, "sha1", h.HashSpec)
		assert.Equal(t, 32, h.KeyBytes)
		assert.Equal(t, uint64(2056), h.PayloadOffset) // QEMU's layout, as FormatLUKS1's
		key, _, err := h.Unlock(context.Background(), bytes.NewReader(b), pass)
		require.NoError(t, err)
		c, err := sector.New(key, 512)
		require.NoError(t, err)
		data := b[h.PayloadOffset*512:]
		require.Len(t, data, len(src))
		c.DecryptSectors(data, data, 0)
		assert.True(t, bytes.Equal(src, data), "the payload does not decrypt to the source")
	})
	t.Run("qcow2", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "img.qcow2")
		run(t, qemu, "convert", "-f", "raw", "-O", "qcow2", "--object", secret,
			"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", srcFile, out)
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		off, length := qcow2LUKSExtension(t, b)
		area := io.NewSectionReader(bytes.NewReader(b), off, length)
		h, err := ParseLUKS1(area, length)
		require.NoError(t, err)
		assert.Equal(t, 64, h.KeyBytes)
		assert.Equal(t, h.PayloadOffset*512, uint64(length), "QEMU sizes the extension to the payload offset")
		_, _, err = h.Unlock(context.Background(), area, pass)
		require.NoError(t, err)
		_, _, err = h.Unlock(context.Background(), area, []byte("wrong"))
		assert.ErrorIs(t, err, ErrLUKS1Passphrase)
	})
}

// qcow2LUKSExtension finds the LUKS header area of a qcow2 v3 image (QEMU's
// docs/interop/qcow2.txt: header extensions follow the header_length bytes of the header;
// type 0x0537be77 holds the area's offset and length, big-endian u64s). Enough for the test.
func qcow2LUKSExtension(t *testing.T, b []byte) (int64, int64) {
	t.Helper()
	require.Equal(t, uint32(3), binary.BigEndian.Uint32(b[4:]), "qcow2 version")
	off := int(binary.BigEndian.Uint32(b[100:]))
	for off+8 <= len(b) {
		typ, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
		if typ == 0 {
			break
		}
		if typ == 0x0537be77 {
			require.Equal(t, 16, n)
			return int64(binary.BigEndian.Uint64(b[off+8:])), int64(binary.BigEndian.Uint64(b[off+16:]))
		}
		off += 8 + (n+7)/8*8
	}
	t.Fatal("no LUKS header extension")
	return 0, 0
}
