package keyslot

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDiskChecksumPair: diskChecksumPair gives what diskChecksum gives for each copy, with
// every supported algorithm, several area sizes, a checksum field that is not zero (hashed
// as zeros) and headers differing anywhere.
func TestDiskChecksumPair(t *testing.T) {
	t.Parallel()
	rnd := rand.New(rand.NewPCG(1, 2))
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
	}
	for _, alg := range []string{"sha256", "sha1", "sha512"} {
		for _, size := range []int{16 << 10, 32 << 10, 64 << 10} {
			a, b := make([]byte, binHeaderSize), make([]byte, binHeaderSize)
			area := make([]byte, size-binHeaderSize)
			fill(a)
			fill(b)
			fill(area[:size/3])
			ca, cb, err := diskChecksumPair(alg, a, b, area)
			require.NoError(t, err)
			wa, err := diskChecksum(alg, a, area)
			require.NoError(t, err)
			wb, err := diskChecksum(alg, b, area)
			require.NoError(t, err)
			require.Equal(t, wa, ca, "%s %d: first", alg, size)
			require.Equal(t, wb, cb, "%s %d: second", alg, size)
			require.NotEqual(t, ca, cb)
		}
	}
	_, _, err := diskChecksumPair("md5", make([]byte, binHeaderSize), make([]byte, binHeaderSize), nil)
	require.ErrorIs(t, err, ErrHeaderCorrupt)
}
