package keyslot

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"slices"
)

// digestIterations is the PBKDF2 iteration count of new volume key digests: cryptsetup's
// minimum. The volume key is random and as long as the hash, so iterations add no strength;
// they only slow every unlock.
const digestIterations = 1000

// newDigest makes the pbkdf2 digest of a volume key for keyslots and segments.
func newDigest(volumeKey []byte, keyslots, segments []int, rand io.Reader) (*digestMeta, error) {
	d := &digestMeta{
		typ:        "pbkdf2",
		keyslots:   keyslots,
		segments:   segments,
		hash:       "sha256",
		iterations: digestIterations,
		salt:       make([]byte, saltSize),
	}
	if _, err := io.ReadFull(rand, d.salt); err != nil {
		return nil, fmt.Errorf("keyslot: reading random digest salt: %w", err)
	}
	var err error
	if d.digest, err = d.compute(context.Background(), volumeKey, 32); err != nil {
		return nil, err
	}
	return d, nil
}

// compute is the n-byte pbkdf2 digest of volumeKey; it stops when ctx ends.
func (d *digestMeta) compute(ctx context.Context, volumeKey []byte, n int) ([]byte, error) {
	h, err := hashByName(d.hash)
	if err != nil {
		return nil, err
	}
	return pbkdf2Derive(ctx, volumeKey, d.salt, d.iterations, n, h)
}

// verify reports whether volumeKey matches the digest, in constant time. It stops with an
// error wrapping ctx.Err() when ctx ends.
func (d *digestMeta) verify(ctx context.Context, volumeKey []byte) (bool, error) {
	got, err := d.compute(ctx, volumeKey, len(d.digest))
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(got, d.digest) == 1, nil
}

// digestOfKeyslot returns the digest that lists keyslot id.
func (m *metadata) digestOfKeyslot(id int) (int, *digestMeta) {
	for _, did := range sortedKeys(m.digests) {
		for _, k := range m.digests[did].keyslots {
			if k == id {
				return did, m.digests[did]
			}
		}
	}
	return -1, nil
}

// segmentDigest returns the digest that covers segment 0, the data segment.
func (m *metadata) segmentDigest() (int, *digestMeta) {
	for _, did := range sortedKeys(m.digests) {
		for _, s := range m.digests[did].segments {
			if s == 0 {
				return did, m.digests[did]
			}
		}
	}
	return -1, nil
}

// boundToData reports whether keyslot id is listed in the digest of the data segment
// (segment 0), so that the key it holds is the volume key. A keyslot whose digest covers
// no segment is unbound (cryptsetup luksAddKey --unbound).
func (m *metadata) boundToData(id int) bool {
	_, d := m.segmentDigest()
	return d != nil && slices.Contains(d.keyslots, id)
}
