package keyslot

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/ident"
)

// TestSetUUID: SetUUID writes the new UUID (canonical lower case) to both header copies in
// one commit, as cryptsetup luksUUID --uuid does; the keyslots still open; a malformed UUID is
// refused and changes nothing.
func TestSetUUID(t *testing.T) {
	tests := []struct {
		name, uuid, want string
	}{
		{"lower", "0123abcd-89ab-4def-8123-456789abcdef", "0123abcd-89ab-4def-8123-456789abcdef"},
		{"upper", "0123ABCD-89AB-4DEF-8123-456789ABCDEF", "0123abcd-89ab-4def-8123-456789abcdef"},
		{"no hyphens", "0123abcd89ab4def8123456789abcdef", ""},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev, img, vk := newMemImage(t, "p")
			before := img.UUID()
			seq := img.SeqID()
			err := img.SetUUID(tc.uuid)
			if tc.want == "" {
				require.ErrorIs(t, err, ident.ErrInvalidUUID)
				assert.Equal(t, before, img.UUID())
				assert.Equal(t, seq, img.SeqID())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, img.UUID())
			assert.Equal(t, seq+1, img.SeqID())
			got, _, err := img.Unlock([]byte("p"), AnyKeyslot)
			require.NoError(t, err)
			assert.Equal(t, vk, got)

			// Both copies hold it: with the primary destroyed, the secondary says the same.
			clear(dev.buf[:4096])
			img, err = Open(dev, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.want, img.UUID())
		})
	}
}
