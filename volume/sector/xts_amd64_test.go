//go:build amd64 && !purego

package sector

import (
	"crypto/aes"
	"crypto/subtle"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeySchedule checks the Go key schedule, encryption and decryption round keys, through
// the AES-NI routine against crypto/aes: one XTS block of sector 0 whose tweak key is the
// same key has the tweak T = AES(0) and the ciphertext AES(in ⊕ T) ⊕ T.
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
		var in, zero, tw, want, got [16]byte
		fillRand(rng, in[:])
		ref.Encrypt(tw[:], zero[:])
		subtle.XORBytes(want[:], in[:], tw[:])
		ref.Encrypt(want[:], want[:])
		subtle.XORBytes(want[:], want[:], tw[:])
		xtsEncAESNI(s.rounds, &s.enc[0], &s.enc[0], &got[0], &in[0], 1, 0)
		require.Equal(t, want, got, "encrypt, key %d bytes", len(key))
		xtsDecAESNI(s.rounds, &s.dec[0], &s.enc[0], &got[0], &want[0], 1, 0)
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
