package volume_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/keyslot"
	"crkvol/volume"
)

// copyFile copies src to a new file dst byte for byte (a backup, or a careless cp).
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

// failingDevice refuses every write: a rewrap through it fails, as on an unwritable image.
type failingDevice struct{ keyslot.Device }

func (failingDevice) WriteAt([]byte, int64) (int, error) {
	return 0, errors.New("device refuses writes")
}

// TestDeleteCopyKeepsOriginal: deleting a byte copy of a registered volume is refused with
// ErrNotRegisteredImage naming the registered path; the original stays registered, its key
// cannot be deleted, and it still opens.
func TestDeleteCopyKeepsOriginal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts volume.DeleteOptions
	}{
		{"deregister only", volume.DeleteOptions{}},
		{"erase and remove", volume.DeleteOptions{CryptoErase: true, RemoveImage: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)

			err := f.mgr.Delete(f.ctx, backup, tc.opts)
			require.ErrorIs(t, err, volume.ErrNotRegisteredImage)
			assert.Contains(t, err.Error(), info.Path, "names the registered image")
			assert.FileExists(t, backup)

			e, err := f.reg.Get(info.CRN)
			require.NoError(t, err)
			assert.Equal(t, info.Path, e.Path)
			assert.Equal(t, info.KeyVersion, registeredVersion(t, f, info.CRN))
			_, err = f.svc.DeleteKey(f.ctx, f.key.ID, crk.DeleteOptions{})
			assert.Error(t, err, "the key still protects the original")
			openAndClose(t, f, f.mgr, info.Path)
		})
	}
}

// TestReadingCopyDoesNotMoveRegistration: while the original failed to rewrap (its writes
// fail), opening a copy whose token is on the old version does no lazy rewrap: the
// registration stays on the version the original needs, so pruning cannot destroy it. The
// copy opens read-only and says it is a copy of the registered path; a read-write open is
// refused.
func TestReadingCopyDoesNotMoveRegistration(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	backup := filepath.Join(f.dir, "backup.img")
	copyFile(t, info.Path, backup)
	f.mgr.Close()
	broken := volume.NewManager(f.ks, f.reg, volume.Options{
		Attempts: 1,
		RewrapDevice: func(_ context.Context, _ string, dev keyslot.Device) keyslot.Device {
			return failingDevice{dev}
		},
	})
	defer broken.Close()
	k := f.rotate(t)
	require.Len(t, f.reports, 0)
	rep := broken.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN})
	require.Len(t, rep.Failed, 1, "the original failed to rewrap")
	require.Equal(t, info.KeyVersion, registeredVersion(t, f, info.CRN))

	_, err := f.mgr.OpenWith(f.ctx, backup, volume.OpenOptions{})
	require.ErrorIs(t, err, volume.ErrNotRegisteredImage, "no writes to a copy")
	assert.Contains(t, err.Error(), info.Path)

	v, err := f.mgr.OpenWith(f.ctx, backup, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	reg, isCopy := v.CopyOf()
	assert.True(t, isCopy)
	assert.Equal(t, info.Path, reg)
	require.NoError(t, v.Close())

	assert.Equal(t, info.KeyVersion, registeredVersion(t, f, info.CRN), "registration not moved by the copy")
	assert.Equal(t, info.KeyVersion, mustDescribe(t, backup).KeyVersion, "no lazy rewrap of a copy")
	_, err = f.svc.Prune(f.ctx, f.key.ID)
	require.NoError(t, err)
	openAndClose(t, f, f.mgr, info.Path) // the original still opens, and catches up
	assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)

	v, err = f.mgr.OpenWith(f.ctx, info.Path, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	_, isCopy = v.CopyOf()
	assert.False(t, isCopy, "the registered image is not a copy")
	require.NoError(t, v.Close())
}

// TestRegistryRecordsIdentity: a registration records the resolved path and the file
// identity of its image.
func TestRegistryRecordsIdentity(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	real := filepath.Join(f.dir, "real")
	require.NoError(t, os.Mkdir(real, 0o700))
	link := filepath.Join(f.dir, "link")
	require.NoError(t, os.Symlink(real, link))
	info, err := f.mgr.Create(f.ctx, filepath.Join(link, "v.img"), volume.CreateOptions{KeyID: f.key.ID, Size: 1 << 20, KeyslotsSize: 512 << 10})
	require.NoError(t, err)
	e, err := f.reg.Get(info.CRN)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(real, "v.img"), e.Path, "symbolic links resolved")
	assert.NotZero(t, e.Inode)
	openAndClose(t, f, f.mgr, info.Path) // through the link: the same image
}

// TestOldEntriesWithoutIdentity: entries written before the identity was recorded match by
// path; a registration change (a lazy rewrap, a rotation) on the image fills the identity in,
// and a copy of such an image is still refused.
func TestOldEntriesWithoutIdentity(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(t *testing.T, f *fixture, info *volume.Info)
	}{
		{"lazy rewrap", func(t *testing.T, f *fixture, info *volume.Info) {
			openAndClose(t, f, f.mgr, info.Path)
		}},
		{"rotation", func(t *testing.T, f *fixture, info *volume.Info) {
			k, err := f.svc.GetKey(f.ctx, f.key.ID)
			require.NoError(t, err)
			rep := f.mgr.Rewrap(f.ctx, f.key.ID, k.KeyVersion.ID, []string{info.CRN})
			require.NoError(t, rep.Err())
			require.Equal(t, 1, rep.Rewrapped)
		}},
		{"manual rewrap", func(t *testing.T, f *fixture, info *volume.Info) {
			_, err := f.mgr.RewrapVolume(f.ctx, info.Path)
			require.NoError(t, err)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			e, err := f.reg.Get(info.CRN)
			require.NoError(t, err)
			e.Device, e.Inode = 0, 0
			require.NoError(t, f.reg.Put(e))
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)
			require.ErrorIs(t, f.mgr.Delete(f.ctx, backup, volume.DeleteOptions{}), volume.ErrNotRegisteredImage)

			f.mgr.Close() // no rewrap on rotation: the change below does it
			k := f.rotate(t)
			mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
			defer mgr.Close()
			f.mgr = mgr
			tc.change(t, f, info)
			assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
			e, err = f.reg.Get(info.CRN)
			require.NoError(t, err)
			assert.NotZero(t, e.Inode, "identity filled in")
			assert.Equal(t, info.Path, e.Path)
		})
	}
}

// TestRotationSkipsReplacedFile: when another file is put at the registered path (a copy
// restored over the image, say), a rotation does not write to it: the Report names the
// reason, the registration stays on its version.
func TestRotationSkipsReplacedFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	tmp := filepath.Join(f.dir, "tmp.img")
	copyFile(t, info.Path, tmp)
	require.NoError(t, os.Rename(tmp, info.Path))
	before := readToken(t, info.Path)
	f.rotate(t)
	rep := f.lastReport()
	require.Len(t, rep.Failed, 1)
	err := rep.Failed[info.CRN]
	require.ErrorIs(t, err, volume.ErrNotRegisteredImage)
	assert.Contains(t, err.Error(), "not the registered file")
	assert.Zero(t, rep.Retries, "not retried")
	assert.Equal(t, before, readToken(t, info.Path))
	assert.Equal(t, info.KeyVersion, registeredVersion(t, f, info.CRN))
}

// TestAdoptRefusesCopyOfRegisteredVolume: a copy whose crkvol-crk token was removed cannot be
// adopted over the registration of the volume it copies.
func TestAdoptRefusesCopyOfRegisteredVolume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	pass := unwrapPassphrase(t, f, info.Path)
	backup := filepath.Join(f.dir, "backup.img")
	copyFile(t, info.Path, backup)
	fh, err := os.OpenFile(backup, os.O_RDWR, 0)
	require.NoError(t, err)
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	require.NoError(t, img.RemoveToken(0))
	require.NoError(t, fh.Close())

	_, err = f.mgr.Adopt(f.ctx, backup, pass, f.key.ID, volume.AdoptOptions{})
	require.ErrorIs(t, err, volume.ErrNotRegisteredImage)
	assert.Contains(t, err.Error(), info.Path)
	e, err := f.reg.Get(info.CRN)
	require.NoError(t, err)
	assert.Equal(t, info.Path, e.Path)
	assert.Equal(t, 1, keyslotCount(t, backup), "no keyslot added")
}
