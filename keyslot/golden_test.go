package keyslot

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// loggingDevice hashes every write into log: offset, length and bytes, in order.
type loggingDevice struct {
	*memDevice
	log    hash.Hash
	writes int
}

func (d *loggingDevice) WriteAt(p []byte, off int64) (int, error) {
	var n [16]byte
	binary.BigEndian.PutUint64(n[:], uint64(off))
	binary.BigEndian.PutUint64(n[8:], uint64(len(p)))
	d.log.Write(n[:])
	d.log.Write(p)
	d.writes++
	return d.memDevice.WriteAt(p, off)
}

// goldenWrites is the SHA-256 of the writes TestTokenUpdateWritesGolden makes, and of the
// device they leave, as the package wrote them before its buffers were reused and its
// comparisons of verified copies made cheaper (commit f6b6912).
const goldenWrites = "d68ab241a410a90bc458f33888e80afb4770f55d58e9402e55f9ada52c69b6bc"

// TestTokenUpdateWritesGolden pins every byte the metadata updates of a rewrap write, in
// order, with a deterministic random source: format, add a token, then as a rewrap does,
// open afresh and update the token; replace it again through the same Image; and update it
// once more after damaging the secondary copy (repair, then commit).
func TestTokenUpdateWritesGolden(t *testing.T) {
	t.Parallel()
	rnd := rand.NewChaCha8([32]byte{'c', 'r', 'k', 'v', 'o', 'l'})
	mem := newMemDevice(smallSize)
	dev := &loggingDevice{memDevice: mem, log: sha256.New()}
	opts := smallFormat()
	opts.Rand, opts.Label = rnd, "golden"
	img, _, err := Format(dev, smallSize, []byte("p"), opts)
	require.NoError(t, err)
	id, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","ciphertext":"AAAA"}`))
	require.NoError(t, err)

	ctx := context.Background()
	img, err = OpenContext(ctx, dev, &Options{Rand: rnd})
	require.NoError(t, err)
	require.NoError(t, img.UpdateTokenContext(ctx, id, func(json.RawMessage) ([]byte, error) {
		return []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","ciphertext":"BBBB"}`), nil
	}))
	require.NoError(t, img.ReplaceToken(id, []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","ciphertext":"CCCC"}`)))
	mem.buf[DefaultMetadataSize+binHeaderSize+10] ^= 1 // the secondary's JSON area
	require.NoError(t, img.ReplaceToken(id, []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","ciphertext":"DDDD"}`)))
	require.True(t, img.Health().OK())

	sum := sha256.Sum256(mem.buf)
	dev.log.Write(sum[:])
	got := hex.EncodeToString(dev.log.Sum(nil))
	t.Logf("%d writes", dev.writes)
	require.Equal(t, goldenWrites, got)
}
