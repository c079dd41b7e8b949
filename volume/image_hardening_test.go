package volume_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/volume"
)

// importTestImage writes a 1 MiB encrypted qcow2 image called name into f.dir and imports it
// with its passphrase; it returns the entry and the guest content.
func (f *fixture) importTestImage(t testing.TB, name string) (*volume.ImageEntry, []byte) {
	t.Helper()
	content := guestContent(1<<20, 11)
	pass := randomPass(t)
	p := filepath.Join(f.dir, name+".qcow2")
	writeQcow2(t, p, content, pass, 65536)
	e, err := f.mgr.ImportImage(f.ctx, p, volume.ImportOptions{Name: name, KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	return e, content
}

// TestImageFileChecks: the catalog records the file's change time and the keyslot that
// opened; VerifyImage hashes the file; CreateFromImage accepts a file only touched (same
// SHA-256), refuses one changed in place with its modification time set back, and one
// changed while the volume was being made from it (the volume is deleted).
func TestImageFileChecks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, content := f.importTestImage(t, "img")
	fi, err := os.Stat(e.Path)
	require.NoError(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	assert.Equal(t, time.Unix(st.Ctim.Sec, st.Ctim.Nsec).UTC(), e.CTime)
	assert.Equal(t, 0, e.Keyslot)
	require.NoError(t, f.mgr.VerifyImage(f.ctx, "img"))
	assert.ErrorIs(t, f.mgr.VerifyImage(f.ctx, "nope"), volume.ErrImageNotFound)

	// Touched only: hashed, and accepted.
	later := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(e.Path, later, later))
	vol := filepath.Join(f.dir, "touched.img")
	_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "img", KeyID: f.key.ID})
	require.NoError(t, err)
	assert.True(t, bytes.Equal(content, f.volumeContent(t, vol)))

	// Changed while the volume is made from it: refused, and the volume deleted.
	vol = filepath.Join(f.dir, "during.img")
	wrote := false
	_, err = f.mgr.CreateFromImage(f.ctx, vol, volume.FromImageOptions{Image: "img", KeyID: f.key.ID,
		Progress: func(done, total int64) {
			if done > 0 && !wrote {
				wrote = true
				time.Sleep(10 * time.Millisecond) // past the change time's clock tick
				fh, err := os.OpenFile(e.Path, os.O_RDWR, 0)
				require.NoError(t, err)
				_, err = fh.WriteAt([]byte{0x42}, 0)
				require.NoError(t, err)
				require.NoError(t, fh.Close())
			}
		}})
	assert.ErrorIs(t, err, volume.ErrImageChanged)
	assert.ErrorContains(t, err, "changed while the volume was made from it")
	assert.NoFileExists(t, vol)

	// Changed in place (the byte above: the first of the magic), the times set back.
	require.NoError(t, os.Chtimes(e.Path, fi.ModTime(), fi.ModTime()))
	err = f.mgr.VerifyImage(f.ctx, "img")
	assert.ErrorIs(t, err, volume.ErrImageChanged)
	assert.ErrorContains(t, err, "its content changed")
	_, err = f.mgr.CreateFromImage(f.ctx, filepath.Join(f.dir, "after.img"), volume.FromImageOptions{Image: "img", KeyID: f.key.ID})
	assert.ErrorIs(t, err, volume.ErrImageChanged)
}

// TestImageFIFO: a FIFO at an image's path is refused at once, never opened (opening one
// blocks until a writer comes, whatever the context says).
func TestImageFIFO(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.importTestImage(t, "img")
	fifo := filepath.Join(f.dir, "fifo.qcow2")
	require.NoError(t, syscall.Mkfifo(fifo, 0o644))
	done := make(chan error, 2)
	go func() {
		_, err := f.mgr.ImportImage(f.ctx, fifo, volume.ImportOptions{Name: "fifo", KeyID: f.key.ID, Passphrase: []byte("x")})
		done <- err
	}()
	// The imported image's file replaced by a FIFO.
	require.NoError(t, os.Rename(e.Path, e.Path+".moved"))
	require.NoError(t, syscall.Mkfifo(e.Path, 0o644))
	go func() {
		_, err := f.mgr.CreateFromImage(f.ctx, filepath.Join(f.dir, "v.img"), volume.FromImageOptions{Image: "img", KeyID: f.key.ID})
		done <- err
	}()
	for range 2 {
		select {
		case err := <-done:
			assert.ErrorContains(t, err, "is not a regular file (a FIFO)")
		case <-time.After(5 * time.Second):
			// Unblock what hangs, so the test ends.
			for _, p := range []string{fifo, e.Path} {
				if fh, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					fh.Close()
				}
			}
			t.Fatal("opening a FIFO blocked")
		}
	}
}

// TestImageRegistrationRepair: DeleteImage removes the catalog entry before the
// registration; an image whose registration is gone (deleted at the key service) is
// registered again by a sync, and by a rotation, and rewrapped, so the key cannot be deleted
// under it.
func TestImageRegistrationRepair(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.addCatalogImage(t, "img")

	// Sync.
	require.NoError(t, f.ks.DeleteRegistration(f.ctx, f.key.ID, e.CRN))
	f.mgr.Close() // no rotation hook
	m := volume.NewManager(f.ks, f.reg, volume.Options{Now: f.clock.Now, Backoff: func(int) time.Duration { return time.Millisecond }})
	m.Close() // its Sync works; it does not listen to rotations
	k := f.rotate(t)
	rep, err := m.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	assert.Equal(t, 1, rep.ImagesReregistered)
	assert.Equal(t, 1, rep.Images)
	assert.Equal(t, 1, rep.ImagesRewrapped)
	assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, e.CRN))
	got, err := f.reg.Image("img")
	require.NoError(t, err)
	assert.Equal(t, k.KeyVersion.ID, got.KeyVersion)
	_, err = f.svc.DeleteKey(f.ctx, f.key.ID, crk.DeleteOptions{Force: true})
	assert.Error(t, err, "the image's registration is back: the key cannot be deleted")
	// Once repaired, a sync finds it current.
	rep, err = m.Sync(f.ctx, f.key.ID)
	require.NoError(t, err)
	assert.Zero(t, rep.ImagesReregistered)
	assert.Equal(t, 1, rep.ImagesAlreadyCurrent)

	// Rotation: the notice does not name the image; the pass registers it again.
	var reports []*volume.Report
	m2 := volume.NewManager(f.ks, f.reg, volume.Options{Now: f.clock.Now, Backoff: func(int) time.Duration { return time.Millisecond },
		OnReport: func(r *volume.Report) { reports = append(reports, r) }})
	defer m2.Close()
	require.NoError(t, f.ks.DeleteRegistration(f.ctx, f.key.ID, e.CRN))
	k = f.rotate(t)
	require.Len(t, reports, 1)
	assert.Equal(t, 1, reports[0].ImagesReregistered)
	assert.Equal(t, 1, reports[0].ImagesRewrapped)
	assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, e.CRN))

	// DeleteImage: the entry goes, then the registration; a registration already gone is
	// not an error.
	require.NoError(t, f.ks.DeleteRegistration(f.ctx, f.key.ID, e.CRN))
	require.NoError(t, m2.DeleteImage(f.ctx, "img"))
	_, err = f.reg.Image("img")
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
}

// rotatingKS rotates the key once, just before the first registration: an import racing a
// rotation.
type rotatingKS struct {
	volume.KeyService
	rotate func()
	done   bool
}

func (r *rotatingKS) Register(ctx context.Context, keyID, crn, versionID string, prevent bool) error {
	if !r.done {
		r.done = true
		r.rotate()
	}
	return r.KeyService.Register(ctx, keyID, crn, versionID, prevent)
}

// TestImportRacingRotation: a rotation between the wrap and the registration of an import
// leaves the image on the old version; the import brings it to the latest at once.
func TestImportRacingRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var k *crk.Key
	ks := &rotatingKS{KeyService: f.ks, rotate: func() { k = f.rotate(t) }}
	m := volume.NewManager(ks, f.reg, volume.Options{Now: f.clock.Now, Backoff: func(int) time.Duration { return time.Millisecond }})
	defer m.Close()
	content := guestContent(1<<20, 3)
	pass := randomPass(t)
	p := filepath.Join(f.dir, "img.qcow2")
	writeQcow2(t, p, content, pass, 65536)
	e, err := m.ImportImage(f.ctx, p, volume.ImportOptions{Name: "img", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	require.NotNil(t, k)
	assert.Equal(t, k.KeyVersion.ID, e.KeyVersion)
	got, err := f.reg.Image("img")
	require.NoError(t, err)
	assert.Equal(t, *e, got)
	assert.Equal(t, k.KeyVersion.ID, f.registrationVersion(t, e.CRN))
	u, err := f.ks.Unwrap(f.ctx, f.key.ID, got.WDEK, nil)
	require.NoError(t, err)
	assert.Equal(t, pass, u.Plaintext)
}

// TestExportReplaceRefusals: Replace with a catalog name is refused before anything is
// written (a failed import would lose the replaced file), and Replace never replaces a
// catalog image's file, by its path or another name of it.
func TestExportReplaceRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.importTestImage(t, "img")
	info := f.create(t, "vol.img", 1<<20)
	pass := []byte("a passphrase of some length")

	spare := filepath.Join(f.dir, "spare.qcow2")
	require.NoError(t, os.WriteFile(spare, []byte("keep me"), 0o600))
	_, err := f.mgr.ExportImage(f.ctx, info.Path, spare, volume.ExportOptions{Name: "new", KeyID: f.key.ID, Replace: true})
	assert.ErrorContains(t, err, "refused with a catalog name")
	got, rerr := os.ReadFile(spare)
	require.NoError(t, rerr)
	assert.Equal(t, "keep me", string(got))

	_, err = f.mgr.ExportImage(f.ctx, info.Path, e.Path, volume.ExportOptions{Passphrase: pass, Iterations: 1000, Replace: true})
	assert.ErrorIs(t, err, volume.ErrCatalogFile)
	alias := filepath.Join(f.dir, "alias.qcow2")
	require.NoError(t, os.Link(e.Path, alias))
	_, err = f.mgr.ExportImage(f.ctx, info.Path, alias, volume.ExportOptions{Passphrase: pass, Iterations: 1000, Replace: true})
	assert.ErrorIs(t, err, volume.ErrCatalogFile)
	require.NoError(t, f.mgr.VerifyImage(f.ctx, "img"))
}

// TestDeleteImageByCRN: DeleteImage takes a CRN as well as a name; DeleteImageRegistration
// refuses an image still in the catalog.
func TestDeleteImageByCRN(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.importTestImage(t, "img")
	assert.ErrorIs(t, f.mgr.DeleteImageRegistration(f.ctx, f.key.ID, e.CRN), volume.ErrImageInCatalog)
	require.NoError(t, f.mgr.DeleteImage(f.ctx, e.CRN))
	_, err := f.reg.Image("img")
	assert.ErrorIs(t, err, volume.ErrImageNotFound)
	regs, _, err := f.ks.Registrations(f.ctx, f.key.ID)
	require.NoError(t, err)
	for _, r := range regs {
		assert.NotEqual(t, e.CRN, r.CRN)
	}
}
