package keyslot

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLUKS1Adoptable: only aes-xts-plain64 with a 256- or 512-bit key is adoptable; the
// refusal names the cipher and the key size.
func TestLUKS1Adoptable(t *testing.T) {
	cases := []struct {
		name, cipher, mode string
		keyBytes           int
		want               string // "" = adoptable
	}{
		{"xts-plain64 256", "aes", "xts-plain64", 32, ""},
		{"xts-plain64 512", "aes", "xts-plain64", 64, ""},
		{"xts-plain64 384", "aes", "xts-plain64", 48, "aes-xts-plain64 with a 384-bit key is unsupported"},
		{"xts-plain64 128", "aes", "xts-plain64", 16, "aes-xts-plain64 with a 128-bit key"},
		{"xts-plain", "aes", "xts-plain", 64, "aes-xts-plain with a 512-bit key"},
		{"cbc", "aes", "cbc-essiv:sha256", 32, "aes-cbc-essiv:sha256 with a 256-bit key"},
		{"serpent", "serpent", "xts-plain64", 64, "serpent-xts-plain64"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &LUKS1{CipherName: tc.cipher, CipherMode: tc.mode, HashSpec: "sha256", KeyBytes: tc.keyBytes}
			err := h.Adoptable()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrUnsupported)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
