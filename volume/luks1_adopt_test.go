package volume_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
	"crkvol/volume"
)

// TestLUKS1ErrorAdoptable: the error of a LUKS1 image says it cannot be adopted by the same
// rule as keyslot.LUKS1.Adoptable, key size included.
func TestLUKS1ErrorAdoptable(t *testing.T) {
	cases := []struct {
		name     string
		mode     string
		keyBytes int
		want     string
	}{
		{"adoptable", "xts-plain64", 64, "volume: /x.img is a LUKS1 image; convert it to LUKS2 first"},
		{"384-bit key", "xts-plain64", 48, "volume: /x.img is a LUKS1 image crkvol cannot adopt: LUKS1 data cipher aes-xts-plain64 with a 384-bit key is unsupported"},
		{"cbc", "cbc-essiv:sha256", 32, "volume: /x.img is a LUKS1 image crkvol cannot adopt: LUKS1 data cipher aes-cbc-essiv:sha256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &volume.LUKS1Error{Path: "/x.img", Header: &keyslot.LUKS1{CipherName: "aes", CipherMode: tc.mode, KeyBytes: tc.keyBytes}}
			require.Contains(t, e.Error(), tc.want)
		})
	}
}
