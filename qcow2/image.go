package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// ErrFormat is wrapped by every error about a file that is not a well-formed qcow2 image:
// bad magic, truncated tables, offsets outside the file, overlapping or misaligned tables,
// reserved bits set, corrupt compressed data, and read errors of the underlying file.
var ErrFormat = errors.New("qcow2: malformed image")

// ErrUnsupported is wrapped by every error about a well-formed image that uses a feature this
// package does not read: backing files, external data files, extended L2 entries, legacy AES
// encryption, compressed clusters in an encrypted image, zstd compression, a dirty image,
// unknown incompatible feature bits. The message names the feature; the error is an
// [*UnsupportedError], whose Feature field names it for programs.
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
	// The metadata, which no data cluster may claim: the few whole tables, and the
	// single-cluster tables as bare offsets (named only in errors, from refBlocks and l1):
	// a hostile image may have millions.
	tables    []region // header, L1 table, refcount table, encryption header, ...
	clusters  []uint64 // the refcount blocks and L2 tables, sorted, none twice
	refBlocks []uint64 // refcount table entries (refcount block offsets, 0 if none)
	cache     *l2Cache
}

// regionKind says what a metadata region is.
type regionKind uint8

const (
	regHeader regionKind = iota
	regL1
	regRefTable
	regEncryption
	regSnapshots
	regBitmapDir
	regRefBlock // index: the refcount table entry
	regL2       // index: the L1 entry
)

// region is a byte range [start, end) of the file that holds metadata. It is named only
// when an error needs it: images may hold millions of them.
type region struct {
	start, end uint64
	kind       regionKind
	index      uint64
}

// String names the region for messages.
func (r region) String() string {
	switch r.kind {
	case regHeader:
		return "header"
	case regL1:
		return "L1 table"
	case regRefTable:
		return "refcount table"
	case regEncryption:
		return "full disk encryption header"
	case regSnapshots:
		return "snapshot table"
	case regBitmapDir:
		return "bitmap directory"
	case regRefBlock:
		return fmt.Sprintf("refcount block %d", r.index)
	case regL2:
		return fmt.Sprintf("L2 table of L1 entry %d", r.index)
	}
	return "metadata"
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
		return unsupported(FeatureBackingFile, "backing file%s: the image depends on another", backingName(h, first))
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
		return unsupported(FeatureLegacyAES, "legacy AES encryption (crypt_method 1), which is insecure")
	case cryptLUKS:
		if !h.encryption {
			return fmt.Errorf("%w: LUKS encryption (crypt_method 2) without the full disk encryption header extension", ErrFormat)
		}
	default:
		return unsupported(FeatureCryptMethod, "crypt_method %d", h.cryptMethod)
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

	if err := img.addTable(region{0, cs, regHeader, 0}); err != nil {
		return err
	}
	if h.l1Size > 0 {
		if err := img.table("L1 table", h.l1Offset, l1Bytes); err != nil {
			return err
		}
		if err := img.addTable(region{h.l1Offset, h.l1Offset + l1Bytes, regL1, 0}); err != nil {
			return err
		}
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
	if err := img.addTable(region{h.refTableOffset, h.refTableOffset + refBytes, regRefTable, 0}); err != nil {
		return err
	}
	if h.encryption {
		if h.encLength == 0 {
			return fmt.Errorf("%w: full disk encryption header of length 0", ErrFormat)
		}
		if err := img.table("full disk encryption header", h.encOffset, h.encLength); err != nil {
			return err
		}
		// Its clusters belong to it whole, even where the header does not fill them.
		if err := img.addTable(region{h.encOffset, roundUp(h.encOffset+h.encLength, cs), regEncryption, 0}); err != nil {
			return err
		}
	}
	if h.nbSnapshots > 0 {
		if h.nbSnapshots > maxSnapshots {
			return fmt.Errorf("%w: %d internal snapshots exceed QEMU's limit of %d", ErrFormat, h.nbSnapshots, maxSnapshots)
		}
		least := uint64(h.nbSnapshots) * snapshotEntryMin
		if err := img.table("snapshot table", h.snapshotsOffset, least); err != nil {
			return err
		}
		if err := img.addTable(region{h.snapshotsOffset, roundUp(h.snapshotsOffset+least, cs), regSnapshots, 0}); err != nil {
			return err
		}
	}
	if h.bitmaps && h.bitmapDirSize > 0 {
		if err := img.table("bitmap directory", h.bitmapDirOffset, h.bitmapDirSize); err != nil {
			return err
		}
		if err := img.addTable(region{h.bitmapDirOffset, h.bitmapDirOffset + h.bitmapDirSize, regBitmapDir, 0}); err != nil {
			return err
		}
	}

	// Refcount blocks: this package does not need the refcounts to read, but their clusters
	// are metadata no L2 table or data cluster may claim. The single-cluster tables
	// (refcount blocks, L2 tables) are kept as their offsets only, sorted and checked
	// below: 8 bytes each, at most one per 8 bytes of the tables the file holds.
	img.refBlocks = make([]uint64, refBytes/8)
	if err := readTable(img.r, h.refTableOffset, img.refBlocks); err != nil {
		return fmt.Errorf("%w: reading the refcount table: %w", ErrFormat, err)
	}
	// The active L1 table: entries past what the virtual size needs are not used.
	img.l1 = make([]uint64, needed)
	if err := readTable(img.r, h.l1Offset, img.l1); err != nil {
		return fmt.Errorf("%w: reading the L1 table: %w", ErrFormat, err)
	}
	n := 0
	for _, e := range img.refBlocks {
		n += int(min(e, 1))
	}
	for _, e := range img.l1 {
		n += int(min(e&offsetMask, 1))
	}
	singles := make([]uint64, 0, n)
	for i, e := range img.refBlocks {
		if e == 0 {
			continue
		}
		if e&(cs-1) != 0 {
			return fmt.Errorf("%w: refcount table entry %d: refcount block offset %#x not aligned to the %d-byte cluster", ErrFormat, i, e, cs)
		}
		if e >= img.fileSize {
			return fmt.Errorf("%w: refcount table entry %d: refcount block at %#x lies beyond the end of the file (%d bytes)", ErrFormat, i, e, img.fileSize)
		}
		if r, ok := img.overlapsTable(e, cs); ok {
			return fmt.Errorf("%w: refcount block %d at %#x overlaps the %s at %#x..%#x", ErrFormat, i, e, r, r.start, r.end)
		}
		singles = append(singles, e)
	}

	for i, e := range img.l1 {
		if e&l1Reserved != 0 {
			return fmt.Errorf("%w: L1 entry %d (%#016x): reserved bits set", ErrFormat, i, e)
		}
		off := e & offsetMask
		img.l1[i] = off
		if off == 0 {
			continue
		}
		if off&(cs-1) != 0 {
			return fmt.Errorf("%w: L1 entry %d: L2 table offset %#x not aligned to the %d-byte cluster", ErrFormat, i, off, cs)
		}
		if !img.inFile(off, cs) {
			return fmt.Errorf("%w: L2 table of L1 entry %d at %#x (%d bytes) runs past the end of the file (%d bytes)", ErrFormat, i, off, cs, img.fileSize)
		}
		if r, ok := img.overlapsTable(off, cs); ok {
			return fmt.Errorf("%w: L2 table of L1 entry %d at %#x overlaps the %s at %#x..%#x", ErrFormat, i, off, r, r.start, r.end)
		}
		singles = append(singles, off)
	}
	slices.Sort(singles)
	for i := 1; i < len(singles); i++ {
		if singles[i] == singles[i-1] {
			a, b := img.clusterOwners(singles[i])
			return fmt.Errorf("%w: %s at %#x overlaps %s at %#x", ErrFormat, b, singles[i], a, singles[i])
		}
	}
	img.clusters = singles
	return nil
}

// addTable records a whole table as metadata, refusing it if it overlaps one already
// recorded.
func (img *Image) addTable(r region) error {
	if o, ok := img.overlapsTable(r.start, r.end-r.start); ok {
		return fmt.Errorf("%w: %s at %#x overlaps the %s at %#x..%#x", ErrFormat, r, r.start, o, o.start, o.end)
	}
	img.tables = append(img.tables, r)
	return nil
}

// overlapsTable returns the whole table that [off, off+n) overlaps, if any.
func (img *Image) overlapsTable(off, n uint64) (region, bool) {
	for _, r := range img.tables {
		if off < r.end && r.start < off+n {
			return r, true
		}
	}
	return region{}, false
}

// clusterOwners names the first two single-cluster tables found at the cluster off (a
// refcount block or an L2 table), for the error about their overlap.
func (img *Image) clusterOwners(off uint64) (region, region) {
	var found []region
	for i, e := range img.refBlocks {
		if e == off {
			found = append(found, region{off, off + img.clusterSize, regRefBlock, uint64(i)})
		}
	}
	for i, e := range img.l1 {
		if e == off {
			found = append(found, region{off, off + img.clusterSize, regL2, uint64(i)})
		}
	}
	for len(found) < 2 {
		found = append(found, region{off, off + img.clusterSize, regL2, 0})
	}
	return found[0], found[1]
}

// readTable reads the big-endian 64-bit entries of a table at off into t, a chunk at a
// time, so that no buffer but t itself is as large as the table.
func readTable(r io.ReaderAt, off uint64, t []uint64) error {
	buf := make([]byte, min(len(t)*8, 64<<10))
	for done := 0; done < len(t); {
		n := min(len(t)-done, len(buf)/8)
		if err := readFull(r, buf[:n*8], off+uint64(done)*8); err != nil {
			return err
		}
		for i := range n {
			t[done+i] = binary.BigEndian.Uint64(buf[i*8:])
		}
		done += n
	}
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
	if r, ok := img.overlapsTable(off, n); ok {
		return r, true
	}
	// The first single-cluster table that ends after off is the only candidate that
	// could start before off+n... and any later one that starts before off+n.
	cs := img.clusterSize
	i, _ := slices.BinarySearch(img.clusters, off-min(off, cs-1))
	if i < len(img.clusters) && img.clusters[i] < off+n {
		c := img.clusters[i]
		for j, e := range img.refBlocks {
			if e == c {
				return region{c, c + cs, regRefBlock, uint64(j)}, true
			}
		}
		for j, e := range img.l1 {
			if e == c {
				return region{c, c + cs, regL2, uint64(j)}, true
			}
		}
		return region{c, c + cs, regL2, 0}, true
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
