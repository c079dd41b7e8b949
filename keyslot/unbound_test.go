package keyslot

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// addUnboundKeyslot adds, at id, a keyslot holding a fresh random key that is not the volume
// key, under its own digest covering no segment: what `cryptsetup luksAddKey --unbound` makes.
func addUnboundKeyslot(t *testing.T, img *Image, id int, pass string) []byte {
	t.Helper()
	key := bytes.Repeat([]byte{0x5a}, 64)
	require.NoError(t, img.update(func(st *state, m *metadata) error {
		ks, err := img.writeKeyslot(st, m, key, []byte(pass), SlotOptions{ID: id, KDF: testKDF, AFHash: "sha256", Priority: PriorityNormal})
		if err != nil {
			return err
		}
		d, err := newDigest(key, []int{id}, nil, img.rand)
		if err != nil {
			return err
		}
		m.keyslots[id] = ks
		for did := range maxDigests {
			if _, taken := m.digests[did]; !taken {
				m.digests[did] = d
				break
			}
		}
		return nil
	}))
	return key
}

// unboundCase is an image with a bound keyslot and an unbound one at a lower id, both under
// the same passphrase.
type unboundCase struct {
	name           string
	img            *Image
	volumeKey      []byte
	unboundKey     []byte // nil when unknown (cryptsetup made it)
	bound, unbound int
}

func unboundCases(t *testing.T) []unboundCase {
	t.Helper()
	const pass = "same passphrase"
	var cases []unboundCase

	// Library-made: keyslot 0 is moved to 1 by formatting, then an unbound slot takes 0.
	_, img, vk := newMemImage(t, "first")
	slot, err := img.AddKeyslot(vk, []byte(pass), SlotOptions{ID: 1, KDF: testKDF})
	require.NoError(t, err)
	require.NoError(t, img.RemoveKeyslot(0))
	uk := addUnboundKeyslot(t, img, 0, pass)
	cases = append(cases, unboundCase{"library", img, vk, uk, slot, 0})

	if cs, ok := tooltest.Available(t, "cryptsetup")["cryptsetup"]; ok {
		dir := t.TempDir()
		path := filepath.Join(dir, "unbound.img")
		passFile := filepath.Join(dir, "pass")
		require.NoError(t, os.WriteFile(passFile, []byte(pass), 0o600))
		require.NoError(t, os.WriteFile(path, nil, 0o600))
		require.NoError(t, os.Truncate(path, 4<<20))
		kdf := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
		run(t, cs, append([]string{"luksFormat", "-q", "--type", "luks2", "--luks2-metadata-size", "16k",
			"--luks2-keyslots-size", "768k", "--key-slot", "1", "--key-file", passFile, path}, kdf...)...)
		run(t, cs, append([]string{"luksAddKey", "-q", "--unbound", "--key-size", "512", "--key-slot", "0",
			path, passFile}, kdf...)...)
		out := string(run(t, cs, "luksDump", "--dump-volume-key", "--batch-mode", "--key-slot", "1", "--key-file", passFile, path))
		vk, err := hex.DecodeString(dumpedKey(t, out))
		require.NoError(t, err)
		f, err := os.Open(path)
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		img, err := Open(f, nil)
		require.NoError(t, err)
		cases = append(cases, unboundCase{"cryptsetup", img, vk, nil, 1, 0})
	}
	return cases
}

// TestUnboundKeyslot: Unlock with AnyKeyslot only tries keyslots bound to the data segment,
// so a passphrase that opens an unbound keyslot never yields a key that is not the volume
// key; a named unbound keyslot opens, is reported as unbound, and its key is not the volume
// key.
func TestUnboundKeyslot(t *testing.T) {
	t.Parallel()
	for _, tc := range unboundCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			key, slot, err := tc.img.Unlock([]byte("same passphrase"), AnyKeyslot)
			require.NoError(t, err)
			assert.Equal(t, tc.bound, slot, "the bound keyslot opens, not the unbound one")
			assert.Equal(t, tc.volumeKey, key)
			require.NoError(t, tc.img.VerifyVolumeKey(key))

			// Named, the unbound keyslot is tried, but Unlock returns only the volume key:
			// a caller that names a keyslot (a token's) never gets another key.
			key, slot, err = tc.img.Unlock([]byte("same passphrase"), tc.unbound)
			require.ErrorIs(t, err, ErrUnboundKeyslot)
			assert.Nil(t, key)
			assert.Equal(t, -1, slot)
			_, _, err = tc.img.Unlock([]byte("wrong"), tc.unbound)
			require.ErrorIs(t, err, ErrWrongPassphrase)

			// KeyslotKey gives the key an unbound keyslot holds.
			key, err = tc.img.KeyslotKey(context.Background(), []byte("same passphrase"), tc.unbound)
			require.NoError(t, err)
			assert.NotEqual(t, tc.volumeKey, key)
			if tc.unboundKey != nil {
				assert.Equal(t, tc.unboundKey, key)
			}
			assert.ErrorIs(t, tc.img.VerifyVolumeKey(key), ErrWrongVolumeKey)
			key, err = tc.img.KeyslotKey(context.Background(), []byte("same passphrase"), tc.bound)
			require.NoError(t, err)
			assert.Equal(t, tc.volumeKey, key)
			_, err = tc.img.KeyslotKey(context.Background(), []byte("wrong"), tc.unbound)
			assert.ErrorIs(t, err, ErrWrongPassphrase)

			slots := tc.img.Keyslots()
			i := slices.IndexFunc(slots, func(s SlotInfo) bool { return s.ID == tc.unbound })
			require.GreaterOrEqual(t, i, 0)
			assert.True(t, slots[i].Unbound)
			i = slices.IndexFunc(slots, func(s SlotInfo) bool { return s.ID == tc.bound })
			require.GreaterOrEqual(t, i, 0)
			assert.False(t, slots[i].Unbound)
		})
	}
}

// TestUnboundKeyslotOnly: a passphrase that opens only an unbound keyslot does not unlock the
// volume.
func TestUnboundKeyslotOnly(t *testing.T) {
	t.Parallel()
	_, img, _ := newMemImage(t, "volume")
	addUnboundKeyslot(t, img, 1, "unbound only")
	_, _, err := img.Unlock([]byte("unbound only"), AnyKeyslot)
	require.ErrorIs(t, err, ErrWrongPassphrase)
	_, _, err = img.Unlock([]byte("unbound only"), 1)
	require.ErrorIs(t, err, ErrUnboundKeyslot)
}

// TestRemoveLastBoundKeyslot: an unbound keyslot does not count as a way into the data, so
// removing the last bound keyslot is refused (cryptsetup's CRYPT_SLOT_ACTIVE_LAST counts only
// keyslots of the default segment); the unbound one can be removed.
func TestRemoveLastBoundKeyslot(t *testing.T) {
	t.Parallel()
	_, img, _ := newMemImage(t, "volume")
	addUnboundKeyslot(t, img, 1, "unbound")
	assert.ErrorIs(t, img.RemoveKeyslot(0), ErrLastKeyslot)
	require.NoError(t, img.RemoveKeyslot(1))
	_, _, err := img.Unlock([]byte("volume"), AnyKeyslot)
	require.NoError(t, err)
}
