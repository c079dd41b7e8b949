package keyslot

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/ident"
)

// TestFormatUUIDCase: Format takes a UUID in either case and writes it in lower case, as
// cryptsetup luksFormat --uuid does; other forms are refused.
func TestFormatUUIDCase(t *testing.T) {
	tests := []struct {
		name, uuid, want string
	}{
		{"lower", "0123abcd-89ab-4def-8123-456789abcdef", "0123abcd-89ab-4def-8123-456789abcdef"},
		{"upper", "0123ABCD-89AB-4DEF-8123-456789ABCDEF", "0123abcd-89ab-4def-8123-456789abcdef"},
		{"braced", "{0123abcd-89ab-4def-8123-456789abcdef}", ""},
		{"urn", "urn:uuid:0123abcd-89ab-4def-8123-456789abcdef", ""},
		{"no hyphens", "0123abcd89ab4def8123456789abcdef", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMemDevice(smallSize)
			opts := smallFormat()
			opts.UUID = tc.uuid
			img, _, err := Format(dev, smallSize, []byte("p"), opts)
			if tc.want == "" {
				require.ErrorIs(t, err, ident.ErrInvalidUUID)
				assert.Contains(t, err.Error(), "UUID")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, img.UUID())
			img, err = Open(dev, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.want, img.UUID())
		})
	}
}

// TestHeaderUUIDKeptVerbatim: a header another tool wrote with an upper-case UUID opens
// (cryptsetup 2.6.1 opens it too and reports it as stored), its UUID is reported as stored
// (the volume layer binds it into the wrapped passphrase) and a metadata change keeps it.
func TestHeaderUUIDKeptVerbatim(t *testing.T) {
	dev, _, vk := newMemImage(t, "pass")
	img, err := Open(dev, nil)
	require.NoError(t, err)
	upper := strings.ToUpper(img.UUID())
	st := img.snapshot()
	area := st.meta.marshal()
	full := make([]byte, st.bin.hdrSize-binHeaderSize)
	copy(full, area)
	for _, secondary := range []bool{false, true} {
		c := st.bin
		c.uuid, c.seqID, c.secondary, c.hdrOffset = upper, c.seqID+1, secondary, 0
		if secondary {
			c.hdrOffset = st.bin.hdrSize
		}
		_, err := writeCopy(dev, &c, full)
		require.NoError(t, err)
	}

	img, err = Open(dev, nil)
	require.NoError(t, err)
	assert.Equal(t, upper, img.UUID())
	got, _, err := img.Unlock([]byte("pass"), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, vk, got)
	_, err = img.AddToken(AnyToken, []byte(`{"type":"x","keyslots":[]}`))
	require.NoError(t, err)
	img, err = Open(dev, nil)
	require.NoError(t, err)
	assert.Equal(t, upper, img.UUID(), "a metadata change keeps the header UUID as it was")
}
