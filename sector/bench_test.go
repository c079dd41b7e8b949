package sector

import (
	"crypto/aes"
	"fmt"
	"testing"

	"golang.org/x/crypto/xts"
)

var benchSizes = []int{512, 4096}

func benchKey() []byte {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i*7 + 1)
	}
	return key
}

func benchSector(b *testing.B, decrypt bool) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("sector=%d", size), func(b *testing.B) {
			benchOne(b, Paths()[0], size, decrypt)
		})
	}
}

// benchOne measures one sector per call, in place, on path.
func benchOne(b *testing.B, path Path, size int, decrypt bool) {
	c, err := NewPath(benchKey(), size, path)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	var s uint64
	for b.Loop() {
		if decrypt {
			c.DecryptSectors(buf, buf, s)
		} else {
			c.EncryptSectors(buf, buf, s)
		}
		s += c.step
	}
}

// BenchmarkEncrypt measures EncryptSectors on one sector per call (AES-256-XTS, in place).
func BenchmarkEncrypt(b *testing.B) { benchSector(b, false) }

// BenchmarkDecrypt measures DecryptSectors on one sector per call (AES-256-XTS, in place).
func BenchmarkDecrypt(b *testing.B) { benchSector(b, true) }

// BenchmarkXCryptoXTS is the in-run reference: golang.org/x/crypto/xts encrypting the same
// sectors with the same key, one sector per call. Compare Encrypt/sector=N against it.
func BenchmarkXCryptoXTS(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("sector=%d", size), func(b *testing.B) {
			c, err := xts.NewCipher(aes.NewCipher, benchKey())
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			var s uint64
			for b.Loop() {
				c.Encrypt(buf, buf, s)
				s += uint64(size / IVUnit)
			}
		})
	}
}

// BenchmarkPaths measures every implementation available here, encrypt and decrypt, one
// sector per call.
func BenchmarkPaths(b *testing.B) {
	for _, path := range Paths() {
		for _, dir := range []string{"encrypt", "decrypt"} {
			for _, size := range benchSizes {
				b.Run(fmt.Sprintf("path=%s/%s/sector=%d", path, dir, size), func(b *testing.B) {
					benchOne(b, path, size, dir == "decrypt")
				})
			}
		}
	}
}

// BenchmarkMultiSector measures 64 KiB calls (128 sectors of 512 bytes, or 16 of 4096) on the
// default path: the per-sector tweak work is batched.
func BenchmarkMultiSector(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("sector=%d/call=64KiB", size), func(b *testing.B) {
			c, err := New(benchKey(), size)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				c.EncryptSectors(buf, buf, 0)
			}
		})
	}
}

// BenchmarkCeiling runs each assembly path's ceiling loop (independent AES-256 rounds only,
// see CeilingLoop): MB/s here is the most the path could reach on this CPU; compare
// BenchmarkPaths against it.
func BenchmarkCeiling(b *testing.B) {
	for _, path := range Paths() {
		if _, err := CeilingLoop(path, 0); err != nil {
			continue
		}
		b.Run("path="+string(path), func(b *testing.B) {
			n, _ := CeilingLoop(path, 1)
			b.SetBytes(n * 64)
			for b.Loop() {
				if _, err := CeilingLoop(path, 64); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
