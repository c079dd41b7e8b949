package keyslot

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/sector"
)

// TestAreaCipherWiped checks that the keyslot-area cipher is wiped once it has been used and
// that the area key is cleared on every path, including a refused (weak) key.
func TestAreaCipherWiped(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
		ok   bool
	}{
		{"AES-256-XTS", append(bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)...), true},
		{"AES-128-XTS", append(bytes.Repeat([]byte{3}, 16), bytes.Repeat([]byte{4}, 16)...), true},
		{"weak key", bytes.Repeat([]byte{5}, 64), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := bytes.Clone(tc.key)
			var used *sector.Cipher
			sec := make([]byte, 512)
			err := withAreaCipher(key, func(c *sector.Cipher) {
				used = c
				c.EncryptSectors(sec, sec, 0)
			})
			assert.Equal(t, make([]byte, len(key)), key, "area key cleared")
			if !tc.ok {
				require.ErrorIs(t, err, sector.ErrWeakKey)
				assert.Nil(t, used, "f not called")
				return
			}
			require.NoError(t, err)
			require.NotNil(t, used)
			assert.NotEqual(t, make([]byte, 512), sec, "f ran with the cipher")
			assert.PanicsWithValue(t, "sector: Cipher used after Wipe", func() { used.DecryptSectors(sec, sec, 0) }, "cipher wiped")
		})
	}
}

// TestDiffuserWipe checks that the AF diffuser's scratch space, which holds key-derived
// bytes, is cleared by wipe, for the hashes with and without the SHA-256 fast path.
func TestDiffuserWipe(t *testing.T) {
	for _, name := range []string{"sha256", "sha512", "sha1"} {
		t.Run(name, func(t *testing.T) {
			h, err := hashByName(name)
			require.NoError(t, err)
			d := newDiffuser(h)
			buf := bytes.Repeat([]byte{0x77}, 64)
			d.diffuse(buf)
			d.wipe()
			assert.Equal(t, [len(d.in)]byte{}, d.in, "hash input cleared")
			assert.Equal(t, make([]byte, cap(d.sum)), d.sum[:cap(d.sum)], "hash output cleared")
		})
	}
}
