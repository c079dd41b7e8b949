package volume_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// TestAdoptableLUKS2: Adoptable predicts what Adopt does with a cryptsetup-made LUKS2 image:
// an image whose data crkvol cannot serve (another cipher, an unfinished reencryption) or
// whose keyslots it cannot open is refused up front by both, with the same
// *NotAdoptableError, and leaves the image untouched; aes-xts-plain64 with a 256-bit key
// (AES-128-XTS) or a 512-bit key is adopted, and opens.
func TestAdoptableLUKS2(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	f := newFixture(t)
	passFile := filepath.Join(f.dir, "pass")
	require.NoError(t, os.WriteFile(passFile, []byte("pw"), 0o600))
	pbkdf := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", passFile}
	tests := []struct {
		name   string
		format []string   // luksFormat options
		after  [][]string // cryptsetup commands run on the image next (IMG stands for it)
		reason string     // NotAdoptableError.Reason; empty: adoptable
		slots  bool       // NotAdoptableError.KeyslotsOnly
	}{
		{name: "xts 512", format: []string{"--cipher", "aes-xts-plain64", "--key-size", "512"}},
		{name: "xts 256 (AES-128)", format: []string{"--cipher", "aes-xts-plain64", "--key-size", "256"}},
		{name: "cbc data", format: []string{"--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"},
			reason: "data cipher aes-cbc-essiv:sha256 with a 256-bit key (crkvol volumes use aes-xts-plain64 with a 256- or 512-bit key)"},
		{name: "cbc keyslot", format: []string{"--keyslot-cipher", "aes-cbc-essiv:sha256", "--keyslot-key-size", "256"}, slots: true,
			reason: "no keyslot is one crkvol can open (keyslot 0 is encrypted with aes-cbc-essiv:sha256 and a 256-bit key; crkvol opens luks2 keyslots encrypted with aes-xts-plain64 and a 256- or 512-bit key)"},
		{name: "ignored keyslot", after: [][]string{{"config", "--priority", "ignore", "--key-slot", "0", "IMG"}}, slots: true,
			reason: "no keyslot is one crkvol can open (keyslot 0 has priority ignore; crkvol opens luks2 keyslots encrypted with aes-xts-plain64 and a 256- or 512-bit key)"},
		{name: "reencryption", after: [][]string{append([]string{"reencrypt", "--batch-mode", "--init-only", "IMG"}, pbkdf...)},
			reason: "it requires online-reencrypt-v2 (cryptsetup has an operation on it to finish, such as a reencryption)"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(f.dir, string(rune('a'+i))+".img")
			require.NoError(t, os.WriteFile(path, nil, 0o600))
			require.NoError(t, os.Truncate(path, 20<<20))
			run(t, cs, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--luks2-keyslots-size", "1m"}, append(pbkdf, tt.format...)...), path)...)
			for _, c := range tt.after {
				for j := range c {
					if c[j] == "IMG" {
						c[j] = path
					}
				}
				run(t, cs, c...)
			}
			before, err := os.ReadFile(path)
			require.NoError(t, err)

			predicted := volume.Adoptable(f.ctx, path)
			_, err = f.mgr.Adopt(f.ctx, path, []byte("pw"), f.key.ID, volume.AdoptOptions{})
			if tt.reason == "" {
				require.NoError(t, predicted)
				require.NoError(t, err)
				v, err := f.mgr.Open(f.ctx, path)
				require.NoError(t, err)
				require.NoError(t, v.Close())
				return
			}
			for _, err := range []error{predicted, err} {
				var na *volume.NotAdoptableError
				require.ErrorAs(t, err, &na)
				assert.ErrorIs(t, err, volume.ErrNotAdoptable)
				assert.ErrorIs(t, err, volume.ErrUnsupportedImage)
				assert.Equal(t, path, na.Path)
				assert.Equal(t, tt.reason, na.Reason)
				assert.Equal(t, tt.slots, na.KeyslotsOnly)
				assert.Equal(t, "volume: "+path+" is a LUKS2 image crkvol cannot adopt: "+tt.reason, err.Error())
			}
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.True(t, string(before) == string(after), "a refused adoption leaves the image as it was")
		})
	}
	// A crkvol volume and an unreadable image are not NotAdoptableErrors.
	info := f.create(t, "own.img", 1<<20)
	assert.NoError(t, volume.Adoptable(f.ctx, info.Path))
	err := volume.Adoptable(f.ctx, filepath.Join(f.dir, "missing.img"))
	require.Error(t, err)
	assert.False(t, errors.Is(err, volume.ErrNotAdoptable))
}
