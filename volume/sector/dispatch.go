package sector

func (c *Cipher) encrypt(dst, src []byte, firstSector uint64) {
	if c.path == PathGeneric {
		xtsGeneric(c.data, c.tweak, dst, src, c.size, firstSector, c.step, false)
		return
	}
	c.xtsAsm(dst, src, firstSector, false)
}

func (c *Cipher) decrypt(dst, src []byte, firstSector uint64) {
	if c.path == PathGeneric {
		xtsGeneric(c.data, c.tweak, dst, src, c.size, firstSector, c.step, true)
		return
	}
	c.xtsAsm(dst, src, firstSector, true)
}
