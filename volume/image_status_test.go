package volume_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// TestImageFileStatus: a catalog image's file is ok as imported, changed once touched,
// written or replaced, missing once moved.
func TestImageFileStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	img := filepath.Join(f.dir, "img.qcow2")
	pass := randomPass(t)
	writeQcow2(t, img, guestContent(256<<10, 1), pass, 4096)
	e, err := f.mgr.ImportImage(f.ctx, img, volume.ImportOptions{Name: "img", KeyID: f.key.ID, Passphrase: pass})
	require.NoError(t, err)
	status := func() string {
		t.Helper()
		s, err := e.FileStatus()
		require.NoError(t, err)
		return s
	}
	assert.Equal(t, volume.ImageFileOK, status())
	later := e.ModTime.Add(time.Hour)
	require.NoError(t, os.Chtimes(img, later, later))
	assert.Equal(t, volume.ImageFileChanged, status(), "touched")
	require.NoError(t, os.Chtimes(img, e.ModTime, e.ModTime))
	assert.Equal(t, volume.ImageFileOK, status())
	data, err := os.ReadFile(img)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(img+".new", data, 0o600)) // a new inode while the old one lives
	require.NoError(t, os.Chtimes(img+".new", e.ModTime, e.ModTime))
	require.NoError(t, os.Rename(img+".new", img))
	assert.Equal(t, volume.ImageFileChanged, status(), "another file (inode) at the path")
	require.NoError(t, os.Rename(img, img+".moved"))
	assert.Equal(t, volume.ImageFileMissing, status())
}
