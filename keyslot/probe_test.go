package keyslot

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSecondaryProbeReportsSpecificError: with the primary binary header gone, the secondary
// is probed at every allowed header size; when the one found is refused (here for the legacy
// KDF name "argon2"), that reason is reported, not the "bad magic" of the smaller sizes probed
// before it.
func TestSecondaryProbeReportsSpecificError(t *testing.T) {
	t.Parallel()
	for _, size := range []uint64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10} {
		t.Run(fmt.Sprint(size>>10, "k"), func(t *testing.T) {
			t.Parallel()
			dev := newMemDevice(smallSize)
			img, _, err := Format(dev, smallSize, []byte("pass"), FormatOptions{KDF: Argon2id(4, 32, 1), MetadataSize: size, KeyslotsSize: 256 << 10})
			require.NoError(t, err)
			text := string(img.snapshot().meta.marshal())
			require.Contains(t, text, `"type":"argon2id"`)
			writeRawMetadata(t, dev, strings.Replace(text, `"type":"argon2id"`, `"type":"argon2"`, 1))
			clear(dev.buf[:binHeaderSize]) // the primary binary header

			_, err = Open(dev, nil)
			require.ErrorIs(t, err, ErrNotLUKS2)
			assert.ErrorIs(t, err, ErrUnsupported)
			assert.Contains(t, err.Error(), `secondary header: unsupported: keyslots.0.kdf: KDF type "argon2"`)
			assert.NotContains(t, err.Error(), "secondary header: bad magic")
		})
	}
}

// TestSecondaryProbeHealth: a good secondary found after probing smaller sizes is reported at
// its own offset, without error.
func TestSecondaryProbeHealth(t *testing.T) {
	t.Parallel()
	dev := newMemDevice(smallSize)
	_, _, err := Format(dev, smallSize, []byte("pass"), FormatOptions{KDF: testKDF, MetadataSize: 64 << 10, KeyslotsSize: 256 << 10})
	require.NoError(t, err)
	clear(dev.buf[:binHeaderSize])
	img, err := Open(dev, nil)
	require.NoError(t, err)
	h := img.Health()
	assert.Error(t, h.Primary.Err)
	assert.NoError(t, h.Secondary.Err)
	assert.Equal(t, uint64(64<<10), h.Secondary.Offset)
}

// TestOpenLUKS1: a LUKS1 header (the LUKS magic, version 1) is reported as LUKS1, matching
// ErrLUKS1 and ErrNotLUKS2, not as a corrupt LUKS2 header; other versions stay corrupt.
func TestOpenLUKS1(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		version byte
		luks1   bool
	}{
		{"version 1", 1, true},
		{"version 3", 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dev := newMemDevice(smallSize)
			copy(dev.buf, magicPrimary)
			dev.buf[offVersion+1] = tc.version
			_, err := Open(dev, nil)
			require.ErrorIs(t, err, ErrNotLUKS2)
			if tc.luks1 {
				assert.ErrorIs(t, err, ErrLUKS1)
				assert.NotErrorIs(t, err, ErrHeaderCorrupt)
				assert.Contains(t, err.Error(), "LUKS1")
			} else {
				assert.NotErrorIs(t, err, ErrLUKS1)
				assert.ErrorIs(t, err, ErrHeaderCorrupt)
			}
		})
	}
}
