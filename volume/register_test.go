package volume_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// TestReregister: an image takes over its volume's registration only when the registered
// path no longer holds the registered file; then a rotation reaches it at its new place.
func TestReregister(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// prepare moves, copies or replaces images; it returns the image to register.
		prepare func(t *testing.T, f *fixture, info *volume.Info) string
		force   bool
		wantErr error
	}{
		{"moved", func(t *testing.T, f *fixture, info *volume.Info) string {
			moved := filepath.Join(f.dir, "moved.img")
			require.NoError(t, os.Rename(info.Path, moved))
			return moved
		}, false, nil},
		{"restored over the registered path", func(t *testing.T, f *fixture, info *volume.Info) string {
			tmp := filepath.Join(f.dir, "tmp.img")
			copyFile(t, info.Path, tmp)
			require.NoError(t, os.Rename(tmp, info.Path))
			return info.Path
		}, false, nil},
		{"registered path holds another volume", func(t *testing.T, f *fixture, info *volume.Info) string {
			moved := filepath.Join(f.dir, "moved.img")
			require.NoError(t, os.Rename(info.Path, moved))
			f.create(t, "vol.img", 1<<20)
			return moved
		}, false, nil},
		{"registered path holds a non-image", func(t *testing.T, f *fixture, info *volume.Info) string {
			moved := filepath.Join(f.dir, "moved.img")
			require.NoError(t, os.Rename(info.Path, moved))
			require.NoError(t, os.WriteFile(info.Path, []byte("not an image"), 0o600))
			return moved
		}, false, nil},
		{"copy while the original is in place", func(t *testing.T, f *fixture, info *volume.Info) string {
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)
			return backup
		}, false, volume.ErrStillRegistered},
		{"copy forced", func(t *testing.T, f *fixture, info *volume.Info) string {
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)
			return backup
		}, true, nil},
		{"hard link", func(t *testing.T, f *fixture, info *volume.Info) string {
			link := filepath.Join(f.dir, "link.img")
			require.NoError(t, os.Link(info.Path, link))
			return link
		}, false, volume.ErrStillRegistered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			img := tc.prepare(t, f, info)

			res, err := f.mgr.Reregister(f.ctx, img, volume.RegisterOptions{Force: tc.force})
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				assert.Contains(t, err.Error(), info.Path, "names the registered path")
				e, err := f.reg.Get(info.CRN)
				require.NoError(t, err)
				assert.Equal(t, info.Path, e.Path, "registration unchanged")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, info.Path, res.Previous.Path)
			assert.Equal(t, tc.force, res.Forced)
			e, err := f.reg.Get(info.CRN)
			require.NoError(t, err)
			assert.Equal(t, img, e.Path)

			k := f.rotate(t)
			rep := f.lastReport()
			require.NoError(t, rep.Err())
			assert.Contains(t, rep.VolumeLatency, info.CRN, "the rotation reaches the image")
			assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, img).KeyVersion)
			openAndClose(t, f, f.mgr, img)
		})
	}
}

// TestReregisterUnknownVolume: an image whose volume the registry does not know cannot be
// re-registered (create or adopt register new volumes).
func TestReregisterUnknownVolume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	require.NoError(t, f.reg.Delete(info.CRN))
	_, err := f.mgr.Reregister(f.ctx, info.Path, volume.RegisterOptions{})
	require.ErrorIs(t, err, volume.ErrNotRegistered)
}
