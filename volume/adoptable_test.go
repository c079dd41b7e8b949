package volume_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/volume"
)

// TestAdoptableLUKS2: Adoptable predicts what Adopt does with a cryptsetup-made LUKS2 image:
// an image whose data crkvol cannot serve (another cipher, an unfinished reencryption, a
// data area not a whole number of sectors or cut short), whose header names a hash crkvol
// does not implement, or whose keyslots it cannot open is refused up front by both, with the
// same *NotAdoptableError, and leaves the image untouched and unregistered; the fix the
// error names (cryptsetup config --priority normal, luksAddKey, truncate) then makes it
// adoptable. aes-xts-plain64 with a 256-bit key (AES-128-XTS) or a 512-bit key is
// adopted, and opens.
func TestAdoptableLUKS2(t *testing.T) {
	t.Parallel()
	cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
	f := newFixture(t)
	passFile := filepath.Join(f.dir, "pass")
	require.NoError(t, os.WriteFile(passFile, []byte("pw"), 0o600))
	pbkdf := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", passFile}
	const mib = 1 << 20
	const keyslots = "crkvol opens luks2 keyslots encrypted with aes-xts-plain64 and a 256- or 512-bit key, not of priority ignore"
	addKey := append([]string{"luksAddKey", "--batch-mode", "--keyslot-cipher", "aes-xts-plain64", "--keyslot-key-size", "512"}, pbkdf...)
	tests := []struct {
		name   string
		format []string   // luksFormat options
		after  [][]string // cryptsetup commands run on the image next (IMG stands for it)
		size   int64      // the file's size then, if not 0
		want   volume.NotAdoptableError
		errIs  error      // what the error matches besides ErrNotAdoptable and ErrUnsupportedImage
		fix    [][]string // cryptsetup commands (IMG, the image) after which Adopt takes it
	}{
		{name: "xts 512", format: []string{"--cipher", "aes-xts-plain64", "--key-size", "512"}},
		{name: "xts 256 (AES-128)", format: []string{"--cipher", "aes-xts-plain64", "--key-size", "256"}},
		{name: "cbc data", format: []string{"--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"},
			want: volume.NotAdoptableError{CopyOut: true,
				Reason: "data cipher aes-cbc-essiv:sha256 with a 256-bit key (crkvol volumes use aes-xts-plain64 with a 256- or 512-bit key)"}},
		{name: "sha384 header", format: []string{"--hash", "sha384"}, errIs: keyslot.ErrUnsupported,
			want: volume.NotAdoptableError{CopyOut: true,
				Reason: `its header names what crkvol does not implement (keyslots.0.af: unsupported: hash "sha384"), so crkvol cannot read it`}},
		{name: "whirlpool header", format: []string{"--hash", "whirlpool"}, errIs: keyslot.ErrNotLUKS2,
			want: volume.NotAdoptableError{CopyOut: true,
				Reason: `its header names what crkvol does not implement (keyslots.0.af: unsupported: hash "whirlpool"), so crkvol cannot read it`}},
		{name: "cbc keyslot", format: []string{"--keyslot-cipher", "aes-cbc-essiv:sha256", "--keyslot-key-size", "256"},
			want: volume.NotAdoptableError{KeyslotsOnly: true, AddKeyslot: true,
				Reason: "no keyslot is one crkvol can open (keyslot 0 is encrypted with aes-cbc-essiv:sha256 and a 256-bit key; " + keyslots + ")"},
			fix: [][]string{append(addKey, "IMG", passFile)}},
		{name: "ignored keyslot", after: [][]string{{"config", "--priority", "ignore", "--key-slot", "0", "IMG"}},
			want: volume.NotAdoptableError{KeyslotsOnly: true, Unignore: []int{0},
				Reason: "no keyslot is one crkvol can open (keyslot 0 has priority ignore; " + keyslots + ")"},
			fix: [][]string{{"config", "--priority", "normal", "--key-slot", "0", "IMG"}}},
		{name: "ignored cbc keyslot", format: []string{"--keyslot-cipher", "aes-cbc-essiv:sha256", "--keyslot-key-size", "256"},
			after: [][]string{{"config", "--priority", "ignore", "--key-slot", "0", "IMG"}},
			want: volume.NotAdoptableError{KeyslotsOnly: true, Unignore: []int{0}, AddKeyslot: true,
				Reason: "no keyslot is one crkvol can open (keyslot 0 has priority ignore; " + keyslots + ")"},
			fix: [][]string{{"config", "--priority", "normal", "--key-slot", "0", "IMG"}, append(addKey, "IMG", passFile)}},
		{name: "unbound keyslot only", after: [][]string{
			append([]string{"luksAddKey", "--batch-mode", "--unbound", "--key-size", "512", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "IMG"}, passFile),
			{"luksKillSlot", "--batch-mode", "IMG", "0"}},
			want: volume.NotAdoptableError{KeyslotsOnly: true,
				Reason: "no keyslot is one crkvol can open (keyslot 1 is unbound; " + keyslots + ")"}},
		{name: "reencryption", after: [][]string{append([]string{"reencrypt", "--batch-mode", "--init-only", "IMG"}, pbkdf...)},
			want: volume.NotAdoptableError{CopyOut: true,
				Reason: "it requires online-reencrypt-v2 (cryptsetup has an operation on it to finish, such as a reencryption)"}},
		{name: "partial sector", format: []string{"--sector-size", "4096"}, size: 20*mib + 512,
			want: volume.NotAdoptableError{TrimTo: 20 * mib,
				Reason: "its data area (18874880 bytes from byte 2097152 to the end of the file) is not a whole number of 4096-byte sectors: the last 512 bytes are part of none"},
			fix: [][]string{{"truncate", "-s", "20971520", "IMG"}}},
		{name: "cut short", size: 2*mib + 511,
			want: volume.NotAdoptableError{
				Reason: "the 2097663-byte file ends before the first 4096-byte sector of its data at byte 2097152 (truncated?)"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(f.dir, string(rune('a'+i))+".img")
			img := func(c []string) []string {
				c = slices.Clone(c)
				for j := range c {
					if c[j] == "IMG" {
						c[j] = path
					}
				}
				return c
			}
			require.NoError(t, os.WriteFile(path, nil, 0o600))
			require.NoError(t, os.Truncate(path, 20*mib))
			run(t, cs, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--luks2-keyslots-size", "1m"}, append(pbkdf, tt.format...)...), path)...)
			for _, c := range tt.after {
				run(t, cs, img(c)...)
			}
			if tt.size != 0 {
				require.NoError(t, os.Truncate(path, tt.size))
			}
			before, err := os.ReadFile(path)
			require.NoError(t, err)

			predicted := volume.Adoptable(f.ctx, path)
			_, err = f.mgr.Adopt(f.ctx, path, []byte("pw"), f.key.ID, volume.AdoptOptions{})
			if tt.want.Reason == "" {
				require.NoError(t, predicted)
				require.NoError(t, err)
				v, err := f.mgr.Open(f.ctx, path)
				require.NoError(t, err)
				require.NoError(t, v.Close())
				return
			}
			want := tt.want
			want.Path = path
			for _, err := range []error{predicted, err} {
				var na *volume.NotAdoptableError
				require.ErrorAs(t, err, &na)
				assert.ErrorIs(t, err, volume.ErrNotAdoptable)
				assert.ErrorIs(t, err, volume.ErrUnsupportedImage)
				if tt.errIs != nil {
					assert.ErrorIs(t, err, tt.errIs)
				}
				got := *na
				got.Err = nil
				assert.Equal(t, want, got)
				assert.Equal(t, "volume: "+path+" is a LUKS2 image crkvol cannot adopt: "+tt.want.Reason, err.Error())
			}
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.True(t, string(before) == string(after), "a refused adoption leaves the image as it was")
			entries, err := f.reg.List()
			require.NoError(t, err)
			for _, e := range entries {
				assert.NotEqual(t, path, e.Path, "a refused adoption registers nothing")
			}

			// The fix the error names makes the image one Adopt takes, and that opens.
			if len(tt.fix) == 0 {
				return
			}
			for _, c := range tt.fix {
				if c[0] == "truncate" {
					run(t, c[0], img(c[1:])...)
				} else {
					run(t, cs, img(c)...)
				}
			}
			require.NoError(t, volume.Adoptable(f.ctx, path))
			_, err = f.mgr.Adopt(f.ctx, path, []byte("pw"), f.key.ID, volume.AdoptOptions{})
			require.NoError(t, err)
			v, err := f.mgr.Open(f.ctx, path)
			require.NoError(t, err)
			require.NoError(t, v.Close())
		})
	}
	// A crkvol volume and an unreadable image are not NotAdoptableErrors.
	info := f.create(t, "own.img", 1<<20)
	assert.NoError(t, volume.Adoptable(f.ctx, info.Path))
	err := volume.Adoptable(f.ctx, filepath.Join(f.dir, "missing.img"))
	require.Error(t, err)
	assert.False(t, errors.Is(err, volume.ErrNotAdoptable))
}
