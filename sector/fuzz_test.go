package sector

import (
	"bytes"
	"testing"
)

// FuzzSector compares EncryptSectors and DecryptSectors with golang.org/x/crypto/xts for
// arbitrary keys, sector sizes, sector numbers and data.
func FuzzSector(f *testing.F) {
	f.Add(bytes.Repeat([]byte{1, 2}, 32), uint8(0), uint64(0), make([]byte, 512), false)
	f.Add(bytes.Repeat([]byte{3, 4, 5, 6}, 8), uint8(3), uint64(8), make([]byte, 4096), true)
	f.Add(bytes.Repeat([]byte{9}, 64), uint8(1), ^uint64(0), make([]byte, 1024), false)
	f.Fuzz(func(t *testing.T, key []byte, sizeSel uint8, first uint64, data []byte, inPlace bool) {
		size := 512 << (sizeSel % 4)
		paths := Paths()
		c, err := NewPath(key, size, paths[int(sizeSel/4)%len(paths)])
		if err != nil {
			if c != nil {
				t.Fatal("New returned a Cipher with an error")
			}
			return
		}
		step := uint64(size / IVUnit)
		first -= first % step
		data = data[:len(data)/size*size]

		want := make([]byte, len(data))
		reference(t, key, size, want, data, first, false)
		got := make([]byte, len(data))
		if inPlace {
			copy(got, data)
			c.EncryptSectors(got, got, first)
		} else {
			c.EncryptSectors(got, data, first)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("encrypt differs from x/crypto/xts (key %d bytes, sector %d, first %d, %d bytes)", len(key), size, first, len(data))
		}
		plain := make([]byte, len(data))
		if inPlace {
			copy(plain, got)
			c.DecryptSectors(plain, plain, first)
		} else {
			c.DecryptSectors(plain, got, first)
		}
		if !bytes.Equal(plain, data) {
			t.Fatal("decrypt does not invert encrypt")
		}
	})
}
