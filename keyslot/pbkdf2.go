package keyslot

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"time"
)

// pbkdf2CheckEvery is how many PBKDF2 iterations run between looks at the context: about a
// millisecond of work with sha256, so a cancelled unlock stops at once.
const pbkdf2CheckEvery = 4096

// pbkdf2Derive is pbkdf2Key with the hash h, through pbkdf2SHA256 for sha256 on CPUs with the
// SHA extensions.
func pbkdf2Derive(ctx context.Context, password, salt []byte, iter, keyLen int, h hashInfo) ([]byte, error) {
	if h.isSHA256 && hasSHANI {
		return pbkdf2SHA256(ctx, password, salt, iter, keyLen)
	}
	return pbkdf2Key(ctx, password, salt, iter, keyLen, h.new)
}

// pbkdf2SHA256 is pbkdf2Key with sha256, computed on the compression function: the HMAC key's
// inner and outer padded blocks are hashed once, and every later HMAC of a 32-byte U is two
// compressions of preformatted blocks from those states (RFC 2104's precomputation), with
// no allocation per iteration. Output blocks are derived two at a time, their independent
// chains of compressions interleaved (sha256Block2).
func pbkdf2SHA256(ctx context.Context, password, salt []byte, iter, keyLen int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("keyslot: key derivation: %w", err)
	}
	var p pbkdf2State
	defer p.wipe()
	var key [64]byte
	if len(password) > len(key) {
		sum := sha256.Sum256(password)
		copy(key[:], sum[:])
		clear(sum[:])
	} else {
		copy(key[:], password)
	}
	p.inner, p.outer = sha256IV, sha256IV
	for i := range key {
		p.ib[0][i] = key[i] ^ 0x36
		p.ob[0][i] = key[i] ^ 0x5c
	}
	clear(key[:])
	sha256Block2(&p.inner, &p.outer, &p.ib[0], &p.ob[0])
	// ib[k] is the inner message U (32 bytes) padded, after the 64-byte key block; ob[k] the
	// outer one, the inner digest padded likewise.
	for k := range 2 {
		sha256Pad(&p.ib[k], sha256.Size, 64)
		sha256Pad(&p.ob[k], sha256.Size, 64)
	}

	numBlocks := (keyLen + sha256.Size - 1) / sha256.Size
	dk := make([]byte, numBlocks*sha256.Size)
	var msgBuf [64]byte
	msg := append(msgBuf[:0], salt...)
	msg = append(msg, 0, 0, 0, 0)
	defer clear(msg)
	for block := 1; block <= numBlocks; block += 2 {
		two := block < numBlocks
		// U_1 = HMAC(salt || INT(block)), for this block and the next.
		for k := range 2 {
			if k == 1 && !two {
				break
			}
			binary.BigEndian.PutUint32(msg[len(salt):], uint32(block+k))
			p.st[k] = p.inner
			sum := sha256Finish(&p.st[k], 64, msg)
			copy(p.ob[k][:sha256.Size], sum[:])
			clear(sum[:])
			p.st[k] = p.outer
			sha256Blocks(&p.st[k], p.ob[k][:])
			p.t[k] = p.st[k]
		}
		for n := 2; n <= iter; n++ {
			if n%pbkdf2CheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					clear(dk)
					return nil, fmt.Errorf("keyslot: key derivation: %w", err)
				}
			}
			// U_n = HMAC(U_{n-1}); st[k] holds U_{n-1}.
			if two {
				p.round2()
			} else {
				p.round1()
			}
		}
		for k := range 2 {
			if k == 1 && !two {
				break
			}
			sha256Put(dk[(block-1+k)*sha256.Size:], &p.t[k])
		}
	}
	clear(dk[keyLen:])
	return dk[:keyLen], nil
}

// pbkdf2State is the working state of pbkdf2SHA256 for up to two output blocks.
type pbkdf2State struct {
	inner, outer [8]uint32    // the HMAC key's inner and outer states
	ib, ob       [2][64]byte  // inner and outer message blocks, per output block
	st, t        [2][8]uint32 // U_n and T, per output block
}

func (p *pbkdf2State) wipe() { *p = pbkdf2State{} }

// round1 is one iteration for output block 0.
func (p *pbkdf2State) round1() {
	putWords(&p.ib[0], &p.st[0])
	p.st[0] = p.inner
	sha256Blocks(&p.st[0], p.ib[0][:])
	putWords(&p.ob[0], &p.st[0])
	p.st[0] = p.outer
	sha256Blocks(&p.st[0], p.ob[0][:])
	for i := range p.t[0] {
		p.t[0][i] ^= p.st[0][i]
	}
}

// round2 is one iteration for both output blocks, their compressions interleaved.
func (p *pbkdf2State) round2() {
	putWords(&p.ib[0], &p.st[0])
	putWords(&p.ib[1], &p.st[1])
	p.st[0], p.st[1] = p.inner, p.inner
	sha256Block2(&p.st[0], &p.st[1], &p.ib[0], &p.ib[1])
	putWords(&p.ob[0], &p.st[0])
	putWords(&p.ob[1], &p.st[1])
	p.st[0], p.st[1] = p.outer, p.outer
	sha256Block2(&p.st[0], &p.st[1], &p.ob[0], &p.ob[1])
	for i := range p.t[0] {
		p.t[0][i] ^= p.st[0][i]
		p.t[1][i] ^= p.st[1][i]
	}
}

// putWords writes the eight words of st big-endian into the first 32 bytes of blk.
func putWords(blk *[64]byte, st *[8]uint32) {
	for i, v := range st {
		binary.BigEndian.PutUint32(blk[4*i:], v)
	}
}

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
		key, err := pbkdf2Derive(ctx, pass, salt, n, keyBytes, h)
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
