package qcow2

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"sync"
)

// SectorCipher is the aes-xts-plain64 engine of an encrypted image; *sector.Cipher (with
// 512-byte sectors) satisfies it. The sector numbers passed are HOST offsets / 512: inside
// qcow2, QEMU's LUKS tweaks each 512-byte sector with its position in the image file, not
// in the guest disk.
type SectorCipher interface {
	EncryptSectors(dst, src []byte, firstSector uint64)
	DecryptSectors(dst, src []byte, firstSector uint64)
}

// sectorSize is the LUKS sector size inside qcow2, and the unit of its tweak.
const sectorSize = 512

// Reader returns an io.ReaderAt over the guest's plaintext. c must be non-nil if and only if
// the image is [Image.Encrypted]. Unallocated and zero clusters read as zeros; compressed
// clusters (unencrypted images only) are inflated. ReadAt returns io.EOF at and past the
// virtual size, and errors wrapping [ErrFormat] or [ErrUnsupported] for entries found
// malformed or unsupported when first read. The reader is safe for concurrent use.
func (img *Image) Reader(c SectorCipher) (io.ReaderAt, error) {
	switch {
	case img.Encrypted() && c == nil:
		return nil, errors.New("qcow2: the image is encrypted: Reader needs its cipher")
	case !img.Encrypted() && c != nil:
		return nil, errors.New("qcow2: the image is not encrypted: Reader takes no cipher")
	}
	return &reader{img: img, c: c}, nil
}

type reader struct {
	img *Image
	c   SectorCipher
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	img := r.img
	if off < 0 {
		return 0, fmt.Errorf("qcow2: ReadAt: negative offset %d", off)
	}
	size := int64(img.h.size)
	if off >= size {
		return 0, io.EOF
	}
	n := len(p)
	var eof error
	if int64(n) > size-off {
		n = int(size - off)
		eof = io.EOF
	}
	cs := img.clusterSize
	for done := 0; done < n; {
		pos := uint64(off) + uint64(done)
		in := pos & (cs - 1)
		chunk := int(min(cs-in, uint64(n-done)))
		dst := p[done : done+chunk]
		m, err := img.lookup(pos >> img.clusterBits)
		if err != nil {
			return done, err
		}
		switch m.kind {
		case unallocated, zeroCluster:
			clear(dst)
		case dataCluster:
			// Clusters that follow each other in the file too are read (and decrypted)
			// in one go; a lookup that fails ends the run and fails on the next turn.
			for done+chunk < n {
				next, err := img.lookup((pos + uint64(chunk)) >> img.clusterBits)
				if err != nil || next.kind != dataCluster || next.host != m.host+in+uint64(chunk) {
					break
				}
				chunk += int(min(cs, uint64(n-done-chunk)))
			}
			dst = p[done : done+chunk]
			if err := r.readData(dst, m.host, in); err != nil {
				return done, fmt.Errorf("%w: guest offset %#x: reading host cluster %#x: %w", ErrFormat, pos, m.host, err)
			}
		case compressed:
			if err := img.readCompressed(dst, m, in, pos); err != nil {
				return done, err
			}
		}
		done += chunk
	}
	return n, eof
}

// readData reads dst from the data cluster at host, starting in bytes into it, decrypting
// whole sectors when the image is encrypted.
func (r *reader) readData(dst []byte, host, in uint64) error {
	if r.c == nil {
		return readFull(r.img.r, dst, host+in)
	}
	start := in &^ (sectorSize - 1)
	end := roundUp(in+uint64(len(dst)), sectorSize)
	if start == in && end == in+uint64(len(dst)) {
		if err := readFull(r.img.r, dst, host+in); err != nil {
			return err
		}
		r.c.DecryptSectors(dst, dst, (host+in)/sectorSize)
		return nil
	}
	buf := make([]byte, end-start)
	if err := readFull(r.img.r, buf, host+start); err != nil {
		return err
	}
	r.c.DecryptSectors(buf, buf, (host+start)/sectorSize)
	copy(dst, buf[in-start:])
	return nil
}

// readCompressed inflates the compressed cluster m and copies into dst the part starting in
// bytes into the cluster. pos is the guest offset, for messages.
func (img *Image) readCompressed(dst []byte, m mapping, in, pos uint64) error {
	cluster, err := img.inflate(m)
	if err != nil {
		return fmt.Errorf("%w: guest offset %#x: compressed cluster at %#x: %w", ErrFormat, pos, m.host, err)
	}
	copy(dst, cluster[in:])
	return nil
}

// inflaters recycles raw-deflate readers, whose window costs 32 KiB or more each.
var inflaters sync.Pool

// inflate reads the m.n bytes of compressed data and inflates them into one cluster: qcow2
// stores compressed clusters as raw deflate (zlib without its header), and decompression
// stops when it has produced a whole cluster.
func (img *Image) inflate(m mapping) ([]byte, error) {
	src := make([]byte, m.n)
	if err := readFull(img.r, src, m.host); err != nil {
		return nil, err
	}
	fr, _ := inflaters.Get().(io.ReadCloser)
	if fr == nil {
		fr = flate.NewReader(bytes.NewReader(src))
	} else if err := fr.(flate.Resetter).Reset(bytes.NewReader(src), nil); err != nil {
		return nil, err
	}
	defer inflaters.Put(fr)
	out := make([]byte, img.clusterSize)
	if _, err := io.ReadFull(fr, out); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("inflates to less than a %d-byte cluster", img.clusterSize)
		}
		return nil, fmt.Errorf("inflating: %w", err)
	}
	return out, nil
}
