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
			ca, cb, err := diskChecksumPair(alg, a, b, area, area)
			require.NoError(t, err)
			wa, err := diskChecksum(alg, a, area)
			require.NoError(t, err)
			wb, err := diskChecksum(alg, b, area)
			require.NoError(t, err)
			require.Equal(t, wa, ca, "%s %d: first", alg, size)
			require.Equal(t, wb, cb, "%s %d: second", alg, size)
			require.NotEqual(t, ca, cb)

			other := make([]byte, len(area))
			fill(other)
			ca, cb, err = diskChecksumPair(alg, a, b, area, other)
			require.NoError(t, err)
			wb, err = diskChecksum(alg, b, other)
			require.NoError(t, err)
			require.Equal(t, wa, ca, "%s %d: first, two areas", alg, size)
			require.Equal(t, wb, cb, "%s %d: second, two areas", alg, size)
		}
	}
	_, _, err := diskChecksumPair("md5", make([]byte, binHeaderSize), make([]byte, binHeaderSize), nil, nil)
	require.ErrorIs(t, err, ErrHeaderCorrupt)
}

// TestOpenPairedChecksums: a fresh open checks both copies with the checksums pairChecksums
// computes together (when the CPU has SHA-NI), and still finds damage anywhere in either
// copy, reporting it on that copy only.
func TestOpenPairedChecksums(t *testing.T) {
	t.Parallel()
	dev, img, _ := newMemImage(t, "p")
	size := img.MetadataSize()
	pf := prefetch(dev, &Buffers{})
	h, raw, err := readBinHeader(pf, 0, nil)
	require.NoError(t, err)
	sums := pairChecksums(pf, h, raw, nil)
	require.Equal(t, hasSHANI, sums.ok, "paired when SHA-NI is there")
	if sums.ok {
		want, err := diskChecksum("sha256", raw, pf.buf[binHeaderSize:size])
		require.NoError(t, err)
		require.Equal(t, want, *sums.at(0))
		want, err = diskChecksum("sha256", pf.buf[size:size+binHeaderSize], pf.buf[size+binHeaderSize:2*size])
		require.NoError(t, err)
		require.Equal(t, want, *sums.at(size))
		require.Nil(t, sums.at(2*size))
	}
	pf.release()

	text := uint64(len(img.snapshot().text))
	for _, tc := range []struct {
		name      string
		off       uint64
		secondary bool
	}{
		{"primary label", offLabel, false},
		{"primary header padding", binHeaderUsed + 9, false},
		{"primary JSON text", binHeaderSize + text/2, false},
		{"primary JSON padding", size - 1, false},
		{"secondary salt", size + offSalt, true},
		{"secondary JSON text", size + binHeaderSize + 3, true},
		{"secondary JSON padding", size + binHeaderSize + text + 1, true},
	} {
		d := dev.clone()
		d.buf[tc.off] ^= 0x20
		again, err := Open(d, nil)
		require.NoError(t, err, tc.name)
		health := again.Health()
		bad, good := health.Primary.Err, health.Secondary.Err
		if tc.secondary {
			bad, good = good, bad
		}
		require.ErrorIs(t, bad, ErrHeaderCorrupt, tc.name)
		require.NoError(t, good, tc.name)
	}
}
