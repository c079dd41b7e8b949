package volume_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// TestReadOnlyImage: an image file that can be read but not written (0444, on a read-only
// mount) is described, checked, probed for use, identified and opened read-only, its data
// read back; a read-write open, a resize and a wipe fail with ErrReadOnlyImage naming the
// file, and write nothing.
func TestReadOnlyImage(t *testing.T) {
	f := newFixture(t)
	imgDir := filepath.Join(f.dir, "images")
	require.NoError(t, os.Mkdir(imgDir, 0o700))
	info := f.create(t, "images/vol.img", 1<<20)
	data := writePattern(t, f, info.Path, 64<<10, 5)
	require.NoError(t, os.Chmod(info.Path, 0o444))
	tooltest.ReadOnlyBind(t, imgDir, imgDir)

	d, err := volume.Describe(info.Path)
	require.NoError(t, err, "describe")
	assert.Equal(t, info.CRN, d.CRN)
	problems, err := f.mgr.Check(f.ctx, info.Path)
	require.NoError(t, err, "check")
	assert.Empty(t, problems)
	inUse, err := volume.InUse(info.Path)
	require.NoError(t, err, "in use")
	assert.False(t, inUse)
	id, err := f.reg.Identify(f.ctx, info.Path)
	require.NoError(t, err, "identify")
	assert.True(t, id.Known)
	assert.False(t, id.Copy)
	assert.Equal(t, data, readBack(t, f, info.Path, len(data)), "a read-only open reads the data")

	for name, write := range map[string]func() error{
		"open": func() error {
			v, err := f.mgr.Open(f.ctx, info.Path)
			if err == nil {
				v.Close()
			}
			return err
		},
		"resize": func() error {
			_, err := f.mgr.Resize(f.ctx, info.Path, 2<<20, volume.ResizeOptions{})
			return err
		},
		"wipe": func() error {
			_, err := f.mgr.Wipe(f.ctx, info.Path, volume.WipeOptions{})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := write()
			require.ErrorIs(t, err, volume.ErrReadOnlyImage)
			assert.ErrorIs(t, err, syscall.EROFS)
			assert.Contains(t, err.Error(), info.Path)
		})
	}
}
