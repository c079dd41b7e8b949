package sector_test

import (
	"bytes"
	"crypto/rand"
	"fmt"

	"crkvol/sector"
)

// A 4096-byte-sector volume: the sector at byte offset 8192 of the segment is 512-byte
// sector 16, and that is the number EncryptSectors takes.
func Example() {
	key := make([]byte, 64) // AES-256-XTS, as LUKS2 uses by default
	if _, err := rand.Read(key); err != nil {
		panic(err)
	}
	c, err := sector.New(key, 4096)
	if err != nil {
		panic(err)
	}
	plain := bytes.Repeat([]byte("crkvol"), 2*4096/6+1)[:2*4096]
	buf := bytes.Clone(plain)

	first := c.SectorOf(8192)
	c.EncryptSectors(buf, buf, first) // in place, two sectors: tweaks 16 and 24
	c.DecryptSectors(buf, buf, first)
	fmt.Println(first, bytes.Equal(buf, plain))
	// Output: 16 true
}
