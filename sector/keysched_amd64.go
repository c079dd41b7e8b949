//go:build gc && !purego

package sector

import (
	"encoding/binary"
	"unsafe"
)

// expand computes the schedule of a 16- or 32-byte AES key (FIPS-197 section 5.2), the
// length New has checked, with AES-NI (expandKey128, expandKey256 in xts_amd64.s): no table
// lookup indexed by key bytes, and the routine clears the vector registers that held key
// material. There is no other scratch: the round keys are written straight into s.
func (s *schedule) expand(key []byte) {
	if len(key) == 16 {
		s.rounds = 10
		expandKey128(&key[0], &s.enc[0], &s.dec[0])
		return
	}
	_ = key[31] // New passes 16 or 32 bytes
	s.rounds = 14
	expandKey256(&key[0], &s.enc[0], &s.dec[0])
}

// broadcastRounds writes each 16-byte round key of keys four times into dst.
func broadcastRounds(dst, keys []byte) {
	for r := range len(keys) / 16 {
		for l := range 4 {
			copy(dst[64*r+16*l:64*r+16*l+16], keys[16*r:16*r+16])
		}
	}
}

// setKeys sets up c's keys for its path from the two XTS key halves: crypto/aes ciphers for
// PathGeneric, the AES-NI schedules (and, for PathVAES, their broadcast copies and the lane
// offsets) for the assembly paths.
func (c *Cipher) setKeys(dataKey, tweakKey []byte) error {
	if c.path == PathGeneric {
		return c.setGenericKeys(dataKey, tweakKey)
	}
	c.k1.expand(dataKey)
	c.k2.expand(tweakKey)
	if c.path == PathVAES {
		c.wideOff = int(-uintptr(unsafe.Pointer(&c.wide[0])) & 63)
		w := c.wide[c.wideOff:]
		broadcastRounds(w[:wideKeys], c.k1.enc[:])
		broadcastRounds(w[wideKeys:2*wideKeys], c.k1.dec[:])
		broadcastRounds(w[2*wideKeys:3*wideKeys], c.k2.enc[:])
	}
	for j := range 4 {
		binary.LittleEndian.PutUint64(c.laneOffs[16*j:], uint64(j)*c.step)
	}
	binary.LittleEndian.PutUint64(c.laneOffs[64:], 4*c.step)
	return nil
}
