package keyslot

import (
	"testing"
)

// BenchmarkUnlock measures unlocking a keyslot with pbkdf2-sha256 at 1000 iterations, the
// setting used for random, high-entropy passphrases: KDF, reading and decrypting the 256000
// bytes of keyslot material, AF merge over 4000 stripes, and the digest check.
func BenchmarkUnlock(b *testing.B) {
	_, img, vk := newMemImage(b, "bench passphrase")
	b.ReportAllocs()
	b.SetBytes(int64(afSize(len(vk))))
	for b.Loop() {
		key, _, err := img.Unlock([]byte("bench passphrase"), AnyKeyslot)
		if err != nil {
			b.Fatal(err)
		}
		clear(key)
	}
}

// BenchmarkTokenUpdate measures one atomic token replacement: read both copies, validate,
// write both copies.
func BenchmarkTokenUpdate(b *testing.B) {
	_, img, _ := newMemImage(b, "p")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"AAAA"}`))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := img.ReplaceToken(id, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"BBBB"}`)); err != nil {
			b.Fatal(err)
		}
	}
}
