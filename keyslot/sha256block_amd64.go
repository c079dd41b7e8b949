//go:build gc && !purego

package keyslot

import "golang.org/x/sys/cpu"

// sha256BlockSHANI runs the SHA-256 compression function over each whole 64-byte block of p,
// updating dig: Go's own SHA-NI block function (sha256block_amd64.s). It needs AVX, SHA,
// SSE4.1 and SSSE3.
//
//go:noescape
func sha256BlockSHANI(dig *[8]uint32, p []byte)

// cpuid executes CPUID with EAX=leaf and ECX=sub.
func cpuid(leaf, sub uint32) (a, b, c, d uint32)

// hasSHANI reports whether the CPU has the SHA extensions and what else sha256BlockSHANI
// needs: then the key derivation and AF diffusion with SHA-256 use sha256Blocks directly
// (see pbkdf2SHA256 and diffuser), one compression per block with no per-call overhead.
var hasSHANI = func() bool {
	if !cpu.X86.HasAVX || !cpu.X86.HasSSE41 || !cpu.X86.HasSSSE3 {
		return false
	}
	if maxLeaf, _, _, _ := cpuid(0, 0); maxLeaf < 7 {
		return false
	}
	_, ebx, _, _ := cpuid(7, 0)
	return ebx&(1<<29) != 0 // CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29]
}()

// sha256Blocks runs the SHA-256 compression function over each whole 64-byte block of p.
func sha256Blocks(dig *[8]uint32, p []byte) {
	if hasSHANI {
		sha256BlockSHANI(dig, p)
		return
	}
	sha256BlocksGeneric(dig, p)
}
