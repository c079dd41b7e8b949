//go:build !amd64 || !gc || purego

package sector

// available lists the implementations this build can run: only the portable one.
func available() []Path { return []Path{PathGeneric} }

// setKeys sets up the portable path's ciphers, the only ones in this build.
func (c *Cipher) setKeys(dataKey, tweakKey []byte) error {
	return c.setGenericKeys(dataKey, tweakKey)
}

// xts runs the portable implementation, the only one in this build, over whole units of
// c.size bytes.
func (c *Cipher) xts(dst, src []byte, seq uint64, decrypt bool) {
	xtsGeneric(c.data, c.tweak, dst, src, c.size, seq, c.step, decrypt)
}

// ceilingFor reports that no path of this build has a ceiling loop.
func ceilingFor(Path) (loop func(iterations int), bytesPerIteration int) { return nil, 0 }
