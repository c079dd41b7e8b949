//go:build !amd64 || purego

package sector

// available lists the implementations this build can run: only the portable one.
func available() []Path { return []Path{PathGeneric} }

// xts runs the portable implementation, the only one in this build, over whole units of
// c.size bytes.
func (c *Cipher) xts(dst, src []byte, seq uint64, decrypt bool) {
	xtsGeneric(c.data, c.tweak, dst, src, c.size, seq, c.step, decrypt)
}
