//go:build gc && !purego

package sector

import (
	"crypto/aes"
	"crypto/subtle"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/xts"
)

// TestKeySchedule checks the AES-NI key schedule, encryption and decryption round keys, through
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

// TestAESNIBlockCounts runs the AES-NI routine directly on data units of every block count
// from 1 to 40, against golang.org/x/crypto/xts: the sector sizes only give multiples of 32,
// so this is what reaches the single-block tail after the eight-block loop.
func TestAESNIBlockCounts(t *testing.T) {
	if !hasPath(PathAESNI) {
		t.Skip("no AES-NI on this CPU")
	}
	rng := rand.New(rand.NewPCG(4, 7))
	for _, keyLen := range []int{32, 64} {
		key := make([]byte, keyLen)
		fillRand(rng, key)
		var k1, k2 schedule
		k1.expand(key[:keyLen/2])
		k2.expand(key[keyLen/2:])
		ref, err := xts.NewCipher(aes.NewCipher, key)
		require.NoError(t, err)
		for n := 1; n <= 40; n++ {
			seq := rng.Uint64()
			src := make([]byte, 16*n)
			fillRand(rng, src)
			want, got := make([]byte, len(src)), make([]byte, len(src))
			ref.Encrypt(want, src, seq)
			xtsEncAESNI(k1.rounds, &k1.enc[0], &k2.enc[0], &got[0], &src[0], n, seq)
			require.Equal(t, want, got, "encrypt, key %d bytes, %d blocks", keyLen, n)
			xtsDecAESNI(k1.rounds, &k1.dec[0], &k2.enc[0], &got[0], &want[0], n, seq)
			require.Equal(t, src, got, "decrypt, key %d bytes, %d blocks", keyLen, n)
		}
	}
}
