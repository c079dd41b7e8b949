package keyslot

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
)

// The anti-forensic (AF) splitter of LUKS (lib/luks1/af.c in cryptsetup). A key of n bytes is
// expanded to stripes × n bytes such that losing any part of the expansion makes the key
// unrecoverable; LUKS2 always uses 4000 stripes.

// afSize returns the bytes of split key material for a key of keySize bytes, rounded up to
// whole 512-byte sectors: what a keyslot reads and writes of its area.
func afSize(keySize int) uint64 {
	n := uint64(keySize) * afStripes
	return (n + 511) / 512 * 512
}

// afAreaSize returns the size cryptsetup allocates for a keyslot area: the split material
// rounded up to 4096 bytes (258048 for a 64-byte key).
func afAreaSize(keySize int) uint64 {
	n := uint64(keySize) * afStripes
	return (n + 4095) / 4096 * 4096
}

// diffuser computes the AF diffusion function with one hash instance and scratch space, so
// the 3999 rounds of a merge or split allocate nothing.
type diffuser struct {
	h      hashInfo
	hh     hash.Hash
	sum    []byte
	sha256 bool
	blocks bool // sha256 through sha256Blocks: one compression per hash (see hasSHANI)
	in     [4 + sha256.Size]byte
	blk    [64]byte
	blk2   [64]byte
}

func newDiffuser(h hashInfo) *diffuser {
	return newDiffuserWith(h, hasSHANI)
}

// newDiffuserWith is newDiffuser, hashing sha256 through sha256Blocks when blocks is true
// (tests compare both ways).
func newDiffuserWith(h hashInfo, blocks bool) *diffuser {
	d := &diffuser{h: h, sum: make([]byte, 0, h.size)}
	if h.size == sha256.Size && h.isSHA256 {
		d.sha256 = true
		d.blocks = blocks
	} else {
		d.hh = h.new()
	}
	return d
}

// wipe clears the scratch space, which held key-derived material.
func (d *diffuser) wipe() {
	clear(d.in[:])
	clear(d.blk[:])
	clear(d.blk2[:])
	clear(d.sum[:cap(d.sum)])
	if d.hh != nil {
		d.hh.Reset()
	}
}

// diffuse replaces buf with its diffusion: each hash-sized block i becomes the first
// len(block) bytes of H(BE32(i) || block).
func (d *diffuser) diffuse(buf []byte) {
	size := d.h.size
	for i, off := uint32(0), 0; off < len(buf); i, off = i+1, off+size {
		end := min(off+size, len(buf))
		if d.blocks {
			// H(BE32(i) || block) is one 64-byte SHA-256 block (at most 36 bytes of
			// message): one compression from the initial value; two blocks' compressions
			// at a time, interleaved.
			binary.BigEndian.PutUint32(d.blk[:4], i)
			n := loadBlock(&d.blk, buf[off:end])
			sha256Pad(&d.blk, 4+n, 0)
			st := sha256IV
			if end == len(buf) {
				sha256Blocks(&st, d.blk[:])
				sha256Put(buf[off:end], &st)
				continue
			}
			off2, end2 := end, min(end+size, len(buf))
			binary.BigEndian.PutUint32(d.blk2[:4], i+1)
			n2 := loadBlock(&d.blk2, buf[off2:end2])
			sha256Pad(&d.blk2, 4+n2, 0)
			st2 := sha256IV
			sha256Block2(&st, &st2, &d.blk, &d.blk2)
			sha256Put(buf[off:end], &st)
			sha256Put(buf[off2:end2], &st2)
			i, off = i+1, off+size
			continue
		}
		if d.sha256 {
			// The common case, without the hash.Hash interface.
			binary.BigEndian.PutUint32(d.in[:4], i)
			n := copy(d.in[4:], buf[off:end])
			sum := sha256.Sum256(d.in[:4+n])
			copy(buf[off:end], sum[:])
			continue
		}
		var iv [4]byte
		binary.BigEndian.PutUint32(iv[:], i)
		d.hh.Reset()
		d.hh.Write(iv[:])
		d.hh.Write(buf[off:end])
		d.sum = d.hh.Sum(d.sum[:0])
		copy(buf[off:end], d.sum)
	}
}

// loadBlock copies a block of at most 32 bytes after the 4-byte index in blk and returns its
// length: a whole block as one 32-byte move.
func loadBlock(blk *[64]byte, b []byte) int {
	if len(b) == 32 {
		*(*[32]byte)(blk[4:36]) = [32]byte(b)
		return 32
	}
	return copy(blk[4:], b)
}

// afMerge recovers a key of keySize bytes from stripes × keySize bytes of split material.
func afMerge(material []byte, keySize int, hashName string) ([]byte, error) {
	h, err := hashByName(hashName)
	if err != nil {
		return nil, err
	}
	if keySize <= 0 || len(material) < keySize*afStripes {
		return nil, fmt.Errorf("%w: %d bytes of AF material for a %d-byte key", ErrInvalidMetadata, len(material), keySize)
	}
	d := make([]byte, keySize)
	df := newDiffuser(h)
	defer df.wipe()
	for j := 0; j < afStripes-1; j++ {
		subtle.XORBytes(d, d, material[j*keySize:(j+1)*keySize])
		df.diffuse(d)
	}
	subtle.XORBytes(d, d, material[(afStripes-1)*keySize:afStripes*keySize])
	return d, nil
}

// afSplit expands key into stripes × len(key) bytes, drawing the random stripes from rand.
func afSplit(key []byte, hashName string, rand io.Reader) ([]byte, error) {
	h, err := hashByName(hashName)
	if err != nil {
		return nil, err
	}
	n := len(key)
	material := make([]byte, n*afStripes)
	if _, err := io.ReadFull(rand, material[:n*(afStripes-1)]); err != nil {
		return nil, fmt.Errorf("keyslot: reading random AF stripes: %w", err)
	}
	d := make([]byte, n)
	df := newDiffuser(h)
	defer df.wipe()
	for j := 0; j < afStripes-1; j++ {
		subtle.XORBytes(d, d, material[j*n:(j+1)*n])
		df.diffuse(d)
	}
	subtle.XORBytes(material[(afStripes-1)*n:], d, key)
	clear(d)
	return material, nil
}
