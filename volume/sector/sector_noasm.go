package sector

// The dispatch point for the sector engine. An architecture-specific implementation slots in
// by giving this file the constraint "!amd64 || purego" and providing encrypt and decrypt in a
// "amd64 && !purego" pair of files; until then every build runs the portable code.

func (c *Cipher) encrypt(dst, src []byte, firstSector uint64) {
	xtsGeneric(c.data, c.tweak, dst, src, c.size, firstSector, c.step, false)
}

func (c *Cipher) decrypt(dst, src []byte, firstSector uint64) {
	xtsGeneric(c.data, c.tweak, dst, src, c.size, firstSector, c.step, true)
}
