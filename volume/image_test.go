package volume_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/keyslot"
	"crkvol/qcow2"
	"crkvol/sector"
	"crkvol/volume"
)

// guestContent is n bytes of random data with all-zero stretches (holes once written to
// qcow2): [n/4, n/2) and the last 64 KiB.
func guestContent(n int, seed uint64) []byte {
	b := pattern(n, seed)
	clear(b[n/4 : n/2])
	clear(b[n-64<<10:])
	return b
}

// writeQcow2 writes content as a qcow2 image at path, encrypted with LUKS under pass (nil:
// unencrypted), with crkvol's own writer (the long tests use qemu-img's images).
func writeQcow2(t testing.TB, path string, content, pass []byte, cluster int) {
	t.Helper()
	opts := qcow2.WriteOptions{Size: int64(len(content)), ClusterSize: cluster}
	if pass != nil {
		mk := make([]byte, 64)
		_, err := rand.Read(mk)
		require.NoError(t, err)
		opts.EncryptionHeader, err = keyslot.FormatLUKS1(context.Background(), mk, pass, keyslot.LUKS1Options{})
		require.NoError(t, err)
		c, err := sector.New(mk, 512)
		require.NoError(t, err)
		defer c.Wipe()
		opts.Cipher = c
	}
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	require.NoError(t, err)
	defer fh.Close()
	_, err = qcow2.Write(context.Background(), fh, bytes.NewReader(content), nil, opts)
	require.NoError(t, err)
}

// readQcow2 returns the guest content of the encrypted qcow2 image at path.
func readQcow2(t testing.TB, path string, pass []byte) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	qi, err := qcow2.Open(bytes.NewReader(raw), int64(len(raw)), qcow2.Options{})
	require.NoError(t, err)
	require.True(t, qi.Encrypted())
	area := qi.EncryptionHeader()
	h, err := keyslot.ParseLUKS1(area, area.Size())
	require.NoError(t, err)
	mk, _, err := h.Unlock(context.Background(), area, pass)
	require.NoError(t, err)
	c, err := sector.New(mk, 512)
	require.NoError(t, err)
	r, err := qi.Reader(c)
	require.NoError(t, err)
	out := make([]byte, qi.Size())
	_, err = r.ReadAt(out, 0)
	require.NoError(t, err)
	return out
}

// volumeContent reads a whole volume.
func (f *fixture) volumeContent(t testing.TB, path string) []byte {
	t.Helper()
	v, err := f.mgr.OpenWith(f.ctx, path, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	defer v.Close()
	out := make([]byte, v.Size())
	_, err = v.ReadAt(out, 0)
	require.NoError(t, err)
	return out
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	s := sha256.Sum256(raw)
	return hex.EncodeToString(s[:])
}

// randomPass returns a random printable passphrase (QEMU takes only UTF-8 ones).
func randomPass(t testing.TB) []byte {
	t.Helper()
	p := make([]byte, 32)
	_, err := rand.Read(p)
	require.NoError(t, err)
	return []byte(base64.StdEncoding.EncodeToString(p))
}

// TestImportImageAndCreateFromIt: an encrypted qcow2 image imports with its WDEK (or its
// passphrase), the catalog describes it, its CRN is registered with the key, and a volume
// made from it under another key reads back the image's guest content exactly, with
// progress; with Sparse, the zero stretches are not written.
func TestImportImageAndCreateFromIt(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 2 << 20
	content := guestContent(size, 5)
	pass := randomPass(t)
	imgPath := filepath.Join(f.dir, "src.qcow2")
	writeQcow2(t, imgPath, content, pass, 65536)
	w, err := f.ks.Wrap(f.ctx, f.key.ID, pass, nil)
	require.NoError(t, err)

	e, err := f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "src", KeyID: f.key.ID, WDEK: w.Ciphertext})
	require.NoError(t, err)
	fi, err := os.Stat(imgPath)
	require.NoError(t, err)
	assert.Equal(t, "src", e.Name)
	assert.Regexp(t, `^crn:v1:local:public:is:local:a/crkvol::image:`+e.UUID+`$`, e.CRN)
	assert.Equal(t, imgPath, e.Path)
	assert.Equal(t, w.Ciphertext, e.WDEK)
	assert.Equal(t, w.VersionID, e.KeyVersion)
	assert.Equal(t, int64(size), e.Size)
	assert.Equal(t, fi.Size(), e.FileSize)
	assert.Equal(t, sha256File(t, imgPath), e.SHA256)
	assert.Equal(t, 65536, e.ClusterSize)
	assert.Equal(t, 3, e.QcowVersion)
	assert.Equal(t, "aes-xts-plain64, 512-bit key, sha256", e.Cipher)
	assert.Equal(t, uint64(fi.Sys().(*syscall.Stat_t).Ino), e.Inode)
	got, err := f.reg.Image("src")
	require.NoError(t, err)
	assert.Equal(t, *e, got)
	assert.Equal(t, w.VersionID, f.registrationVersion(t, e.CRN))
	// The registration prevents the key's deletion.
	_, err = f.svc.DeleteKey(f.ctx, f.key.ID, crk.DeleteOptions{Force: true})
	assert.Error(t, err, "a key with an imported image cannot be deleted")

	// The same image imported again with its passphrase: the WDEK made unwraps to it.
	e2, err := f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "src-again", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	u, err := f.ks.Unwrap(f.ctx, f.key.ID, e2.WDEK, nil)
	require.NoError(t, err)
	assert.Equal(t, pass, u.Plaintext)
	assert.NotEqual(t, e.CRN, e2.CRN)

	k2, err := f.svc.CreateRootKey(f.ctx, "k2")
	require.NoError(t, err)
	var calls [][2]int64
	volPath := filepath.Join(f.dir, "from.img")
	var partials []string
	info, err := f.mgr.CreateFromImage(f.ctx, volPath, volume.FromImageOptions{
		Image: "src", KeyID: k2.ID, Progress: func(done, total int64) {
			calls = append(calls, [2]int64{done, total})
			if done == 0 {
				// Filled at a partial sibling path; the final path appears only when complete.
				_, err := os.Lstat(volPath)
				assert.ErrorIs(t, err, fs.ErrNotExist)
				partials, _ = filepath.Glob(filepath.Join(f.dir, ".from.img.partial-*"))
			}
		},
	})
	require.NoError(t, err)
	assert.Len(t, partials, 1)
	left, _ := filepath.Glob(filepath.Join(f.dir, ".from.img.partial-*"))
	assert.Empty(t, left)
	assert.Equal(t, volPath, info.Path)
	entries, err := f.reg.List()
	require.NoError(t, err)
	found := false
	for _, en := range entries {
		if en.CRN == info.CRN {
			found = true
			assert.Equal(t, volPath, en.Path, "registered at the final path")
		}
	}
	assert.True(t, found)
	// An existing path is refused before anything is made.
	_, err = f.mgr.CreateFromImage(f.ctx, volPath, volume.FromImageOptions{Image: "src", KeyID: k2.ID})
	assert.ErrorIs(t, err, fs.ErrExist)
	assert.Equal(t, k2.ID, info.KeyID)
	assert.Equal(t, int64(size), info.Size)
	assert.True(t, bytes.Equal(content, f.volumeContent(t, volPath)), "the volume reads back the image's content")
	require.NotEmpty(t, calls)
	assert.Equal(t, [2]int64{0, size}, calls[0])
	assert.Equal(t, [2]int64{size, size}, calls[len(calls)-1])

	// Larger: the image's content, then the rest of the volume.
	big := filepath.Join(f.dir, "big.img")
	_, err = f.mgr.CreateFromImage(f.ctx, big, volume.FromImageOptions{Image: "src", KeyID: k2.ID, Size: 2 * size})
	require.NoError(t, err)
	all := f.volumeContent(t, big)
	assert.Len(t, all, 2*size)
	assert.True(t, bytes.Equal(content, all[:size]))

	// Sparse: the zero stretches are not written, so the file holds fewer blocks.
	sparse := filepath.Join(f.dir, "sparse.img")
	_, err = f.mgr.CreateFromImage(f.ctx, sparse, volume.FromImageOptions{Image: "src", KeyID: k2.ID, Sparse: true})
	require.NoError(t, err)
	st, err := os.Stat(sparse)
	require.NoError(t, err)
	full, err := os.Stat(volPath)
	require.NoError(t, err)
	allocated := st.Sys().(*syscall.Stat_t).Blocks * 512
	assert.Less(t, allocated, full.Sys().(*syscall.Stat_t).Blocks*512)
	assert.LessOrEqual(t, allocated, int64(1<<20+size-size/4-64<<10+64<<10), "header area and data; the zero stretches stay holes")
	got2 := f.volumeContent(t, sparse)
	assert.True(t, bytes.Equal(content[:size/4], got2[:size/4]))
	assert.True(t, bytes.Equal(content[size/2:size-64<<10], got2[size/2:size-64<<10]))
}

// TestImportImageRefuses: a WDEK that does not unwrap with the key (garbage, or another
// key's), one that unwraps to a wrong passphrase, an unencrypted or non-qcow2 file, bad
// options, a taken name: each is refused with a clear error, and leaves no registration and
// no catalog entry.
func TestImportImageRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	content := guestContent(1<<20, 9)
	pass := randomPass(t)
	imgPath := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, imgPath, content, pass, 65536)
	plainPath := filepath.Join(f.dir, "plain.qcow2")
	writeQcow2(t, plainPath, content, nil, 65536)
	junkPath := filepath.Join(f.dir, "junk.qcow2")
	require.NoError(t, os.WriteFile(junkPath, pattern(1<<16, 3), 0o644))

	other, err := f.svc.CreateRootKey(f.ctx, "other")
	require.NoError(t, err)
	otherWDEK, err := f.ks.Wrap(f.ctx, other.ID, pass, nil)
	require.NoError(t, err)
	wrongPass, err := f.ks.Wrap(f.ctx, f.key.ID, randomPass(t), nil)
	require.NoError(t, err)
	good, err := f.ks.Wrap(f.ctx, f.key.ID, pass, nil)
	require.NoError(t, err)
	withAAD, err := f.ks.Wrap(f.ctx, f.key.ID, pass, []string{"x"})
	require.NoError(t, err)
	_, err = f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "taken", KeyID: f.key.ID, WDEK: good.Ciphertext})
	require.NoError(t, err)

	tests := []struct {
		name    string
		path    string
		opts    volume.ImportOptions
		is      error
		message string
	}{
		{"garbage WDEK", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: pattern(80, 1)}, volume.ErrKeyRefused, "the WDEK does not unwrap with key " + f.key.ID},
		{"another key's WDEK", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: otherWDEK.Ciphertext}, volume.ErrKeyRefused, "the WDEK does not unwrap with key " + f.key.ID},
		{"WDEK with AAD", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: withAAD.Ciphertext}, volume.ErrKeyRefused, "the WDEK does not unwrap"},
		{"wrong passphrase wrapped", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: wrongPass.Ciphertext}, keyslot.ErrLUKS1Passphrase, "the WDEK unwraps with key " + f.key.ID + " but does not unlock"},
		{"wrong passphrase", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, Passphrase: []byte("nope")}, keyslot.ErrLUKS1Passphrase, "the passphrase does not unlock"},
		{"unencrypted", plainPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: good.Ciphertext}, volume.ErrImageNotEncrypted, "not encrypted"},
		{"not qcow2", junkPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: good.Ciphertext}, qcow2.ErrFormat, "junk.qcow2"},
		{"missing file", filepath.Join(f.dir, "none"), volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: good.Ciphertext}, os.ErrNotExist, "none"},
		{"both", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID, WDEK: good.Ciphertext, Passphrase: pass}, nil, "exactly one of a WDEK and a passphrase"},
		{"neither", imgPath, volume.ImportOptions{Name: "a", KeyID: f.key.ID}, nil, "exactly one of a WDEK and a passphrase"},
		{"no key", imgPath, volume.ImportOptions{Name: "a", WDEK: good.Ciphertext}, nil, "a root key id is required"},
		{"bad name", imgPath, volume.ImportOptions{Name: "A", KeyID: f.key.ID, WDEK: good.Ciphertext}, volume.ErrImageName, "invalid image name"},
		{"taken name", imgPath, volume.ImportOptions{Name: "taken", KeyID: f.key.ID, WDEK: good.Ciphertext}, volume.ErrImageExists, "taken"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.mgr.ImportImage(f.ctx, tc.path, tc.opts)
			require.Error(t, err)
			if tc.is != nil {
				assert.ErrorIs(t, err, tc.is)
			}
			assert.ErrorContains(t, err, tc.message)
			assert.NotContains(t, err.Error(), string(pass))
		})
	}
	list, err := f.reg.Images()
	require.NoError(t, err)
	assert.Len(t, list, 1, "only the first import")
	regs, _, err := f.ks.Registrations(f.ctx, f.key.ID)
	require.NoError(t, err)
	assert.Len(t, regs, 1, "no registration left by a refused import")
	regs, _, err = f.ks.Registrations(f.ctx, other.ID)
	require.NoError(t, err)
	assert.Empty(t, regs)
}

// TestCreateFromImageRefuses: a volume is not made from an image whose file was replaced
// or changed since the import, nor smaller than the image, nor from an unknown image; each
// failure leaves nothing at the volume's path and no registration.
func TestCreateFromImageRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	content := guestContent(1<<20, 11)
	pass := randomPass(t)
	imgPath := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, imgPath, content, pass, 65536)
	_, err := f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "img", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	regsBefore, _, err := f.ks.Registrations(f.ctx, f.key.ID)
	require.NoError(t, err)

	vol := filepath.Join(f.dir, "vol.img")
	check := func(t *testing.T, opts volume.FromImageOptions, is error, msg string) {
		t.Helper()
		_, err := f.mgr.CreateFromImage(f.ctx, vol, opts)
		require.Error(t, err)
		if is != nil {
			assert.ErrorIs(t, err, is)
		}
		assert.ErrorContains(t, err, msg)
		assert.NoFileExists(t, vol)
		regs, _, err := f.ks.Registrations(f.ctx, f.key.ID)
		require.NoError(t, err)
		assert.Equal(t, regsBefore, regs)
	}
	t.Run("smaller", func(t *testing.T) {
		check(t, volume.FromImageOptions{Image: "img", KeyID: f.key.ID, Size: 512 << 10}, volume.ErrBadSize, "smaller than the image")
	})
	t.Run("unknown image", func(t *testing.T) {
		check(t, volume.FromImageOptions{Image: "nope", KeyID: f.key.ID}, volume.ErrImageNotFound, "nope")
	})
	t.Run("unknown key", func(t *testing.T) {
		check(t, volume.FromImageOptions{Image: "img", KeyID: "0123abcd-89ab-4def-8123-456789abcdef"}, volume.ErrKeyRefused, "")
	})
	t.Run("interrupted", func(t *testing.T) {
		// Cancelled once the copy has begun: the half-made volume is deleted.
		ctx, cancel := context.WithCancel(f.ctx)
		defer cancel()
		_, err := f.mgr.CreateFromImage(ctx, vol, volume.FromImageOptions{Image: "img", KeyID: f.key.ID,
			Progress: func(done, total int64) {
				if done > 0 {
					cancel()
				}
			}})
		assert.ErrorIs(t, err, context.Canceled)
		assert.NoFileExists(t, vol)
		regs, _, err := f.ks.Registrations(f.ctx, f.key.ID)
		require.NoError(t, err)
		assert.Equal(t, regsBefore, regs)
	})
	t.Run("changed in place", func(t *testing.T) {
		// Same size, the modification time set back: the change time and then the SHA-256
		// tell.
		fi, err := os.Stat(imgPath)
		require.NoError(t, err)
		fh, err := os.OpenFile(imgPath, os.O_RDWR, 0)
		require.NoError(t, err)
		_, err = fh.WriteAt(bytes.Repeat([]byte{0x41}, 512), fi.Size()-512)
		require.NoError(t, err)
		require.NoError(t, fh.Close())
		require.NoError(t, os.Chtimes(imgPath, fi.ModTime(), fi.ModTime()))
		check(t, volume.FromImageOptions{Image: "img", KeyID: f.key.ID}, volume.ErrImageChanged, "its content changed")
	})
	t.Run("replaced", func(t *testing.T) {
		// The same bytes in another file put in its place.
		raw, err := os.ReadFile(imgPath)
		require.NoError(t, err)
		tmp := imgPath + ".new"
		require.NoError(t, os.WriteFile(tmp, raw, 0o644))
		require.NoError(t, os.Rename(tmp, imgPath))
		check(t, volume.FromImageOptions{Image: "img", KeyID: f.key.ID}, volume.ErrImageChanged, "another file than the one imported")
	})
}

// TestImageRotation: a rotation rewraps the image's WDEK without touching its file, and a
// volume made from it afterwards reads back its content; an image left on an old version
// (no rotation hook) is rewrapped lazily when a volume is made from it.
func TestImageRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	content := guestContent(1<<20, 13)
	pass := randomPass(t)
	imgPath := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, imgPath, content, pass, 4096)
	e, err := f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "img", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	sum := sha256File(t, imgPath)
	info, err := os.Stat(imgPath)
	require.NoError(t, err)

	k := f.rotate(t)
	rep := f.lastReport()
	assert.Equal(t, 1, rep.Images)
	assert.Equal(t, 1, rep.ImagesRewrapped)
	got, err := f.reg.Image("img")
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, got.KeyVersion)
	assert.Equal(t, sum, sha256File(t, imgPath), "the image file is never written")
	after, err := os.Stat(imgPath)
	require.NoError(t, err)
	assert.Equal(t, info.ModTime(), after.ModTime())

	vol := filepath.Join(f.dir, "vol.img")
	_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "img", KeyID: f.key.ID})
	require.NoError(t, err)
	assert.True(t, bytes.Equal(content, f.volumeContent(t, vol)))

	// Lazy: rotated while no Manager listened, rewrapped when used.
	f.mgr.Close()
	k3 := f.rotate(t)
	_, err = f.mgr.CreateFromImage(f.ctx, filepath.Join(f.dir, "vol2.img"), volume.FromImageOptions{Image: "img", KeyID: f.key.ID})
	require.NoError(t, err)
	got, err = f.reg.Image("img")
	require.NoError(t, err)
	assert.Equal(t, k3.KeyVersion.ID, got.KeyVersion)
	assert.Equal(t, k3.KeyVersion.ID, f.registrationVersion(t, e.CRN))
	assert.Equal(t, sum, sha256File(t, imgPath))
}

// TestExportImage: a volume exports to an encrypted qcow2 image whose guest content is the
// volume's (never-written ranges as zeros), with only allocated clusters; an existing output
// is never overwritten; an export without a passphrase lands in the catalog, and a volume
// made from that image reads back the same content.
func TestExportImage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 2 << 20
	info := f.create(t, "vol.img", size)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	want := make([]byte, size)
	for _, r := range [][2]int{{0, 64 << 10}, {300 << 10, 8192}, {size - 4096, 4096}} {
		copy(want[r[0]:r[0]+r[1]], pattern(r[1], uint64(r[0])))
		_, err := v.WriteAt(want[r[0]:r[0]+r[1]], int64(r[0]))
		require.NoError(t, err)
	}
	require.NoError(t, v.Close())

	pass := []byte("export passphrase")
	out := filepath.Join(f.dir, "out.qcow2")
	var last [2]int64
	res, err := f.mgr.ExportImage(f.ctx, info.Path, out, volume.ExportOptions{Passphrase: pass, ClusterSize: 4096, IterTime: 20 * time.Millisecond,
		Progress: func(done, total int64) { last = [2]int64{done, total} }})
	require.NoError(t, err)
	assert.Equal(t, out, res.Path)
	assert.Equal(t, int64(size), res.Size)
	assert.Nil(t, res.Image)
	assert.Equal(t, last[0], last[1])
	assert.LessOrEqual(t, res.DataClusters, int64(16+2+1+1), "only the written clusters")
	st, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, st.Size(), res.FileSize)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.True(t, bytes.Equal(want, readQcow2(t, out, pass)))
	entries, err := os.ReadDir(f.dir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), ".tmp", "no temporary file left")
	}

	before := sha256File(t, out)
	_, err = f.mgr.ExportImage(f.ctx, info.Path, out, volume.ExportOptions{Passphrase: pass})
	assert.ErrorIs(t, err, os.ErrExist)
	assert.Equal(t, before, sha256File(t, out), "an existing output is never overwritten")

	// Into the catalog, under another key; then a volume from it.
	k2, err := f.svc.CreateRootKey(f.ctx, "k2")
	require.NoError(t, err)
	out2 := filepath.Join(f.dir, "cat.qcow2")
	res, err = f.mgr.ExportImage(f.ctx, info.Path, out2, volume.ExportOptions{Name: "exported", KeyID: k2.ID})
	require.NoError(t, err)
	require.NotNil(t, res.Image)
	assert.Equal(t, "exported", res.Image.Name)
	assert.Equal(t, k2.ID, res.Image.KeyID)
	assert.Equal(t, sha256File(t, out2), res.Image.SHA256)
	regs, _, err := f.ks.Registrations(f.ctx, k2.ID)
	require.NoError(t, err)
	require.Len(t, regs, 1)
	assert.Equal(t, res.Image.CRN, regs[0].CRN)
	vol2 := filepath.Join(f.dir, "vol2.img")
	_, err = f.mgr.CreateFromImage(f.ctx, vol2, volume.FromImageOptions{Image: "exported", KeyID: f.key.ID})
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, f.volumeContent(t, vol2)))

	// The default key is the volume's.
	res, err = f.mgr.ExportImage(f.ctx, info.Path, filepath.Join(f.dir, "def.qcow2"), volume.ExportOptions{Name: "default-key"})
	require.NoError(t, err)
	assert.Equal(t, f.key.ID, res.Image.KeyID)

	// A taken name is refused before anything is written.
	_, err = f.mgr.ExportImage(f.ctx, info.Path, filepath.Join(f.dir, "dup.qcow2"), volume.ExportOptions{Name: "exported"})
	assert.ErrorIs(t, err, volume.ErrImageExists)
	assert.NoFileExists(t, filepath.Join(f.dir, "dup.qcow2"))
	_, err = f.mgr.ExportImage(f.ctx, info.Path, filepath.Join(f.dir, "x.qcow2"), volume.ExportOptions{Passphrase: pass, Name: "x"})
	assert.Error(t, err, "a name with a given passphrase")
}

// TestImageRewrapLosesRaceToLazyRewrap: while a rotation's rewrap of an image's WDEK waits on
// the key service, a volume made from the image stores the rewrapped WDEK the unwrap handed
// back (lazy rewrap). The rotation's catalog commit then finds another WDEK than the one it
// rewrapped and keeps it (compare and swap); the image counts as already current.
func TestImageRewrapLosesRaceToLazyRewrap(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	content := guestContent(1<<20, 17)
	pass := randomPass(t)
	imgPath := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, imgPath, content, pass, 65536)
	e, err := f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "img", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	f.mgr.Close()
	k := f.rotate(t)

	slow := newBlockingKMS(f.ks)
	mgr := volume.NewManager(slow, f.reg, volume.Options{})
	mgr.Close()
	done := make(chan *volume.Report, 1)
	go func() { done <- mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{e.CRN}) }()
	<-slow.entered

	_, err = f.mgr.CreateFromImage(f.ctx, filepath.Join(f.dir, "vol.img"), volume.FromImageOptions{Image: "img", KeyID: f.key.ID})
	require.NoError(t, err)
	lazy, err := f.reg.Image("img")
	require.NoError(t, err)
	require.Equal(t, k.KeyVersion.ID, lazy.KeyVersion, "the lazy rewrap stored its WDEK")

	close(slow.release)
	rep := <-done
	require.NoError(t, rep.Err())
	assert.Equal(t, 1, rep.Images)
	assert.Equal(t, 1, rep.ImagesAlreadyCurrent)
	assert.Zero(t, rep.ImagesRewrapped)
	got, err := f.reg.Image("img")
	require.NoError(t, err)
	assert.Equal(t, lazy.WDEK, got.WDEK, "the lazy rewrap's WDEK is kept")
	assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, e.CRN))
}

// TestImportStoresRewrappedWDEK: a WDEK made before a rotation imports, and the catalog keeps
// it rewrapped to the key's latest version (the key service hands it back with the unwrap).
func TestImportStoresRewrappedWDEK(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pass := randomPass(t)
	imgPath := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, imgPath, guestContent(1<<20, 19), pass, 65536)
	w, err := f.ks.Wrap(f.ctx, f.key.ID, pass, nil)
	require.NoError(t, err)
	k := f.rotate(t)
	e, err := f.mgr.ImportImage(f.ctx, imgPath, volume.ImportOptions{Name: "img", KeyID: f.key.ID, WDEK: w.Ciphertext})
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, e.KeyVersion)
	assert.NotEqual(t, w.Ciphertext, e.WDEK)
	assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, e.CRN))
	u, err := f.ks.Unwrap(f.ctx, f.key.ID, e.WDEK, nil)
	require.NoError(t, err)
	assert.Equal(t, pass, u.Plaintext)
}
