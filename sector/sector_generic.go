package sector

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
)

// setGenericKeys sets up the portable path's crypto/aes ciphers from the two XTS key halves.
func (c *Cipher) setGenericKeys(dataKey, tweakKey []byte) error {
	var err error
	if c.data, err = aes.NewCipher(dataKey); err != nil {
		return fmt.Errorf("sector: data key: %w", err)
	}
	if c.tweak, err = aes.NewCipher(tweakKey); err != nil {
		return fmt.Errorf("sector: tweak key: %w", err)
	}
	return nil
}

// xtsGeneric runs XTS over consecutive data units of unit bytes each (a multiple of 16, at most
// MaxSectorSize). The first unit's tweak is the data unit sequence number seq; each following
// unit's is step more. decrypt selects the direction. dst and src have equal lengths, a whole
// number of units, and overlap exactly or not at all.
//
// Per unit it makes one tweak-key AES call; then, 512 bytes at a time, it derives the block
// tweaks in one pass into a stack buffer and makes three passes over the piece: XOR the
// tweaks in (crypto/subtle, vectorised), run the block cipher over each block in place in
// dst, XOR the tweaks out. The tweak buffer is never handed to the cipher.Block interface, so
// it stays on the stack and nothing is allocated.
func xtsGeneric(data, tweak cipher.Block, dst, src []byte, unit int, seq, step uint64, decrypt bool) {
	// Tweaks are made 32 at a time (512 bytes), so a small sector does not pay for zeroing
	// and filling a whole 4096-byte tweak buffer.
	var tw [512]byte
	for len(src) > 0 {
		d, s := dst[:unit:unit], src[:unit:unit]

		// Encrypt the tweak using d's first block as scratch. d and s may be the same
		// memory, so keep s's first block in registers first.
		s0, s1 := binary.LittleEndian.Uint64(s[0:8]), binary.LittleEndian.Uint64(s[8:16])
		binary.LittleEndian.PutUint64(d[0:8], seq)
		binary.LittleEndian.PutUint64(d[8:16], 0)
		tweak.Encrypt(d[:16], d[:16])
		lo, hi := binary.LittleEndian.Uint64(d[0:8]), binary.LittleEndian.Uint64(d[8:16])

		for off := 0; off < unit; off += len(tw) {
			n := min(len(tw), unit-off)
			t := tw[:n:n]
			// The block tweaks: T(j+1) = T(j)·α in GF(2^128), with the IEEE 1619
			// little-endian bit order (reduction polynomial x^128 + x^7 + x^2 + x + 1).
			for b := 0; b < n; b += 16 {
				binary.LittleEndian.PutUint64(t[b:], lo)
				binary.LittleEndian.PutUint64(t[b+8:], hi)
				carry := hi >> 63
				hi = hi<<1 | lo>>63
				lo = lo<<1 ^ (0x87 & -carry)
			}
			dd, ss := d[off:off+n:off+n], s[off:off+n:off+n]

			// Whitening in; block 0 of s may have been overwritten by the scratch use.
			subtle.XORBytes(dd, ss, t)
			if off == 0 {
				binary.LittleEndian.PutUint64(dd[0:8], s0^binary.LittleEndian.Uint64(t[0:8]))
				binary.LittleEndian.PutUint64(dd[8:16], s1^binary.LittleEndian.Uint64(t[8:16]))
			}

			// The block cipher over every block, in place.
			if decrypt {
				for b := 0; b < n; b += 16 {
					blk := dd[b : b+16 : b+16]
					data.Decrypt(blk, blk)
				}
			} else {
				for b := 0; b < n; b += 16 {
					blk := dd[b : b+16 : b+16]
					data.Encrypt(blk, blk)
				}
			}

			// Whitening out.
			subtle.XORBytes(dd, dd, t)
		}

		dst, src = dst[unit:], src[unit:]
		seq += step
	}
}
