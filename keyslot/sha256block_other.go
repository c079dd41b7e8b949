//go:build !amd64 || !gc || purego

package keyslot

// hasSHANI is false without the amd64 assembly: the key derivation and AF diffusion use
// crypto/sha256 (and its own assembly, where the platform has one) through hash.Hash.
const hasSHANI = false

// sha256Blocks runs the SHA-256 compression function over each whole 64-byte block of p.
func sha256Blocks(dig *[8]uint32, p []byte) { sha256BlocksGeneric(dig, p) }

// sha256Block2 runs the compression function over the 64-byte block pa for state a and the
// block pb for state b.
func sha256Block2(a, b *[8]uint32, pa, pb *[64]byte) {
	sha256BlocksGeneric(a, pa[:])
	sha256BlocksGeneric(b, pb[:])
}
