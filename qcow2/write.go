package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// WriteOptions configure [Write].
type WriteOptions struct {
	// Size is the guest's virtual size in bytes: required, a multiple of 512.
	Size int64
	// ClusterSize is the cluster size in bytes, a power of two from 512 to 2 MiB; 0 means
	// 65536, QEMU's default.
	ClusterSize int
	// EncryptionHeader is the LUKS1 header area (from keyslot.FormatLUKS1) to store in the
	// image's full disk encryption header clusters; nil writes an unencrypted image.
	EncryptionHeader []byte
	// Cipher encrypts the data clusters: required if and only if EncryptionHeader is set,
	// with the master key that header holds and 512-byte sectors.
	Cipher SectorCipher
	// Progress, if set, is called from Write's goroutine as guest bytes are processed,
	// with done from 0 to total (= Size).
	Progress func(done, total int64)
}

// WriteStats describe what [Write] wrote.
type WriteStats struct {
	DataClusters int64 // guest clusters stored (the rest read as zeros)
	FileSize     int64 // bytes of the image file
}

// progressStep is how many guest bytes Write processes between two Progress calls at most.
const progressStep = 4 << 20

// Write writes a qcow2 version 3 image of src's first opts.Size bytes to dst, which must be
// empty. Only the clusters that overlap a Data extent of extents (nil means all of src) and
// are not all zeros are stored; parts of a stored cluster outside every Data extent are
// written as zeros, as the extents say they read. Extents must be in order and must not
// overlap; the parts beyond Size are ignored.
//
// The image is laid out as QEMU reads it best and checks it clean (`qemu-img check`): the
// header cluster, the LUKS header clusters (encrypted images), the L1 table, then each L2
// table after the data clusters it maps, then the refcount blocks and table, which count
// every cluster of the file exactly once (16-bit refcounts). Data clusters of an encrypted
// image are encrypted sector by sector with the host offset / 512 as tweak, as QEMU does.
// The header is written last, so an interrupted Write leaves a file without a valid header;
// callers write to a temporary file and rename it.
func Write(ctx context.Context, dst io.WriterAt, src io.ReaderAt, extents []Extent, opts WriteOptions) (WriteStats, error) {
	w, err := newWriter(dst, src, opts)
	if err != nil {
		return WriteStats{}, err
	}
	if extents == nil {
		extents = []Extent{{Offset: 0, Length: opts.Size, Data: true}}
	}
	if err := checkExtents(extents); err != nil {
		return WriteStats{}, err
	}
	return w.run(ctx, extents)
}

// writer holds the state of one Write.
type writer struct {
	dst  io.WriterAt
	src  io.ReaderAt
	opts WriteOptions

	size        uint64
	clusterBits uint
	cs          uint64
	l2Entries   uint64
	encClusters uint64 // clusters of the LUKS header area
	l1Offset    uint64
	l1          []uint64
	next        uint64 // next free host cluster index

	l2    []uint64 // the L2 table being filled
	l2Idx uint64   // its L1 index
	l2Any bool     // it has an entry

	buf    []byte // one cluster of data
	zeros  []byte // one cluster of zeros
	stats  WriteStats
	lastPr uint64
}

func newWriter(dst io.WriterAt, src io.ReaderAt, opts WriteOptions) (*writer, error) {
	if dst == nil || src == nil {
		return nil, errors.New("qcow2: Write: nil dst or src")
	}
	if opts.Size <= 0 || opts.Size%512 != 0 {
		return nil, fmt.Errorf("qcow2: Write: size %d must be a positive multiple of 512", opts.Size)
	}
	if opts.ClusterSize == 0 {
		opts.ClusterSize = 65536
	}
	cs := opts.ClusterSize
	if cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("qcow2: Write: cluster size %d must be a power of two from 512 to 2 MiB", cs)
	}
	if (opts.EncryptionHeader == nil) != (opts.Cipher == nil) {
		return nil, errors.New("qcow2: Write: EncryptionHeader and Cipher go together")
	}
	if opts.EncryptionHeader != nil && len(opts.EncryptionHeader) == 0 {
		return nil, errors.New("qcow2: Write: empty EncryptionHeader")
	}
	w := &writer{
		dst:         dst,
		src:         src,
		opts:        opts,
		size:        uint64(opts.Size),
		clusterBits: uint(bits.TrailingZeros(uint(cs))),
		cs:          uint64(cs),
		l2Entries:   uint64(cs) / 8,
	}
	clusters := (w.size + w.cs - 1) >> w.clusterBits
	l1Size := (clusters + w.l2Entries - 1) / w.l2Entries
	if l1Size*8 > maxL1Bytes {
		return nil, fmt.Errorf("qcow2: Write: size %d needs an L1 table of %d entries, over QEMU's limit of %d: use larger clusters", opts.Size, l1Size, maxL1Bytes/8)
	}
	w.l1 = make([]uint64, l1Size)
	w.encClusters = (uint64(len(opts.EncryptionHeader)) + w.cs - 1) >> w.clusterBits
	w.l1Offset = (1 + w.encClusters) << w.clusterBits
	w.next = 1 + w.encClusters + ((l1Size*8 + w.cs - 1) >> w.clusterBits)
	return w, nil
}

// checkExtents checks that extents are in order and do not overlap.
func checkExtents(extents []Extent) error {
	var end int64
	for i, e := range extents {
		if e.Offset < 0 || e.Length < 0 || e.Offset > 1<<62 || e.Length > 1<<62 {
			return fmt.Errorf("qcow2: Write: extent %d (%d+%d) out of range", i, e.Offset, e.Length)
		}
		if e.Offset < end {
			return fmt.Errorf("qcow2: Write: extent %d at %d overlaps or precedes the one before it (ending at %d)", i, e.Offset, end)
		}
		end = e.Offset + e.Length
	}
	return nil
}

func (w *writer) run(ctx context.Context, extents []Extent) (WriteStats, error) {
	if h := w.opts.EncryptionHeader; h != nil {
		if err := w.writeAt(padCluster(h, w.cs), w.cs); err != nil {
			return WriteStats{}, err
		}
	}
	w.buf = make([]byte, w.cs)
	w.zeros = make([]byte, w.cs)
	w.l2 = make([]uint64, w.l2Entries)
	w.progress(0)

	// Walk the clusters that Data extents touch, in order, each once.
	var data []Extent
	for _, e := range extents {
		if e.Data && e.Length > 0 && uint64(e.Offset) < w.size {
			e.Length = int64(min(uint64(e.Length), w.size-uint64(e.Offset)))
			data = append(data, e)
		}
	}
	nextGC := uint64(0) // the first guest cluster not yet done
	for i := 0; i < len(data); {
		gc := max(uint64(data[i].Offset)>>w.clusterBits, nextGC)
		cstart := gc << w.clusterBits
		if cstart >= uint64(data[i].Offset+data[i].Length) {
			i++
			continue
		}
		if err := ctx.Err(); err != nil {
			return WriteStats{}, err
		}
		// Fill the cluster from every Data extent that overlaps it.
		cend := min(cstart+w.cs, w.size)
		clear(w.buf)
		for j := i; j < len(data) && uint64(data[j].Offset) < cend; j++ {
			a := max(uint64(data[j].Offset), cstart)
			b := min(uint64(data[j].Offset+data[j].Length), cend)
			if a >= b {
				continue
			}
			if err := readFull(w.src, w.buf[a-cstart:b-cstart], a); err != nil {
				return WriteStats{}, fmt.Errorf("qcow2: Write: reading the source at %d: %w", a, err)
			}
		}
		if err := w.store(gc); err != nil {
			return WriteStats{}, err
		}
		nextGC = gc + 1
		w.progress(cend)
	}
	if err := w.flushL2(); err != nil {
		return WriteStats{}, err
	}
	if err := w.finish(); err != nil {
		return WriteStats{}, err
	}
	w.progress(w.size)
	return w.stats, nil
}

// store writes the cluster in w.buf as guest cluster gc, unless it is all zeros.
func (w *writer) store(gc uint64) error {
	l1i := gc / w.l2Entries
	if l1i != w.l2Idx {
		if err := w.flushL2(); err != nil {
			return err
		}
		w.l2Idx = l1i
	}
	if bytes.Equal(w.buf, w.zeros) {
		return nil
	}
	host := w.next << w.clusterBits
	if w.opts.Cipher != nil {
		w.opts.Cipher.EncryptSectors(w.buf, w.buf, host/sectorSize)
	}
	if err := w.writeAt(w.buf, host); err != nil {
		return err
	}
	w.next++
	w.l2[gc%w.l2Entries] = host | flagCopied
	w.l2Any = true
	w.stats.DataClusters++
	return nil
}

// flushL2 writes the current L2 table, if it maps anything, after the data it maps.
func (w *writer) flushL2() error {
	if !w.l2Any {
		return nil
	}
	host := w.next << w.clusterBits
	if err := w.writeAt(encodeTable(w.l2, w.cs), host); err != nil {
		return err
	}
	w.next++
	w.l1[w.l2Idx] = host | flagCopied
	clear(w.l2)
	w.l2Any = false
	return nil
}

// finish writes the refcount blocks and table, the L1 table and, last, the header.
func (w *writer) finish() error {
	// Refcount blocks and table go at the end and count themselves: find the smallest
	// sizes that cover every cluster, theirs included.
	perBlock := w.cs * 8 / 16 // 16-bit refcounts
	perTable := w.cs / 8
	base := w.next
	var blocks, tableClusters uint64
	for {
		total := base + blocks + tableClusters
		b := (total + perBlock - 1) / perBlock
		t := (b + perTable - 1) / perTable
		if b == blocks && t == tableClusters {
			break
		}
		blocks, tableClusters = b, t
	}
	if tableClusters*w.cs > maxRefTableBytes {
		return fmt.Errorf("qcow2: Write: refcount table of %d clusters exceeds QEMU's limit", tableClusters)
	}
	total := base + blocks + tableClusters
	block := make([]byte, w.cs)
	table := make([]uint64, tableClusters*perTable)
	for k := uint64(0); k < blocks; k++ {
		clear(block)
		for c := k * perBlock; c < min((k+1)*perBlock, total); c++ {
			binary.BigEndian.PutUint16(block[(c-k*perBlock)*2:], 1)
		}
		host := (base + k) << w.clusterBits
		if err := w.writeAt(block, host); err != nil {
			return err
		}
		table[k] = host
	}
	refTableOffset := (base + blocks) << w.clusterBits
	if err := w.writeAt(encodeTable(table, tableClusters*w.cs), refTableOffset); err != nil {
		return err
	}
	if err := w.writeAt(encodeTable(w.l1, roundUp(uint64(len(w.l1))*8, w.cs)), w.l1Offset); err != nil {
		return err
	}

	hdr := make([]byte, w.cs)
	be := binary.BigEndian
	copy(hdr, "QFI\xfb")
	be.PutUint32(hdr[4:], 3)
	be.PutUint32(hdr[20:], uint32(w.clusterBits))
	be.PutUint64(hdr[24:], w.size)
	if w.opts.EncryptionHeader != nil {
		be.PutUint32(hdr[32:], cryptLUKS)
	}
	be.PutUint32(hdr[36:], uint32(len(w.l1)))
	be.PutUint64(hdr[40:], w.l1Offset)
	be.PutUint64(hdr[48:], refTableOffset)
	be.PutUint32(hdr[56:], uint32(tableClusters))
	be.PutUint32(hdr[96:], 4) // refcount_order: 16-bit refcounts
	be.PutUint32(hdr[100:], ourHeaderLength)
	// hdr[104], compression_type, stays 0: zlib (nothing is compressed).
	ext := hdr[ourHeaderLength:]
	if h := w.opts.EncryptionHeader; h != nil {
		be.PutUint32(ext[0:], extEncryption)
		be.PutUint32(ext[4:], 16)
		be.PutUint64(ext[8:], w.cs) // the LUKS area starts at cluster 1
		be.PutUint64(ext[16:], uint64(len(h)))
		ext = ext[24:]
	}
	// ext[0:8] stays zero: the end of the header extensions.
	if err := w.writeAt(hdr, 0); err != nil {
		return err
	}
	w.stats.FileSize = int64(total << w.clusterBits)
	return nil
}

// writeAt writes p at off of the destination.
func (w *writer) writeAt(p []byte, off uint64) error {
	if _, err := w.dst.WriteAt(p, int64(off)); err != nil {
		return fmt.Errorf("qcow2: Write: writing %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}

// progress reports done guest bytes, at most every progressStep bytes and at the end.
func (w *writer) progress(done uint64) {
	if w.opts.Progress == nil {
		return
	}
	if done != 0 && done != w.size && done-w.lastPr < progressStep {
		return
	}
	w.lastPr = done
	w.opts.Progress(int64(done), int64(w.size))
}

// encodeTable returns t big-endian in a buffer of n bytes (n >= 8*len(t)).
func encodeTable(t []uint64, n uint64) []byte {
	b := make([]byte, n)
	for i, e := range t {
		binary.BigEndian.PutUint64(b[i*8:], e)
	}
	return b
}

// padCluster returns p padded with zeros to a whole number of clusters.
func padCluster(p []byte, cs uint64) []byte {
	n := roundUp(uint64(len(p)), cs)
	if uint64(len(p)) == n {
		return p
	}
	b := make([]byte, n)
	copy(b, p)
	return b
}
