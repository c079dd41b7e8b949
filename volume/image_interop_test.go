package volume_test

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// The end-to-end acceptance of encrypted custom images against QEMU's own tools: images that
// qemu-img encrypts import, volumes made from them read back the raw source exactly (and
// qemu-img compare agrees), exports open in qemu-img, rotations rewrap the images' WDEKs
// without touching the files. They run qemu-img many times, so they are long tests.

// qemuImg runs qemu-img and returns its output; it fails the test on an error. bin is the
// qemu-img tooltest.Require gives, which tries a run again when QEMU's PBKDF2 benchmark fails
// with "Unable to get accurate CPU usage".
func qemuImg(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuReadsExport checks with qemu-img that the encrypted qcow2 image out, whose passphrase is
// in passFile, is clean (qemu-img check) and returns its content as qemu-img convert reads it.
func qemuReadsExport(t testing.TB, bin, out, passFile string) []byte {
	t.Helper()
	secret := "secret,id=sec0,file=" + passFile
	check := qemuImg(t, bin, "check", "--object", secret, "--image-opts", qcow2Opts(out))
	assert.Contains(t, check, "No errors were found on the image")
	raw := out + ".raw"
	qemuImg(t, bin, "convert", "--object", secret, "--image-opts", qcow2Opts(out), "-O", "raw", raw)
	got, err := os.ReadFile(raw)
	require.NoError(t, err)
	return got
}

// qemuEncrypt converts the raw file raw into an encrypted qcow2 image out with qemu-img,
// passphrase in the file passFile and extra -o options opts.
func qemuEncrypt(t testing.TB, bin, raw, out, passFile, opts string) {
	t.Helper()
	o := "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
	if opts != "" {
		o += "," + opts
	}
	qemuImg(t, bin, "convert", "-f", "raw", "-O", "qcow2", "--object", "secret,id=sec0,file="+passFile, "-o", o, raw, out)
}

// qcow2Opts is the --image-opts text of the encrypted qcow2 image path, secret sec0.
func qcow2Opts(path string) string {
	return "driver=qcow2,file.filename=" + path + ",encrypt.key-secret=sec0"
}

// writeSparseRaw writes content to path leaving its all-zero 64 KiB blocks as holes.
func writeSparseRaw(t testing.TB, path string, content []byte) {
	t.Helper()
	fh, err := os.Create(path)
	require.NoError(t, err)
	defer fh.Close()
	require.NoError(t, fh.Truncate(int64(len(content))))
	for off := 0; off < len(content); off += 64 << 10 {
		b := content[off:min(off+64<<10, len(content))]
		if !bytes.Equal(b, make([]byte, len(b))) {
			_, err := fh.WriteAt(b, int64(off))
			require.NoError(t, err)
		}
	}
}

// TestQemuImagesRoundTrip: for each kind of image qemu-img makes (cluster sizes 4 KiB, 64
// KiB and 2 MiB; qcow2 v2 and v3; default and other LUKS options; a sparse source with
// holes), the image imports with its WDEK, a volume made from it reads back the raw source
// byte for byte (qemu-img compare agrees on the volume's plaintext), and the volume's export
// passes qemu-img check, converts back with its passphrase to the same content, and compares
// equal to the source in qemu-img.
func TestQemuImagesRoundTrip(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test (CRKVOL_LONG_TESTS=1): runs qemu-img a dozen times")
	}
	t.Parallel()
	bin := tooltest.Require(t, "qemu-img")["qemu-img"]
	const size = 4 << 20
	tests := []struct {
		name, opts string
		sparse     bool
		cipher     string
		export     volume.ExportOptions
	}{
		{"4k-v3-default", "cluster_size=4096,compat=1.1", false, "aes-xts-plain64, 512-bit key, sha256",
			volume.ExportOptions{ClusterSize: 4096}},
		{"64k-v2-aes128-sha1", "cluster_size=65536,compat=0.10,encrypt.cipher-alg=aes-128,encrypt.hash-alg=sha1", false, "aes-xts-plain64, 256-bit key, sha1",
			volume.ExportOptions{KeyBytes: 32, Hash: "sha1", IterTime: 100 * time.Millisecond}},
		{"2m-v3-sha512", "cluster_size=2M,compat=1.1,encrypt.hash-alg=sha512", false, "aes-xts-plain64, 512-bit key, sha512",
			volume.ExportOptions{ClusterSize: 2 << 20, Hash: "sha512", Iterations: 5000}},
		{"64k-v3-sparse", "cluster_size=65536,compat=1.1", true, "aes-xts-plain64, 512-bit key, sha256",
			volume.ExportOptions{ClusterSize: 65536, IterTime: 50 * time.Millisecond}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			content := pattern(size, uint64(100+i))
			if tc.sparse {
				clear(content[256<<10 : 1<<20])
				clear(content[2<<20 : 3<<20])
				clear(content[size-128<<10:])
			}
			raw := filepath.Join(f.dir, "src.raw")
			writeSparseRaw(t, raw, content)
			pass := []byte(hex.EncodeToString(randomPass(t))) // QEMU wants a UTF-8 secret
			passFile := filepath.Join(f.dir, "pass")
			require.NoError(t, os.WriteFile(passFile, pass, 0o600))
			img := filepath.Join(f.dir, "src.qcow2")
			qemuEncrypt(t, bin, raw, img, passFile, tc.opts)
			sum := sha256File(t, img)

			w, err := f.ks.Wrap(f.ctx, f.key.ID, pass, nil)
			require.NoError(t, err)
			e, err := f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "src", KeyID: f.key.ID, WDEK: w.Ciphertext})
			require.NoError(t, err)
			assert.Equal(t, tc.cipher, e.Cipher)
			assert.Equal(t, int64(size), e.Size)
			assert.Equal(t, sum, e.SHA256)
			if strings.Contains(tc.opts, "compat=0.10") {
				assert.Equal(t, 2, e.QcowVersion)
			} else {
				assert.Equal(t, 3, e.QcowVersion)
			}

			k2, err := f.svc.CreateRootKey(f.ctx, "k2")
			require.NoError(t, err)
			vol := filepath.Join(f.dir, "vol.img")
			_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "src", KeyID: k2.ID})
			require.NoError(t, err)
			plain := f.volumeContent(t, vol)
			require.True(t, bytes.Equal(content, plain), "the volume reads back the raw source")
			volRaw := filepath.Join(f.dir, "vol.raw")
			require.NoError(t, os.WriteFile(volRaw, plain, 0o600))
			qemuImg(t, bin, "compare", "-f", "raw", "-F", "raw", raw, volRaw)

			pass2 := []byte("an export passphrase")
			pass2File := filepath.Join(f.dir, "pass2")
			require.NoError(t, os.WriteFile(pass2File, pass2, 0o600))
			out := filepath.Join(f.dir, "out.qcow2")
			opts := tc.export
			opts.Passphrase = pass2
			res, err := f.mgr.ExportImage(f.ctx, vol, out, opts)
			require.NoError(t, err)
			secret := "secret,id=sec0,file=" + pass2File
			got := qemuReadsExport(t, bin, out, pass2File)
			assert.True(t, bytes.Equal(plain, got), "qemu-img reads the export as the volume's content")
			qemuImg(t, bin, "compare", "--object", secret, "--image-opts", "driver=raw,file.filename="+raw, qcow2Opts(out))
			if tc.sparse {
				// The zero stretches (1.875 MiB of 4) are not in the export.
				assert.LessOrEqual(t, res.DataClusters*65536, int64(size-1<<20-768<<10))
			}
			assert.Equal(t, sum, sha256File(t, img), "the imported image is never written")
		})
	}
}

// TestQemuImageRotationAndBadInput: with volumes and qemu-made images under one key, a
// rotation rewraps both in one report, counted apart; the image files' SHA-256 is unchanged,
// and a volume made from an image after the rotation reads back its source. A wrong WDEK,
// another key's WDEK, an unencrypted qcow2 and an image file replaced after its import are
// refused.
func TestQemuImageRotationAndBadInput(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test (CRKVOL_LONG_TESTS=1): runs qemu-img")
	}
	t.Parallel()
	bin := tooltest.Require(t, "qemu-img")["qemu-img"]
	f := newFixture(t)
	const size = 2 << 20
	content := pattern(size, 77)
	raw := filepath.Join(f.dir, "src.raw")
	require.NoError(t, os.WriteFile(raw, content, 0o600))
	pass := []byte(hex.EncodeToString(randomPass(t))) // QEMU wants a UTF-8 secret
	passFile := filepath.Join(f.dir, "pass")
	require.NoError(t, os.WriteFile(passFile, pass, 0o600))
	img := filepath.Join(f.dir, "a.qcow2")
	qemuEncrypt(t, bin, raw, img, passFile, "")
	// A second image file: a copy of the first (another file, the same passphrase).
	imgB := filepath.Join(f.dir, "b.qcow2")
	b, err := os.ReadFile(img)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(imgB, b, 0o644))
	plainImg := filepath.Join(f.dir, "plain.qcow2")
	qemuImg(t, bin, "convert", "-f", "raw", "-O", "qcow2", raw, plainImg)

	w, err := f.ks.Wrap(f.ctx, f.key.ID, pass, nil)
	require.NoError(t, err)
	other, err := f.svc.CreateRootKey(f.ctx, "other")
	require.NoError(t, err)
	otherW, err := f.ks.Wrap(f.ctx, other.ID, pass, nil)
	require.NoError(t, err)
	wrongW, err := f.ks.Wrap(f.ctx, f.key.ID, []byte(hex.EncodeToString(randomPass(t))), nil)
	require.NoError(t, err)

	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "x", KeyID: f.key.ID, WDEK: wrongW.Ciphertext})
	assert.ErrorContains(t, err, "does not unlock")
	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "x", KeyID: f.key.ID, WDEK: otherW.Ciphertext})
	assert.ErrorIs(t, err, volume.ErrKeyRefused)
	assert.ErrorContains(t, err, "the WDEK does not unwrap with key "+f.key.ID)
	_, err = f.mgr.ImportImage(f.ctx, plainImg, volume.ImportOptions{Name: "x", KeyID: f.key.ID, WDEK: w.Ciphertext})
	assert.ErrorIs(t, err, volume.ErrImageNotEncrypted)

	_, err = f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "img-a", KeyID: f.key.ID, WDEK: w.Ciphertext})
	require.NoError(t, err)
	_, err = f.mgr.ImportImage(f.ctx, imgB, volume.ImportOptions{Name: "img-b", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	sumA, sumB := sha256File(t, img), sha256File(t, imgB)
	const nVol = 3
	for i := range nVol {
		f.create(t, "v"+string(rune('0'+i))+".img", 1<<20)
	}

	k := f.rotate(t)
	rep := f.lastReport()
	require.NoError(t, rep.Err())
	assert.Equal(t, nVol, rep.Volumes)
	assert.Equal(t, nVol, rep.Rewrapped)
	assert.Equal(t, 2, rep.Images)
	assert.Equal(t, 2, rep.ImagesRewrapped)
	for _, name := range []string{"img-a", "img-b"} {
		e, err := f.reg.Image(name)
		require.NoError(t, err)
		assert.Equal(t, k.KeyVersion.ID, e.KeyVersion)
	}
	assert.Equal(t, sumA, sha256File(t, img))
	assert.Equal(t, sumB, sha256File(t, imgB))

	vol := filepath.Join(f.dir, "after.img")
	_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "img-a", KeyID: f.key.ID})
	require.NoError(t, err)
	assert.True(t, bytes.Equal(content, f.volumeContent(t, vol)), "a volume made after the rotation reads back the source")

	// Replaced after its import (the same bytes, another file): refused, nothing left.
	tmp := imgB + ".new"
	require.NoError(t, os.WriteFile(tmp, b, 0o644))
	require.NoError(t, os.Rename(tmp, imgB))
	vol2 := filepath.Join(f.dir, "replaced.img")
	_, err = f.mgr.CreateFromImage(f.ctx, vol2, volume.FromImageOptions{Image: "img-b", KeyID: f.key.ID})
	assert.ErrorIs(t, err, volume.ErrImageChanged)
	assert.NoFileExists(t, vol2)
}
