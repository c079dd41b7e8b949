package keyslot

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestChecksumCoversWholeBinaryHeader: the checksum is over the 4096 bytes of the binary
// header as they are on disk (cryptsetup's hdr_checksum_check), so a change in its padding
// or after a text field's NUL makes the copy bad, as it does for cryptsetup.
func TestChecksumCoversWholeBinaryHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		off  int
	}{
		{"padding after hdr_offset", 300},
		{"padding after csum", 600},
		{"last byte", binHeaderSize - 1},
		{"label after its NUL", offLabel + 40},
		{"csum tail", offCsum + 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dev, img, _ := newMemImage(t, "pass")
			dev.buf[tt.off] ^= 0x40
			require.NoError(t, img.Reload())
			h := img.Health()
			assert.ErrorIs(t, h.Primary.Err, ErrHeaderCorrupt)
			assert.NoError(t, h.Secondary.Err)
		})
	}
}
