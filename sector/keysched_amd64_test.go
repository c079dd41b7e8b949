//go:build gc && !purego

package sector

import (
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fips197Expansions are the key expansion examples of FIPS-197 Appendix A.1 (AES-128) and
// A.3 (AES-256): the cipher key and every word w[i] of its expansion.
var fips197Expansions = []struct {
	name  string
	key   string
	words []uint32
}{
	{"A.1 AES-128", "2b7e151628aed2a6abf7158809cf4f3c", []uint32{
		0x2b7e1516, 0x28aed2a6, 0xabf71588, 0x09cf4f3c, 0xa0fafe17, 0x88542cb1, 0x23a33939, 0x2a6c7605,
		0xf2c295f2, 0x7a96b943, 0x5935807a, 0x7359f67f, 0x3d80477d, 0x4716fe3e, 0x1e237e44, 0x6d7a883b,
		0xef44a541, 0xa8525b7f, 0xb671253b, 0xdb0bad00, 0xd4d1c6f8, 0x7c839d87, 0xcaf2b8bc, 0x11f915bc,
		0x6d88a37a, 0x110b3efd, 0xdbf98641, 0xca0093fd, 0x4e54f70e, 0x5f5fc9f3, 0x84a64fb2, 0x4ea6dc4f,
		0xead27321, 0xb58dbad2, 0x312bf560, 0x7f8d292f, 0xac7766f3, 0x19fadc21, 0x28d12941, 0x575c006e,
		0xd014f9a8, 0xc9ee2589, 0xe13f0cc8, 0xb6630ca6,
	}},
	{"A.3 AES-256", "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", []uint32{
		0x603deb10, 0x15ca71be, 0x2b73aef0, 0x857d7781, 0x1f352c07, 0x3b6108d7, 0x2d9810a3, 0x0914dff4,
		0x9ba35411, 0x8e6925af, 0xa51a8b5f, 0x2067fcde, 0xa8b09c1a, 0x93d194cd, 0xbe49846e, 0xb75d5b9a,
		0xd59aecb8, 0x5bf3c917, 0xfee94248, 0xde8ebe96, 0xb5a9328a, 0x2678a647, 0x98312229, 0x2f6c79b3,
		0x812c81ad, 0xdadf48ba, 0x24360af2, 0xfab8b464, 0x98c5bfc9, 0xbebd198e, 0x268c3ba7, 0x09e04214,
		0x68007bac, 0xb2df3316, 0x96e939e4, 0x6c518d80, 0xc814e204, 0x76a9fb8a, 0x5025c02d, 0x59c58239,
		0xde136967, 0x6ccc5a71, 0xfa256395, 0x9674ee15, 0x5886ca5d, 0x2e2f31d7, 0x7e0af1fa, 0x27cf73c3,
		0x749c47ab, 0x18501dda, 0xe2757e4f, 0x7401905a, 0xcafaaae3, 0xe4d59b34, 0x9adf6ace, 0xbd10190d,
		0xfe4890d1, 0xe6188d0b, 0x046df344, 0x706c631e,
	}},
}

// TestKeyExpansionFIPS197 checks the AES-NI key schedule against FIPS-197 Appendix A: the
// encryption round keys word for word, and the decryption round keys against the equivalent
// inverse cipher's (FIPS-197 section 5.3.5: the expansion in reverse order, all but the
// first and last through InvMixColumns, computed here in plain Go).
func TestKeyExpansionFIPS197(t *testing.T) {
	if !hasPath(PathAESNI) {
		t.Skip("no AES-NI on this CPU")
	}
	for _, v := range fips197Expansions {
		t.Run(v.name, func(t *testing.T) {
			key, err := hex.DecodeString(v.key)
			require.NoError(t, err)
			var s schedule
			s.expand(key)
			nr := len(key)/4 + 6
			require.Equal(t, nr, s.rounds)
			require.Len(t, v.words, 4*(nr+1))
			want := make([]byte, 16*(nr+1))
			for i, w := range v.words {
				binary.BigEndian.PutUint32(want[4*i:], w)
			}
			assert.Equal(t, hex.EncodeToString(want), hex.EncodeToString(s.enc[:len(want)]), "encryption round keys")
			assert.Equal(t, make([]byte, len(s.enc)-len(want)), s.enc[len(want):], "no round key past the last")

			wantDec := make([]byte, len(want))
			for r := 0; r <= nr; r++ {
				src, dst := want[16*(nr-r):16*(nr-r)+16], wantDec[16*r:16*r+16]
				if r == 0 || r == nr {
					copy(dst, src)
					continue
				}
				invMixColumns(dst, src)
			}
			assert.Equal(t, hex.EncodeToString(wantDec), hex.EncodeToString(s.dec[:len(want)]), "decryption round keys")
			assert.Equal(t, make([]byte, len(s.dec)-len(want)), s.dec[len(want):], "no round key past the last")
		})
	}
}

// invMixColumns is FIPS-197's InvMixColumns (section 5.3.3) on one 16-byte round key.
func invMixColumns(dst, src []byte) {
	for c := range 4 {
		a0, a1, a2, a3 := src[4*c], src[4*c+1], src[4*c+2], src[4*c+3]
		dst[4*c] = gmul(a0, 14) ^ gmul(a1, 11) ^ gmul(a2, 13) ^ gmul(a3, 9)
		dst[4*c+1] = gmul(a0, 9) ^ gmul(a1, 14) ^ gmul(a2, 11) ^ gmul(a3, 13)
		dst[4*c+2] = gmul(a0, 13) ^ gmul(a1, 9) ^ gmul(a2, 14) ^ gmul(a3, 11)
		dst[4*c+3] = gmul(a0, 11) ^ gmul(a1, 13) ^ gmul(a2, 9) ^ gmul(a3, 14)
	}
}

// gmul multiplies in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (test reference only: it
// branches on its operands).
func gmul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		hi := a & 0x80
		a <<= 1
		if hi != 0 {
			a ^= 0x1b
		}
		b >>= 1
	}
	return p
}
