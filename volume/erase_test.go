package volume_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
)

// TestErase: a copy, or an image whose registration is gone, is crypto-erased: no keyslot
// is left, the passphrase from before no longer unlocks it, and the registered original is
// untouched. The registered image itself is refused unless forced, and a forced erase also
// deregisters it.
func TestErase(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// target returns the image to erase.
		target  func(t *testing.T, f *fixture, info *volume.Info) string
		force   bool
		wantErr error
		// deregistered says the original's registration is gone afterwards.
		deregistered bool
	}{
		{"copy", func(t *testing.T, f *fixture, info *volume.Info) string {
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)
			return backup
		}, false, nil, false},
		{"registration gone", func(t *testing.T, f *fixture, info *volume.Info) string {
			require.NoError(t, f.mgr.Delete(f.ctx, info.Path, volume.DeleteOptions{}))
			return info.Path
		}, false, nil, true},
		{"registered image", func(t *testing.T, f *fixture, info *volume.Info) string {
			return info.Path
		}, false, volume.ErrRegisteredImage, false},
		{"hard link to the registered image", func(t *testing.T, f *fixture, info *volume.Info) string {
			link := filepath.Join(f.dir, "hard.img")
			require.NoError(t, os.Link(info.Path, link))
			return link
		}, false, volume.ErrRegisteredImage, false},
		{"registered image moved", func(t *testing.T, f *fixture, info *volume.Info) string {
			moved := filepath.Join(f.dir, "moved.img")
			require.NoError(t, os.Rename(info.Path, moved))
			t.Cleanup(func() { _ = os.Rename(moved, info.Path) }) // the checks below read the registered path
			return moved
		}, false, volume.ErrRegisteredImage, false},
		{"registered image forced", func(t *testing.T, f *fixture, info *volume.Info) string {
			return info.Path
		}, true, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			pass := unwrapPassphrase(t, f, info.Path)
			img := tc.target(t, f, info)

			err := f.mgr.Erase(f.ctx, img, volume.EraseOptions{Force: tc.force})
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				assert.Contains(t, err.Error(), "volume delete")
				v, err := f.mgr.OpenWith(f.ctx, img, volume.OpenOptions{ReadOnly: true})
				require.NoError(t, err, "the refused image still opens")
				require.NoError(t, v.Close())
				return
			}
			require.NoError(t, err)
			_, err = volume.OpenWithPassphrase(img, pass)
			require.ErrorIs(t, err, keyslot.ErrWrongPassphrase, "the passphrase from before no longer unlocks")
			_, err = f.mgr.OpenWith(f.ctx, img, volume.OpenOptions{ReadOnly: true})
			require.ErrorIs(t, err, volume.ErrErased)

			regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{CRN: info.CRN})
			require.NoError(t, err)
			if tc.deregistered {
				assert.Empty(t, regs)
			} else {
				assert.Len(t, regs, 1)
				openAndClose(t, f, f.mgr, info.Path)
			}
		})
	}
}

// TestEraseLeavesNoKeyslotForCryptsetup: cryptsetup finds no keyslot in an erased copy.
func TestEraseLeavesNoKeyslotForCryptsetup(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	backup := filepath.Join(f.dir, "backup.img")
	copyFile(t, info.Path, backup)
	require.NoError(t, f.mgr.Erase(f.ctx, backup, volume.EraseOptions{}))
	out, err := exec.Command(cs, "luksDump", backup).CombinedOutput()
	require.NoError(t, err, "%s", out)
	dump := string(out)
	i := strings.Index(dump, "Keyslots:")
	j := strings.Index(dump, "Tokens:")
	require.True(t, i >= 0 && j > i, "%s", dump)
	assert.Equal(t, "Keyslots:", strings.TrimSpace(dump[i:j]), "no keyslot listed")
}
