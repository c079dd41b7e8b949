package volume_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// TestUnlockImageAndHash: UnlockImage accepts a catalog entry whose WDEK unwraps and opens
// the image, and refuses a WDEK of another passphrase, a key that did not wrap it, and a
// missing file; HashImageFile gives the catalog's SHA-256.
func TestUnlockImageAndHash(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	e, _ := f.importTestImage(t, "img")
	sum, err := volume.HashImageFile(f.ctx, e.Path)
	require.NoError(t, err)
	require.Equal(t, e.SHA256, sum)
	_, err = volume.HashImageFile(f.ctx, e.Path+".missing")
	require.ErrorIs(t, err, os.ErrNotExist)

	other, err := f.ks.Wrap(f.ctx, f.key.ID, randomPass(t), nil)
	require.NoError(t, err)
	otherKey, err := f.svc.CreateRootKey(f.ctx, "other")
	require.NoError(t, err)

	cases := []struct {
		name    string
		mutate  func(e *volume.ImageEntry)
		wantErr string // "" = unlocks
	}{
		{"catalog entry", func(*volume.ImageEntry) {}, ""},
		{"WDEK of another passphrase", func(e *volume.ImageEntry) { e.WDEK = other.Ciphertext }, "does not unlock its LUKS header"},
		{"another key", func(e *volume.ImageEntry) { e.KeyID = otherKey.ID }, "unwrapping its WDEK"},
		{"missing file", func(e *volume.ImageEntry) { e.Path += ".missing" }, "opening"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := *e
			tc.mutate(&c)
			err := volume.UnlockImage(f.ctx, f.ks, c)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}
