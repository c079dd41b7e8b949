//go:build amd64 && !purego

package sector

import (
	"crypto/aes"
	"crypto/subtle"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeySchedule checks the Go key schedule through the assembly single-block encryption
// and the bulk decryption against crypto/aes.
func TestKeySchedule(t *testing.T) {
	if !hasPath(PathAESNI) {
		t.Skip("no AES-NI on this CPU")
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range 200 {
		key := make([]byte, []int{16, 32}[i%2])
		fillRand(rng, key)
		var s schedule
		s.expand(key)
		ref, err := aes.NewCipher(key)
		require.NoError(t, err)
		var in, got, want [16]byte
		fillRand(rng, in[:])
		encryptBlockAESNI(s.rounds, &s.enc[0], &got[0], &in[0])
		ref.Encrypt(want[:], in[:])
		require.Equal(t, want, got, "encrypt, key %d bytes", len(key))
		// Decryption keys: one XTS block of sector 0 whose tweak key is the same key, so
		// its tweak is T = AES(0) and the block is AES(in ⊕ T) ⊕ T.
		var zero, tw, ct [16]byte
		ref.Encrypt(tw[:], zero[:])
		subtle.XORBytes(ct[:], in[:], tw[:])
		ref.Encrypt(ct[:], ct[:])
		subtle.XORBytes(ct[:], ct[:], tw[:])
		xtsDecAESNI(s.rounds, &s.dec[0], &s.enc[0], &got[0], &ct[0], 1, 0)
		require.Equal(t, in, got, "decrypt, key %d bytes", len(key))
	}
}

func hasPath(p Path) bool {
	for _, q := range Paths() {
		if q == p {
			return true
		}
	}
	return false
}
