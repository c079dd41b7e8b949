package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// ErrFormat is wrapped by every error about a file that is not a well-formed qcow2 image:
// bad magic, truncated tables, offsets outside the file, overlapping or misaligned tables,
// reserved bits set, corrupt compressed data, and read errors of the underlying file.
var ErrFormat = errors.New("qcow2: malformed image")

// ErrUnsupported is wrapped by every error about a well-formed image that uses a feature this
// package does not read: backing files, external data files, extended L2 entries, legacy AES
// encryption, compressed clusters in an encrypted image, zstd compression, a dirty image,
// unknown incompatible feature bits. The message names the feature.
var ErrUnsupported = errors.New("qcow2: unsupported feature")

// Options tune [Open].
type Options struct {
	// CacheClusters is how many L2 tables (one cluster each) the image keeps in memory at
	// most; 0 means 32. Each costs one cluster of memory.
	CacheClusters int
}

// defaultCacheClusters is Options.CacheClusters when it is 0.
const defaultCacheClusters = 32

// Image is an opened, validated qcow2 image. It is immutable after [Open] apart from its L2
// cache, and safe for concurrent use by multiple goroutines.
type Image struct {
	r           io.ReaderAt
	fileSize    uint64
	h           *header
	clusterBits uint
	clusterSize uint64
	l2Entries   uint64   // entries per L2 table: clusterSize / 8
	l1          []uint64 // the active L1 entries that map the virtual size
	meta        []region // metadata, sorted by start, none overlapping
	cache       *l2Cache
}

// region is a byte range [start, end) of the file that holds metadata.
type region struct {
	start, end uint64
	what       string
}

// Open reads and validates the qcow2 image held in the first size bytes of r. Every field
// of the header, every header extension, the active L1 table and the refcount table are
// checked before use: offsets aligned and inside the file, sizes bounded, tables not
// overlapping one another or the header. L2 tables are read and checked when first used.
// Images using a feature this package cannot read are refused with an error that wraps
// [ErrUnsupported] and names the feature; malformed images with one that wraps [ErrFormat].
//
// Internal snapshots are allowed and ignored: only the active L1 table is read. The image
// keeps r and reads from it for the life of the Image.
func Open(r io.ReaderAt, size int64, opts Options) (*Image, error) {
	if r == nil {
		return nil, errors.New("qcow2: Open: nil reader")
	}
	if size < 0 {
		return nil, fmt.Errorf("qcow2: Open: negative size %d", size)
	}
	if opts.CacheClusters < 0 {
		return nil, fmt.Errorf("qcow2: Open: negative CacheClusters %d", opts.CacheClusters)
	}
	if opts.CacheClusters == 0 {
		opts.CacheClusters = defaultCacheClusters
	}
	if size < v2HeaderLength {
		return nil, fmt.Errorf("%w: file of %d bytes is shorter than a qcow2 header (%d bytes)", ErrFormat, size, v2HeaderLength)
	}
	fileSize := uint64(size)
	first := make([]byte, v2HeaderLength)
	if err := readFull(r, first, 0); err != nil {
		return nil, fmt.Errorf("%w: reading the header: %w", ErrFormat, err)
	}
	// The header cluster holds the header and its extensions; read it whole (or the whole
	// file, when that is shorter) once cluster_bits is known to be sane.
	bitsField := binary.BigEndian.Uint32(first[20:])
	if binary.BigEndian.Uint32(first[0:]) == magic && bitsField >= minClusterBits && bitsField <= maxClusterBits {
		n := min(uint64(1)<<bitsField, fileSize)
		first = make([]byte, n)
		if err := readFull(r, first, 0); err != nil {
			return nil, fmt.Errorf("%w: reading the header cluster: %w", ErrFormat, err)
		}
	}
	h, err := parseHeader(first)
	if err != nil {
		return nil, err
	}
	img := &Image{
		r:           r,
		fileSize:    fileSize,
		h:           h,
		clusterBits: uint(h.clusterBits),
		clusterSize: uint64(1) << h.clusterBits,
	}
	img.l2Entries = img.clusterSize / 8
	if err := img.validate(first); err != nil {
		return nil, err
	}
	img.cache = newL2Cache(opts.CacheClusters)
	return img, nil
}

// validate checks the header fields that need the file size, reads the active L1 table and
// the refcount table, and collects the metadata regions, refusing any two that overlap.
func (img *Image) validate(first []byte) error {
	h := img.h
	cs := img.clusterSize
	if h.backingOffset != 0 {
		return fmt.Errorf("%w: backing file%s: the image depends on another", ErrUnsupported, backingName(h, first))
	}
	if err := h.checkFeatures(); err != nil {
		return err
	}
	switch h.cryptMethod {
	case cryptNone:
		if h.encryption {
			return fmt.Errorf("%w: full disk encryption header extension in an unencrypted image (crypt_method 0)", ErrFormat)
		}
	case cryptLegacyAES:
		return fmt.Errorf("%w: legacy AES encryption (crypt_method 1), which is insecure", ErrUnsupported)
	case cryptLUKS:
		if !h.encryption {
			return fmt.Errorf("%w: LUKS encryption (crypt_method 2) without the full disk encryption header extension", ErrFormat)
		}
	default:
		return fmt.Errorf("%w: crypt_method %d", ErrUnsupported, h.cryptMethod)
	}

	// The virtual size: the L1 table must map all of it, within QEMU's L1 limit.
	if h.size > 1<<62 {
		return fmt.Errorf("%w: virtual size %d too large", ErrFormat, h.size)
	}
	clusters := (h.size + cs - 1) >> img.clusterBits
	needed := (clusters + img.l2Entries - 1) / img.l2Entries
	if uint64(h.l1Size) < needed {
		return fmt.Errorf("%w: l1_size %d too small for the virtual size %d (needs %d entries)", ErrFormat, h.l1Size, h.size, needed)
	}
	l1Bytes := uint64(h.l1Size) * 8
	if l1Bytes > maxL1Bytes {
		return fmt.Errorf("%w: l1_size %d exceeds QEMU's limit of %d entries", ErrFormat, h.l1Size, maxL1Bytes/8)
	}

	var meta []region
	meta = append(meta, region{0, cs, "header"})
	if h.l1Size > 0 {
		if err := img.table("L1 table", h.l1Offset, l1Bytes); err != nil {
			return err
		}
		meta = append(meta, region{h.l1Offset, h.l1Offset + l1Bytes, "L1 table"})
	}
	refBytes := uint64(h.refTableClusters) << img.clusterBits
	if h.refTableClusters == 0 {
		return fmt.Errorf("%w: refcount_table_clusters is 0", ErrFormat)
	}
	if refBytes > maxRefTableBytes {
		return fmt.Errorf("%w: refcount table of %d clusters exceeds QEMU's limit of %d bytes", ErrFormat, h.refTableClusters, maxRefTableBytes)
	}
	if err := img.table("refcount table", h.refTableOffset, refBytes); err != nil {
		return err
	}
	meta = append(meta, region{h.refTableOffset, h.refTableOffset + refBytes, "refcount table"})
	if h.encryption {
		if h.encLength == 0 {
			return fmt.Errorf("%w: full disk encryption header of length 0", ErrFormat)
		}
		if err := img.table("full disk encryption header", h.encOffset, h.encLength); err != nil {
			return err
		}
		// Its clusters belong to it whole, even where the header does not fill them.
		meta = append(meta, region{h.encOffset, roundUp(h.encOffset+h.encLength, cs), "full disk encryption header"})
	}
	if h.nbSnapshots > 0 {
		if h.nbSnapshots > maxSnapshots {
			return fmt.Errorf("%w: %d internal snapshots exceed QEMU's limit of %d", ErrFormat, h.nbSnapshots, maxSnapshots)
		}
		least := uint64(h.nbSnapshots) * snapshotEntryMin
		if err := img.table("snapshot table", h.snapshotsOffset, least); err != nil {
			return err
		}
		meta = append(meta, region{h.snapshotsOffset, roundUp(h.snapshotsOffset+least, cs), "snapshot table"})
	}
	if h.bitmaps && h.bitmapDirSize > 0 {
		if err := img.table("bitmap directory", h.bitmapDirOffset, h.bitmapDirSize); err != nil {
			return err
		}
		meta = append(meta, region{h.bitmapDirOffset, h.bitmapDirOffset + h.bitmapDirSize, "bitmap directory"})
	}

	// Refcount blocks: this package does not need the refcounts to read, but their clusters
	// are metadata no L2 table or data cluster may claim.
	ref := make([]byte, refBytes)
	if err := readFull(img.r, ref, h.refTableOffset); err != nil {
		return fmt.Errorf("%w: reading the refcount table: %w", ErrFormat, err)
	}
	for i := uint64(0); i < refBytes/8; i++ {
		e := binary.BigEndian.Uint64(ref[i*8:])
		if e == 0 {
			continue
		}
		if e&(cs-1) != 0 {
			return fmt.Errorf("%w: refcount table entry %d: refcount block offset %#x not aligned to the %d-byte cluster", ErrFormat, i, e, cs)
		}
		if e >= img.fileSize {
			return fmt.Errorf("%w: refcount table entry %d: refcount block at %#x lies beyond the end of the file (%d bytes)", ErrFormat, i, e, img.fileSize)
		}
		meta = append(meta, region{e, e + cs, fmt.Sprintf("refcount block %d", i)})
	}

	// The active L1 table: entries past what the virtual size needs are not used.
	l1 := make([]byte, needed*8)
	if err := readFull(img.r, l1, h.l1Offset); err != nil {
		return fmt.Errorf("%w: reading the L1 table: %w", ErrFormat, err)
	}
	img.l1 = make([]uint64, needed)
	for i := range img.l1 {
		e := binary.BigEndian.Uint64(l1[i*8:])
		if e&l1Reserved != 0 {
			return fmt.Errorf("%w: L1 entry %d (%#016x): reserved bits set", ErrFormat, i, e)
		}
		off := e & offsetMask
		if off == 0 {
			continue
		}
		if off&(cs-1) != 0 {
			return fmt.Errorf("%w: L1 entry %d: L2 table offset %#x not aligned to the %d-byte cluster", ErrFormat, i, off, cs)
		}
		if err := img.table(fmt.Sprintf("L2 table of L1 entry %d", i), off, cs); err != nil {
			return err
		}
		img.l1[i] = off
		meta = append(meta, region{off, off + cs, fmt.Sprintf("L2 table of L1 entry %d", i)})
	}

	sort.Slice(meta, func(a, b int) bool { return meta[a].start < meta[b].start })
	for i := 1; i < len(meta); i++ {
		if meta[i].start < meta[i-1].end {
			return fmt.Errorf("%w: %s at %#x overlaps %s at %#x..%#x", ErrFormat, meta[i].what, meta[i].start, meta[i-1].what, meta[i-1].start, meta[i-1].end)
		}
	}
	img.meta = meta
	return nil
}

// table checks that a table of n bytes at off is cluster-aligned and lies inside the file.
func (img *Image) table(what string, off, n uint64) error {
	if off&(img.clusterSize-1) != 0 {
		return fmt.Errorf("%w: %s offset %#x not aligned to the %d-byte cluster", ErrFormat, what, off, img.clusterSize)
	}
	if off == 0 {
		return fmt.Errorf("%w: %s at offset 0, over the header", ErrFormat, what)
	}
	if !img.inFile(off, n) {
		return fmt.Errorf("%w: %s at %#x (%d bytes) runs past the end of the file (%d bytes)", ErrFormat, what, off, n, img.fileSize)
	}
	return nil
}

// inFile reports whether [off, off+n) lies inside the file, without overflowing.
func (img *Image) inFile(off, n uint64) bool {
	return off <= img.fileSize && n <= img.fileSize-off
}

// overlapsMeta returns the metadata region that [off, off+n) overlaps, if any.
func (img *Image) overlapsMeta(off, n uint64) (region, bool) {
	end := off + n
	// The first region that ends after off is the only candidate: regions are disjoint
	// and sorted, so their ends are sorted too.
	i := sort.Search(len(img.meta), func(i int) bool { return img.meta[i].end > off })
	if i < len(img.meta) && img.meta[i].start < end {
		return img.meta[i], true
	}
	return region{}, false
}

// backingName quotes the backing file's name for the refusal, when it lies in the header
// cluster as the format asks.
func backingName(h *header, first []byte) string {
	n := uint64(h.backingSize)
	if n == 0 || n > maxBackingName || h.backingOffset > uint64(len(first)) || n > uint64(len(first))-h.backingOffset {
		return ""
	}
	return fmt.Sprintf(" %q", printable(string(first[h.backingOffset:h.backingOffset+n])))
}

// roundUp rounds n up to a multiple of the power of two m. Callers keep n well below 2^63.
func roundUp(n, m uint64) uint64 { return (n + m - 1) &^ (m - 1) }

// readFull reads exactly len(p) bytes at off, accepting io.EOF with a full read as
// io.ReaderAt allows.
func readFull(r io.ReaderAt, p []byte, off uint64) error {
	if off > 1<<63-1 {
		return fmt.Errorf("offset %#x out of range", off)
	}
	n, err := r.ReadAt(p, int64(off))
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%d of %d bytes at %#x: %w", n, len(p), off, err)
}

// Size returns the guest's virtual size in bytes.
func (img *Image) Size() int64 { return int64(img.h.size) }

// Version returns the qcow2 version, 2 or 3.
func (img *Image) Version() int { return int(img.h.version) }

// ClusterSize returns the cluster size in bytes, a power of two from 512 to 2 MiB.
func (img *Image) ClusterSize() int { return int(img.clusterSize) }

// Encrypted reports whether the image is LUKS-encrypted (crypt_method 2). [Open] refuses
// legacy AES encryption (crypt_method 1), so an Image is either this or plain.
func (img *Image) Encrypted() bool { return img.h.cryptMethod == cryptLUKS }

// EncryptionHeader returns the LUKS header area that the full disk encryption header
// extension points at: the LUKS1 header, its keyslots' key material and padding, whose
// offsets are relative to the start of the area. It is nil when the image is not encrypted.
func (img *Image) EncryptionHeader() *io.SectionReader {
	if !img.Encrypted() {
		return nil
	}
	return io.NewSectionReader(img.r, int64(img.h.encOffset), int64(img.h.encLength))
}
