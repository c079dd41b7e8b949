// Tests that the manager keeps data, images and the registry consistent: under racing I/O,
// when an image is replaced or removed behind its back, and when an enrolment fails halfway.

package volume_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/keyslot"
	"crkvol/volume"
)

// TestReadsNeverTorn: a reader racing a writer that rewrites one sector whole sees one
// version or the other, never a mix.
func TestReadsNeverTorn(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "torn.img", 1<<20)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	defer v.Close()
	a, b := bytes.Repeat([]byte{'A'}, 4096), bytes.Repeat([]byte{'B'}, 4096)
	_, err = v.WriteAt(a, 8192)
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := a
			if i%2 == 1 {
				p = b
			}
			if _, err := v.WriteAt(p, 8192); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	got := make([]byte, 4096)
	for range 20000 {
		_, err := v.ReadAt(got, 8192)
		require.NoError(t, err)
		if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
			close(stop)
			wg.Wait()
			t.Fatal("torn read: a sector mixing two writes")
		}
	}
	close(stop)
	wg.Wait()
}

// TestRewrapChecksTheImage: an image replaced at a registered path is not mistaken for the
// registered volume; the replaced volume's rewrap fails, the new one's succeeds.
func TestRewrapChecksTheImage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	path := filepath.Join(f.dir, "disk.img")
	old, err := f.mgr.Create(f.ctx, path, volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20, KeyslotsSize: 512 << 10})
	require.NoError(t, err)
	require.NoError(t, os.Remove(path)) // lost without a delete
	cur, err := f.mgr.Create(f.ctx, path, volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20, KeyslotsSize: 512 << 10})
	require.NoError(t, err)
	k := f.rotate(t)
	rep := f.lastReport()
	assert.Equal(t, 1, rep.Rewrapped)
	require.Len(t, rep.Failed, 1)
	assert.Contains(t, rep.Failed[old.CRN].Error(), "not the registered")
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, cur.Path).KeyVersion)
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{CRN: old.CRN})
	require.NoError(t, err)
	assert.Equal(t, old.KeyVersion, regs[0].KeyVersion.ID, "the lost volume's registration is not moved on")

	// Deleting the lost volume by path is impossible (the path now holds another), but the
	// current one deletes; a path whose image is gone deregisters from the registry.
	require.NoError(t, f.mgr.Delete(f.ctx, path, volume.DeleteOptions{RemoveImage: true}))
	_, err = f.reg.Get(cur.CRN)
	assert.ErrorIs(t, err, volume.ErrNotRegistered)
}

// TestDeleteLostImage: an image removed by hand can still be deregistered, so it does not
// pin its key.
func TestDeleteLostImage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "lost.img", 1<<20)
	require.NoError(t, os.Remove(info.Path))
	require.NoError(t, f.mgr.Delete(f.ctx, info.Path, volume.DeleteOptions{}))
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key.ID})
	require.NoError(t, err)
	assert.Empty(t, regs)
	_, err = f.svc.DeleteKey(f.ctx, f.key.ID, crk.DeleteOptions{})
	assert.NoError(t, err)
}

// failRegisterKMS refuses registrations.
type failRegisterKMS struct{ volume.KeyService }

func (failRegisterKMS) Register(context.Context, string, string, string, bool) error {
	return errors.New("registration service down")
}

// TestFailedEnrolmentRollsBack: a create or adopt whose registration fails leaves no image,
// no token and no extra keyslot behind, so a retry starts clean.
func TestFailedEnrolmentRollsBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	broken := volume.NewManager(failRegisterKMS{f.ks}, f.reg, volume.Options{})
	defer broken.Close()
	path := filepath.Join(f.dir, "c.img")
	_, err := broken.Create(f.ctx, path, volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20, KeyslotsSize: 512 << 10})
	require.ErrorContains(t, err, "registration service down")
	_, err = os.Stat(path)
	assert.True(t, os.IsNotExist(err))

	// Adopt: make an image with one passphrase keyslot and no token.
	dev, err := os.OpenFile(filepath.Join(f.dir, "legacy.img"), os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, dev.Truncate(2<<20))
	_, vk, err := keyslot.Format(dev, 2<<20, []byte("legacy"), keyslot.FormatOptions{KDF: keyslot.PBKDF2("sha256", 1000), KeyslotsSize: 768 << 10})
	require.NoError(t, err)
	clear(vk)
	dev.Close()
	for range 3 {
		_, err = broken.Adopt(f.ctx, filepath.Join(f.dir, "legacy.img"), []byte("legacy"), f.key.ID, volume.AdoptOptions{})
		require.ErrorContains(t, err, "registration service down")
	}
	_, err = broken.Adopt(f.ctx, filepath.Join(f.dir, "legacy.img"), []byte("legacy"), "00000000-0000-4000-8000-000000000000", volume.AdoptOptions{})
	require.ErrorIs(t, err, crk.ErrKeyNotFound)
	fh, err := os.Open(filepath.Join(f.dir, "legacy.img"))
	require.NoError(t, err)
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	assert.Len(t, img.Keyslots(), 1, "no leaked keyslots")
	assert.Empty(t, img.Tokens(), "no orphan token")
	fh.Close()
	info, err := f.mgr.Adopt(f.ctx, filepath.Join(f.dir, "legacy.img"), []byte("legacy"), f.key.ID, volume.AdoptOptions{})
	require.NoError(t, err, "a retry with a working service succeeds")
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	require.NoError(t, v.Close())
}

// TestDeleteThroughSymlink: deleting a volume through a symbolic link to its image removes
// the image itself (and the link), not only the link: an image left on disk, deregistered,
// would no longer keep its key from being deleted.
func TestDeleteThroughSymlink(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	link := filepath.Join(f.dir, "sym.img")
	require.NoError(t, os.Symlink(info.Path, link))
	require.NoError(t, f.mgr.Delete(f.ctx, link, volume.DeleteOptions{RemoveImage: true}))
	_, err := os.Lstat(info.Path)
	assert.ErrorIs(t, err, os.ErrNotExist, "the image is removed")
	_, err = os.Lstat(link)
	assert.ErrorIs(t, err, os.ErrNotExist, "the link is removed")
	regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{CRN: info.CRN})
	require.NoError(t, err)
	assert.Empty(t, regs)
}
