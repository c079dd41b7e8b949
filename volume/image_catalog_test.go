package volume_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"crkvol/internal/ident"
	"crkvol/volume"
)

// addCatalogImage puts an image called name into f's catalog as ImportImage leaves one: a
// random passphrase wrapped (no AAD) by f's key, registered with the key under the image's
// CRN. The image file is a small file of random bytes (the catalog and rotation never read
// it). It returns the entry and the passphrase.
func (f *fixture) addCatalogImage(t testing.TB, name string) (volume.ImageEntry, []byte) {
	t.Helper()
	pass := make([]byte, 32)
	_, err := rand.Read(pass)
	require.NoError(t, err)
	w, err := f.ks.Wrap(f.ctx, f.key.ID, pass, nil)
	require.NoError(t, err)
	uuid, err := ident.NewUUID(rand.Reader)
	require.NoError(t, err)
	path := filepath.Join(f.dir, name+".qcow2")
	require.NoError(t, os.WriteFile(path, pattern(4096, uint64(len(name))), 0o644))
	sum := sha256.Sum256(pattern(4096, uint64(len(name))))
	e := volume.ImageEntry{
		Name: name, CRN: ident.ImageCRN(uuid).String(), UUID: uuid, Path: path,
		KeyID: f.key.ID, KeyVersion: w.VersionID, WDEK: w.Ciphertext, Size: 1 << 20,
		FileSize: 4096, SHA256: hex.EncodeToString(sum[:]), ClusterSize: 65536, QcowVersion: 3,
		Cipher: "aes-xts-plain64, 512-bit key, sha256", Created: f.clock.Now().UTC(),
	}
	require.NoError(t, f.ks.Register(f.ctx, f.key.ID, e.CRN, w.VersionID, true))
	require.NoError(t, volume.AddImage(f.mgr, e))
	return e, pass
}

// registrationVersion returns the version of crn's registration with f's key ("" if none).
func (f *fixture) registrationVersion(t testing.TB, crn string) string {
	t.Helper()
	regs, _, err := f.ks.Registrations(f.ctx, f.key.ID)
	require.NoError(t, err)
	for _, r := range regs {
		if r.CRN == crn {
			return r.VersionID
		}
	}
	return ""
}

func TestCheckImageName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"ubuntu-24-04", true},
		{"x1", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"1abc", false},
		{"-abc", false},
		{"abc-", false},
		{"Abc", false},
		{"ab_c", false},
		{"ab.c", false},
		{"ab c", false},
		{"ab\nc", false},
		{"é", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := volume.CheckImageName(tc.name)
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, volume.ErrImageName)
			}
		})
	}
}

// TestImageCatalog: entries are stored by name with a CRN index, listed sorted, unique by
// name, refused with a bad name; a read-only registry reads them; DeleteImage deregisters and
// removes an entry, and finishes a deletion a crash interrupted after the deregistration.
func TestImageCatalog(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b, _ := f.addCatalogImage(t, "beta")
	a, _ := f.addCatalogImage(t, "alpha")

	list, err := f.reg.Images()
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, []string{"alpha", "beta"}, []string{list[0].Name, list[1].Name})
	assert.Equal(t, a, list[0])

	got, err := f.reg.Image("beta")
	require.NoError(t, err)
	assert.Equal(t, b, got)
	got, err = f.reg.ImageByCRN(a.CRN)
	require.NoError(t, err)
	assert.Equal(t, a, got)
	_, err = f.reg.Image("gamma")
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	_, err = f.reg.ImageByCRN(volume.CRN("0123abcd-89ab-4def-8123-456789abcdef"))
	assert.ErrorIs(t, err, volume.ErrImageNotFound)

	dup := a
	dup.CRN, dup.UUID = ident.ImageCRN("0123abcd-89ab-4def-8123-456789abcdef").String(), "0123abcd-89ab-4def-8123-456789abcdef"
	assert.ErrorIs(t, volume.AddImage(f.mgr, dup), volume.ErrImageExists, "a taken name")
	dup.Name = "alpha2"
	dup.CRN = a.CRN
	assert.ErrorIs(t, volume.AddImage(f.mgr, dup), volume.ErrImageExists, "a taken CRN")
	bad := b
	bad.Name = "Bad_Name"
	assert.ErrorIs(t, volume.AddImage(f.mgr, bad), volume.ErrImageName)
	bad = b
	bad.Name, bad.WDEK = "no-wdek", nil
	assert.Error(t, volume.AddImage(f.mgr, bad), "an entry without a WDEK")

	// The volumes of the registry are not images, nor the other way round.
	vol := f.create(t, "v.img", 1<<20)
	_, err = f.reg.ImageByCRN(vol.CRN)
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	_, err = f.reg.Get(a.CRN)
	assert.ErrorIs(t, err, volume.ErrNotRegistered)

	// Deleting: the registration goes, the entry goes, the file stays.
	require.Equal(t, a.KeyVersion, f.registrationVersion(t, a.CRN))
	require.NoError(t, f.mgr.DeleteImage(f.ctx, "alpha"))
	assert.Empty(t, f.registrationVersion(t, a.CRN))
	_, err = f.reg.Image("alpha")
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	_, err = f.reg.ImageByCRN(a.CRN)
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	assert.FileExists(t, a.Path)
	assert.ErrorIs(t, f.mgr.DeleteImage(f.ctx, "alpha"), volume.ErrImageNotFound)

	// A deletion interrupted after the deregistration completes.
	require.NoError(t, f.ks.DeleteRegistration(f.ctx, f.key.ID, b.CRN))
	require.NoError(t, f.mgr.DeleteImage(f.ctx, "beta"))
	list, err = f.reg.Images()
	require.NoError(t, err)
	assert.Empty(t, list)

	// A name is free again once deleted.
	c, _ := f.addCatalogImage(t, "alpha")
	assert.NotEqual(t, a.CRN, c.CRN)
}

// TestImageCatalogReadOnlyAndOld: a registry opened read-only lists the images; one made
// before images existed (no image buckets) reads as an empty catalog read-only, and gets
// the buckets when opened for writing.
func TestImageCatalogReadOnlyAndOld(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.addCatalogImage(t, "img")
	path := filepath.Join(f.dir, "volumes.db")
	require.NoError(t, f.reg.Close())
	ro, err := volume.OpenRegistryReadOnly(path)
	require.NoError(t, err)
	got, err := ro.Image("img")
	require.NoError(t, err)
	assert.Equal(t, e, got)
	require.NoError(t, ro.Close())

	old := filepath.Join(t.TempDir(), "old.db")
	db, err := bolt.Open(old, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("volumes")); return err }))
	require.NoError(t, db.Close())
	ro, err = volume.OpenRegistryReadOnly(old)
	require.NoError(t, err)
	list, err := ro.Images()
	require.NoError(t, err)
	assert.Empty(t, list)
	_, err = ro.ImageByCRN(e.CRN)
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	require.NoError(t, ro.Close())
	rw, err := volume.OpenRegistry(old)
	require.NoError(t, err)
	list, err = rw.Images()
	require.NoError(t, err)
	assert.Empty(t, list)
	require.NoError(t, rw.Close())

	missing, err := volume.OpenRegistryReadOnly(filepath.Join(t.TempDir(), "none.db"))
	require.NoError(t, err)
	list, err = missing.Images()
	require.NoError(t, err)
	assert.Empty(t, list)
	_, err = missing.Image("img")
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
}

// TestRotationRewrapsImages: one rotation rewraps N volumes and M images in one report,
// counted apart; every image's WDEK moves to the new version and still unwraps (no AAD) to
// its passphrase; the registrations follow; the image files are untouched.
func TestRotationRewrapsImages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const nVol, nImg = 2, 3
	for i := range nVol {
		f.create(t, "v"+string(rune('0'+i))+".img", 1<<20)
	}
	type img struct {
		e    volume.ImageEntry
		pass []byte
		sum  [32]byte
	}
	var imgs []img
	for i := range nImg {
		e, pass := f.addCatalogImage(t, "img-"+string(rune('a'+i)))
		imgs = append(imgs, img{e, pass, fileHash(t, e.Path, 0)})
	}
	k := f.rotate(t)
	rep := f.lastReport()
	require.NoError(t, rep.Err())
	assert.Equal(t, nVol, rep.Volumes)
	assert.Equal(t, nVol, rep.Rewrapped)
	assert.Equal(t, nImg, rep.Images)
	assert.Equal(t, nImg, rep.ImagesRewrapped)
	assert.Zero(t, rep.AlreadyCurrent+rep.ImagesAlreadyCurrent+rep.Elsewhere)
	for _, im := range imgs {
		got, err := f.reg.Image(im.e.Name)
		require.NoError(t, err)
		assert.Equal(t, k.KeyVersion.ID, got.KeyVersion)
		assert.NotEqual(t, im.e.WDEK, got.WDEK)
		assert.Equal(t, t0.Add(time.Hour), got.RewrappedAt)
		u, err := f.ks.Unwrap(f.ctx, f.key.ID, got.WDEK, nil)
		require.NoError(t, err)
		assert.Equal(t, im.pass, u.Plaintext)
		assert.Nil(t, u.Rewrapped)
		assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, im.e.CRN))
		assert.Equal(t, im.sum, fileHash(t, im.e.Path, 0), "the image file is never written")
		// The old WDEK still unwraps (an older version), and is handed back rewrapped.
		u, err = f.ks.Unwrap(f.ctx, f.key.ID, im.e.WDEK, nil)
		require.NoError(t, err)
		assert.Equal(t, im.pass, u.Plaintext)
		assert.NotNil(t, u.Rewrapped)
	}

	// A sync finds everything current, and counts it.
	rep, err := f.mgr.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	assert.Equal(t, nVol, rep.AlreadyCurrent)
	assert.Equal(t, nImg, rep.Images)
	assert.Equal(t, nImg, rep.ImagesAlreadyCurrent)
	assert.Zero(t, rep.Rewrapped+rep.ImagesRewrapped)
}

// TestSyncRewrapsImages: images left on an old version (the Manager was not listening when
// the key rotated) are rewrapped by a sync; an image whose WDEK the key service refuses
// fails alone, keeps its entry, and is counted as failed; the progress counts images.
func TestSyncRewrapsImages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.create(t, "v.img", 1<<20)
	good, pass := f.addCatalogImage(t, "good")
	bad, _ := f.addCatalogImage(t, "bad")
	// Another key's WDEK in the bad image's entry: the rewrap is refused.
	other, err := f.svc.CreateRootKey(f.ctx, "other")
	require.NoError(t, err)
	w, err := f.ks.Wrap(f.ctx, other.ID, pass, nil)
	require.NoError(t, err)
	require.NoError(t, f.mgr.DeleteImage(f.ctx, "bad"))
	bad.WDEK = w.Ciphertext
	require.NoError(t, f.ks.Register(f.ctx, f.key.ID, bad.CRN, bad.KeyVersion, true))
	require.NoError(t, volume.AddImage(f.mgr, bad))

	f.mgr.Close() // no rotation hook: the rotation leaves everything behind
	k := f.rotate(t)
	var mu sync.Mutex
	var seen []volume.RewrapProgress
	m := volume.NewManager(f.ks, f.reg, volume.Options{
		Now: f.clock.Now, Backoff: func(int) time.Duration { return time.Millisecond },
		Progress: func(p volume.RewrapProgress) { mu.Lock(); seen = append(seen, p); mu.Unlock() },
	})
	m.Close()
	rep, err := m.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Volumes)
	assert.Equal(t, 1, rep.Rewrapped)
	assert.Equal(t, 2, rep.Images)
	assert.Equal(t, 1, rep.ImagesRewrapped)
	require.Len(t, rep.Failed, 1)
	assert.ErrorIs(t, rep.Failed[bad.CRN], volume.ErrKeyRefused)
	assert.Zero(t, rep.Retries, "a refusal is not retried")
	assert.ErrorContains(t, rep.Err(), "1 of 3 volumes and images of key")

	got, err := f.reg.Image("good")
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, got.KeyVersion)
	assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, good.CRN))
	got, err = f.reg.Image("bad")
	require.NoError(t, err)
	assert.Equal(t, bad, got, "a failed image keeps its entry")

	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, seen)
	seen[0].Elapsed = 0
	assert.Equal(t, volume.RewrapProgress{KeyID: f.key.ID, Volumes: 1, Images: 2}, seen[0])
	last := seen[len(seen)-1]
	last.Elapsed = 0
	assert.Equal(t, volume.RewrapProgress{KeyID: f.key.ID, Volumes: 1, Images: 2, Done: 3, Rewrapped: 1, ImagesRewrapped: 1, Failed: 1}, last)
}

// TestImageRewrapElsewhere: a rotation rewraps the images of the catalog and counts an image
// CRN registered with the key by another host (not in this catalog) as elsewhere.
func TestImageRewrapElsewhere(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.addCatalogImage(t, "img")
	// A CRN registered with the key but in neither the registry nor the catalog is
	// another host's.
	require.NoError(t, f.ks.Register(f.ctx, f.key.ID, ident.ImageCRN("0123abcd-89ab-4def-8123-456789abcdef").String(), e.KeyVersion, true))
	f.rotate(t)
	rep := f.lastReport()
	assert.Equal(t, 1, rep.Images)
	assert.Equal(t, 1, rep.ImagesRewrapped)
	assert.Equal(t, 1, rep.Elsewhere)
	assert.Zero(t, rep.Volumes)
	require.NoError(t, rep.Err())
}

// TestDeleteStrayImageRegistration: a registration of an image CRN with no catalog entry
// (what a crash between the two steps of an import or a delete leaves) keeps the key from
// being deleted until DeleteImageRegistration removes it; DeleteImage takes a CRN too.
func TestDeleteStrayImageRegistration(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	crn := ident.ImageCRN("0b8e6c4e-5c1a-4f0e-9c77-3b1d2a6f0e11").String()
	require.NoError(t, f.ks.Register(f.ctx, f.key.ID, crn, "", true))

	err := f.mgr.DeleteImage(f.ctx, crn)
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	assert.ErrorContains(t, err, "crkvol image delete "+crn+" --key KEY")
	assert.ErrorContains(t, f.mgr.DeleteImageRegistration(f.ctx, f.key.ID, volume.CRN("x")), "not an image CRN")

	require.NoError(t, f.mgr.DeleteImageRegistration(f.ctx, f.key.ID, crn))
	regs, _, err := f.ks.Registrations(f.ctx, f.key.ID)
	require.NoError(t, err)
	for _, r := range regs {
		assert.NotEqual(t, crn, r.CRN)
	}
	// Again: already gone is not an error.
	require.NoError(t, f.mgr.DeleteImageRegistration(f.ctx, f.key.ID, crn))
}
