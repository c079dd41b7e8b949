//go:build !amd64 || purego

package sector

// available lists the implementations this build can run: only the portable one.
func available() []Path { return []Path{PathGeneric} }

// xtsAsm is never reached: available offers no assembly path in this build.
func (c *Cipher) xtsAsm(dst, src []byte, seq uint64, decrypt bool) {
	xtsGeneric(c.data, c.tweak, dst, src, c.size, seq, c.step, decrypt)
}
