package volume_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/keyslot"
	"crkvol/volume"
)

// writePattern writes n bytes of pattern seed at offset 0 of the volume at path.
func writePattern(t testing.TB, f *fixture, path string, n int, seed uint64) []byte {
	t.Helper()
	v, err := f.mgr.Open(f.ctx, path)
	require.NoError(t, err)
	defer v.Close()
	p := pattern(n, seed)
	_, err = v.WriteAt(p, 0)
	require.NoError(t, err)
	return p
}

// readBack reads n bytes at offset 0 of the volume at path.
func readBack(t testing.TB, f *fixture, path string, n int) []byte {
	t.Helper()
	v, err := f.mgr.OpenWith(f.ctx, path, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	defer v.Close()
	b := make([]byte, n)
	_, err = v.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

// keyslotCount returns the number of keyslots of the image at path.
func keyslotCount(t testing.TB, path string) int {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	return len(img.Keyslots())
}

// TestReidentifyCopy: a copy gets its own UUID, CRN, passphrase and registration (under the
// same key or another); it opens read-write; the original's passphrase no longer opens it;
// the two rotate independently and the original is unaffected.
func TestReidentifyCopy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		otherKey bool
	}{
		{"same key", false},
		{"another key", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			data := writePattern(t, f, info.Path, 64<<10, 1)
			pass1 := unwrapPassphrase(t, f, info.Path)
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)
			keyID := f.key.ID
			if tc.otherKey {
				k2, err := f.svc.CreateRootKey(f.ctx, "copies")
				require.NoError(t, err)
				keyID = k2.ID
			}

			info2, err := f.mgr.Reidentify(f.ctx, backup, volume.ReidentifyOptions{KeyID: keyID})
			require.NoError(t, err)
			assert.NotEqual(t, info.UUID, info2.UUID)
			assert.NotEqual(t, info.CRN, info2.CRN)
			assert.Equal(t, keyID, info2.KeyID)
			d := mustDescribe(t, backup)
			assert.Equal(t, info2.UUID, d.UUID)
			assert.Equal(t, keyID, d.KeyID)
			e, err := f.reg.Get(info2.CRN)
			require.NoError(t, err)
			assert.Equal(t, backup, e.Path)
			e, err = f.reg.Get(info.CRN)
			require.NoError(t, err)
			assert.Equal(t, info.Path, e.Path, "the original keeps its registration")
			assert.Equal(t, 1, keyslotCount(t, backup), "the old crkvol keyslot is gone")
			_, err = volume.OpenWithPassphrase(backup, pass1)
			require.ErrorIs(t, err, keyslot.ErrWrongPassphrase, "the original's passphrase no longer opens the copy")

			v, err := f.mgr.Open(f.ctx, backup) // read-write: it is a volume of its own
			require.NoError(t, err)
			_, isCopy := v.CopyOf()
			assert.False(t, isCopy)
			require.NoError(t, v.Close())
			assert.True(t, bytes.Equal(data, readBack(t, f, backup, len(data))), "same data, same volume key")
			more := writePattern(t, f, backup, 4096, 2)
			assert.True(t, bytes.Equal(data, readBack(t, f, info.Path, len(data))), "the original is unaffected")
			assert.True(t, bytes.Equal(more, readBack(t, f, backup, len(more))))

			k := f.rotate(t)
			require.NoError(t, f.lastReport().Err())
			assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
			if tc.otherKey {
				assert.Equal(t, info2.KeyVersion, mustDescribe(t, backup).KeyVersion, "another key's rotation leaves it")
				f.clock.Advance(time.Hour)
				k2, err := f.svc.RotateKey(f.ctx, keyID, nil)
				require.NoError(t, err)
				require.NoError(t, f.lastReport().Err())
				assert.Equal(t, k2.KeyVersion.ID, mustDescribe(t, backup).KeyVersion)
				assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, info.Path).KeyVersion)
			} else {
				assert.Equal(t, 2, f.lastReport().Rewrapped, "both volumes rotate")
				assert.Equal(t, k.KeyVersion.ID, mustDescribe(t, backup).KeyVersion)
			}

			// Deleting one leaves the other registered.
			require.NoError(t, f.mgr.Delete(f.ctx, backup, volume.DeleteOptions{}))
			regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{CRN: info.CRN})
			require.NoError(t, err)
			assert.Len(t, regs, 1)
			openAndClose(t, f, f.mgr, info.Path)
		})
	}
}

// TestReidentifyRefusesRegisteredImage: the registered image keeps its identity.
func TestReidentifyRefusesRegisteredImage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	before := readToken(t, info.Path)
	link := filepath.Join(f.dir, "hard.img")
	require.NoError(t, os.Link(info.Path, link))
	for _, p := range []string{info.Path, link} { // a hard link reaches the registered file too
		_, err := f.mgr.Reidentify(f.ctx, p, volume.ReidentifyOptions{})
		require.ErrorIs(t, err, volume.ErrRegisteredImage, p)
		assert.Equal(t, before, readToken(t, info.Path))
		assert.Equal(t, info.UUID, mustDescribe(t, info.Path).UUID)
	}
	openAndClose(t, f, f.mgr, info.Path)
}

// TestReidentifyRollsBack: a reidentification whose registration fails leaves the copy as
// it was (UUID, token, keyslots); a retry then succeeds.
func TestReidentifyRollsBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	backup := filepath.Join(f.dir, "backup.img")
	copyFile(t, info.Path, backup)
	before := readToken(t, backup)
	broken := volume.NewManager(failRegisterKMS{f.ks}, f.reg, volume.Options{})
	defer broken.Close()
	_, err := broken.Reidentify(f.ctx, backup, volume.ReidentifyOptions{})
	require.Error(t, err)
	assert.Equal(t, info.UUID, mustDescribe(t, backup).UUID)
	assert.Equal(t, before, readToken(t, backup))
	assert.Equal(t, 1, keyslotCount(t, backup))
	entries, err := f.reg.List()
	require.NoError(t, err)
	assert.Len(t, entries, 1)

	info2, err := f.mgr.Reidentify(f.ctx, backup, volume.ReidentifyOptions{})
	require.NoError(t, err)
	openAndClose(t, f, f.mgr, backup)
	assert.NotEqual(t, info.CRN, info2.CRN)
}

// TestReidentifyFinishesInterrupted: a reidentification interrupted after its registration
// (before or after the UUID switch) is finished by running it again: the image ends with one
// keyslot and one token, as the new volume; the original's passphrase no longer opens it.
func TestReidentifyFinishesInterrupted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		switched bool
	}{
		{"before the switch", false},
		{"after the switch", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			pass1 := unwrapPassphrase(t, f, info.Path)
			oldToken := readToken(t, info.Path)
			backup := filepath.Join(f.dir, "backup.img")
			copyFile(t, info.Path, backup)
			info2, err := f.mgr.Reidentify(f.ctx, backup, volume.ReidentifyOptions{})
			require.NoError(t, err)

			// Put back what the interrupted run had not removed yet: the old keyslot and token
			// (and, before the switch, the old UUID).
			fh, err := os.OpenFile(backup, os.O_RDWR, 0)
			require.NoError(t, err)
			img, err := keyslot.Open(fh, nil)
			require.NoError(t, err)
			vk, _, err := img.Unlock(unwrapPassphrase(t, f, backup), keyslot.AnyKeyslot)
			require.NoError(t, err)
			slot, err := img.AddKeyslot(vk, pass1, keyslot.SlotOptions{ID: 0, KDF: keyslot.PBKDF2("sha256", 1000)})
			require.NoError(t, err)
			require.Equal(t, 0, slot)
			_, err = img.AddToken(keyslot.AnyToken, oldToken)
			require.NoError(t, err)
			if !tc.switched {
				require.NoError(t, img.SetUUID(info.UUID))
			}
			require.NoError(t, fh.Close())
			require.Equal(t, 2, keyslotCount(t, backup))

			got, err := f.mgr.Reidentify(f.ctx, backup, volume.ReidentifyOptions{})
			require.NoError(t, err)
			assert.Equal(t, info2.CRN, got.CRN)
			assert.Equal(t, info2.UUID, mustDescribe(t, backup).UUID)
			assert.Equal(t, 1, keyslotCount(t, backup))
			_, err = volume.OpenWithPassphrase(backup, pass1)
			require.ErrorIs(t, err, keyslot.ErrWrongPassphrase)
			openAndClose(t, f, f.mgr, backup)
			openAndClose(t, f, f.mgr, info.Path)
		})
	}
}
