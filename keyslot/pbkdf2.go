package keyslot

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"fmt"
	"hash"
	"time"
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

// PBKDF2Iterations returns how many PBKDF2 iterations with hash ("sha1", "sha256" or
// "sha512"), producing keyBytes bytes, take about d on this machine: the iteration time of
// cryptsetup's --iter-time and QEMU's encrypt.iter-time, which measure the same way (QEMU's
// default is 2 s, cryptsetup's for LUKS1 2 s too). Like theirs, it counts the CPU time of
// its thread (on Linux), so other work on a busy machine does not shrink the count, and the
// derivation takes about d when it has a core to itself. It measures derivations of growing
// iteration counts until one takes at least d/8 (at least 10 ms, at most 250 ms), so it
// costs up to about half a second itself, and scales. The result is at least
// MinPBKDF2Iterations and at most MaxPBKDF2Iterations (a LUKS1 header also needs it at most
// MaxLUKS1Iterations-1000, see [FormatLUKS1]). It stops with an error wrapping ctx.Err() when
// ctx ends.
func PBKDF2Iterations(ctx context.Context, hash string, keyBytes int, d time.Duration) (int, error) {
	h, err := hashByName(hash)
	if err != nil {
		return 0, fmt.Errorf("keyslot: PBKDF2 benchmark: %w", err)
	}
	if keyBytes < 1 || keyBytes > 1024 {
		return 0, fmt.Errorf("keyslot: PBKDF2 benchmark: key size %d bytes, want 1 to 1024", keyBytes)
	}
	if d <= 0 {
		return 0, fmt.Errorf("keyslot: PBKDF2 benchmark: iteration time %v, want more than 0", d)
	}
	target := min(max(d/8, 10*time.Millisecond), 250*time.Millisecond)
	pass := []byte("crkvol PBKDF2 benchmark passphrase")
	salt := make([]byte, saltSize)
	n := pbkdf2CheckEvery
	for {
		since, stop := threadCPUTimer()
		key, err := pbkdf2Key(ctx, pass, salt, n, keyBytes, h.new)
		elapsed := since()
		stop()
		if err != nil {
			return 0, err
		}
		clear(key)
		if elapsed >= target || n >= MaxPBKDF2Iterations/16 {
			iter := float64(n) * float64(d) / float64(max(elapsed, time.Microsecond))
			return int(min(max(iter, MinPBKDF2Iterations), MaxPBKDF2Iterations)), nil
		}
		// Aim past the target in one step when the last run was long enough to go by,
		// growing at most 16-fold at a time.
		grow := 16.0
		if elapsed > time.Millisecond {
			grow = min(max(1.25*float64(target)/float64(elapsed), 2), 16)
		}
		n = int(float64(n) * grow)
	}
}
