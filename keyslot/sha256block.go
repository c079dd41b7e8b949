package keyslot

import (
	"encoding/binary"
	"math/bits"
)

// SHA-256 (FIPS 180-4) at the level of its compression function, for the two places where
// the package hashes many tiny messages: PBKDF2-HMAC-SHA256 (two compressions per iteration,
// from the HMAC inner and outer states computed once) and the AF diffusion (one compression
// of a 36-byte message per 32 bytes of key per stripe). Through hash.Hash each of these costs
// as much again in bookkeeping (Reset, Write, Sum's copy of the state and padding) as the
// compression itself; here a message is one 64-byte block padded once, and a compression is
// one call. sha256Blocks is the SHA-NI instruction sequence of Go's crypto/sha256 where the
// CPU has it (see hasSHANI), else sha256BlocksGeneric; without SHA-NI the callers keep using
// crypto/sha256, whose own assembly (AVX2 on amd64, the SHA-2 instructions on arm64) beats
// sha256BlocksGeneric.

// sha256IV is the initial hash value H(0).
var sha256IV = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

var sha256K = [64]uint32{
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

// sha256BlocksGeneric is the compression function in Go (FIPS 180-4, section 6.2.2), over
// each whole 64-byte block of p.
func sha256BlocksGeneric(dig *[8]uint32, p []byte) {
	var w [64]uint32
	for ; len(p) >= 64; p = p[64:] {
		for i := range 16 {
			w[i] = binary.BigEndian.Uint32(p[4*i:])
		}
		for i := 16; i < 64; i++ {
			v1, v2 := w[i-2], w[i-15]
			s1 := bits.RotateLeft32(v1, -17) ^ bits.RotateLeft32(v1, -19) ^ v1>>10
			s0 := bits.RotateLeft32(v2, -7) ^ bits.RotateLeft32(v2, -18) ^ v2>>3
			w[i] = s1 + w[i-7] + s0 + w[i-16]
		}
		a, b, c, d, e, f, g, h := dig[0], dig[1], dig[2], dig[3], dig[4], dig[5], dig[6], dig[7]
		for i := range 64 {
			t1 := h + (bits.RotateLeft32(e, -6) ^ bits.RotateLeft32(e, -11) ^ bits.RotateLeft32(e, -25)) + (e&f ^ ^e&g) + sha256K[i] + w[i]
			t2 := (bits.RotateLeft32(a, -2) ^ bits.RotateLeft32(a, -13) ^ bits.RotateLeft32(a, -22)) + (a&b ^ a&c ^ b&c)
			h, g, f, e, d, c, b, a = g, f, e, d+t1, c, b, a, t1+t2
		}
		dig[0] += a
		dig[1] += b
		dig[2] += c
		dig[3] += d
		dig[4] += e
		dig[5] += f
		dig[6] += g
		dig[7] += h
	}
	clear(w[:])
}

// sha256Pad writes SHA-256's padding into the single block blk after its first n message
// bytes (n ≤ 55): 0x80, zeros, and the bit length of a message of prefix+n bytes, prefix
// being the bytes hashed in earlier blocks.
func sha256Pad(blk *[64]byte, n int, prefix uint64) {
	blk[n] = 0x80
	clear(blk[n+1 : 56])
	binary.BigEndian.PutUint64(blk[56:], (prefix+uint64(n))*8)
}

// sha256Put writes the digest of state dig (big-endian words) to out, up to len(out) ≤ 32
// bytes.
func sha256Put(out []byte, dig *[8]uint32) {
	if len(out) >= 32 {
		out = out[:32]
		for i, v := range dig {
			binary.BigEndian.PutUint32(out[4*i:], v)
		}
		return
	}
	var b [32]byte
	for i, v := range dig {
		binary.BigEndian.PutUint32(b[4*i:], v)
	}
	copy(out, b[:])
	clear(b[:])
}

// sha256Finish hashes msg from state dig, after prefix bytes (a multiple of 64) hashed into
// it already, and returns the digest. dig is left in an unspecified state.
func sha256Finish(dig *[8]uint32, prefix uint64, msg []byte) [32]byte {
	whole := len(msg) &^ 63
	sha256Blocks(dig, msg[:whole])
	var blk [128]byte
	n := copy(blk[:], msg[whole:])
	total := prefix + uint64(len(msg))
	blk[n] = 0x80
	end := 64
	if n >= 56 {
		end = 128
	}
	binary.BigEndian.PutUint64(blk[end-8:end], total*8)
	sha256Blocks(dig, blk[:end])
	clear(blk[:])
	var out [32]byte
	sha256Put(out[:], dig)
	return out
}
