package keyslot

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"fmt"
	"hash"
)

// pbkdf2CheckEvery is how many PBKDF2 iterations run between looks at the context: about a
// millisecond of work with sha256, so a cancelled unlock stops at once.
const pbkdf2CheckEvery = 4096

// pbkdf2Key is PBKDF2 (RFC 8018, section 5.2) with HMAC over h, producing keyLen bytes, as
// golang.org/x/crypto/pbkdf2.Key does, except that it stops with an error wrapping ctx.Err()
// when ctx ends. A header may name up to MaxPBKDF2Iterations, minutes of work; the caller's
// context bounds it.
func pbkdf2Key(ctx context.Context, password, salt []byte, iter, keyLen int, h func() hash.Hash) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("keyslot: key derivation: %w", err)
	}
	prf := hmac.New(h, password)
	hashLen := prf.Size()
	numBlocks := (keyLen + hashLen - 1) / hashLen

	var ctr [4]byte
	dk := make([]byte, 0, numBlocks*hashLen)
	u := make([]byte, hashLen)
	defer clear(u)
	for block := 1; block <= numBlocks; block++ {
		// T_block = U_1 ^ U_2 ^ ... ^ U_iter, U_1 = PRF(password, salt || INT(block)),
		// U_n = PRF(password, U_{n-1}).
		prf.Reset()
		prf.Write(salt)
		binary.BigEndian.PutUint32(ctr[:], uint32(block))
		prf.Write(ctr[:])
		dk = prf.Sum(dk)
		t := dk[len(dk)-hashLen:]
		copy(u, t)
		for n := 2; n <= iter; n++ {
			if n%pbkdf2CheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					clear(dk[:cap(dk)])
					return nil, fmt.Errorf("keyslot: key derivation: %w", err)
				}
			}
			prf.Reset()
			prf.Write(u)
			u = prf.Sum(u[:0])
			for i := range u {
				t[i] ^= u[i]
			}
		}
	}
	out := dk[:keyLen]
	clear(dk[keyLen:cap(dk)])
	return out, nil
}
