package qcow2

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"strings"
)

// The fixed layout of the image header (docs/interop/qcow2.txt, "Header"). All numbers are
// big-endian.
const (
	magic = 0x514649fb // "QFI\xfb"

	v2HeaderLength = 72  // a version 2 header ends after snapshots_offset
	v3HeaderLength = 104 // a version 3 header holds at least the fields up to header_length
	// ourHeaderLength is what Write puts in header_length: the 104 bytes, the one-byte
	// compression_type field and the padding to a multiple of 8, as QEMU writes it.
	ourHeaderLength = 112

	minClusterBits = 9  // 512-byte clusters, the format's minimum
	maxClusterBits = 21 // 2 MiB clusters, QEMU's limit

	// QEMU's implementation limits, which this package shares so that it opens what QEMU
	// opens and refuses what would make it read or allocate without bound.
	maxL1Bytes       = 32 << 20 // the active L1 table
	maxRefTableBytes = 8 << 20  // the refcount table
	maxSnapshots     = 65536
	maxBackingName   = 1023

	// snapshotEntryMin is the size of a snapshot table entry without its variable parts.
	snapshotEntryMin = 40
)

// Header extension types ("Header extensions").
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77 // full disk encryption header pointer
	extDataFile      = 0x44415441 // external data file name
)

// Feature bits ("incompatible_features", "autoclear_features").
const (
	incompatDirty       = 1 << 0
	incompatCorrupt     = 1 << 1
	incompatDataFile    = 1 << 2
	incompatCompression = 1 << 3
	incompatExtendedL2  = 1 << 4
	incompatKnown       = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompression | incompatExtendedL2

	autoclearRawData = 1 << 1
)

// crypt_method values.
const (
	cryptNone      = 0
	cryptLegacyAES = 1
	cryptLUKS      = 2
)

// header is the parsed image header and its extensions, before the checks that need the
// file's size.
type header struct {
	version          uint32
	backingOffset    uint64
	backingSize      uint32
	clusterBits      uint32
	size             uint64
	cryptMethod      uint32
	l1Size           uint32
	l1Offset         uint64
	refTableOffset   uint64
	refTableClusters uint32
	nbSnapshots      uint32
	snapshotsOffset  uint64
	incompat         uint64
	compat           uint64
	autoclear        uint64
	refcountOrder    uint32
	headerLength     uint32
	compressionType  uint8

	encryption      bool // the full disk encryption header pointer is present
	encOffset       uint64
	encLength       uint64
	bitmaps         bool
	bitmapDirSize   uint64
	bitmapDirOffset uint64
	dataFile        bool
	dataFileName    string
	featureNames    map[featureBit]string
}

// featureBit names one bit of one of the three feature bitmaps, as the feature name table
// does: kind 0 incompatible, 1 compatible, 2 autoclear.
type featureBit struct{ kind, bit uint8 }

// parseHeader decodes the header and its extensions from the start of the file. buf holds
// the first cluster, or the whole file when that is shorter; it must hold at least
// v2HeaderLength bytes.
func parseHeader(buf []byte) (*header, error) {
	be := binary.BigEndian
	if m := be.Uint32(buf[0:]); m != magic {
		return nil, fmt.Errorf("%w: bad magic %#08x, want %#08x (\"QFI\\xfb\"): not a qcow2 image", ErrFormat, m, magic)
	}
	h := &header{
		version:          be.Uint32(buf[4:]),
		backingOffset:    be.Uint64(buf[8:]),
		backingSize:      be.Uint32(buf[16:]),
		clusterBits:      be.Uint32(buf[20:]),
		size:             be.Uint64(buf[24:]),
		cryptMethod:      be.Uint32(buf[32:]),
		l1Size:           be.Uint32(buf[36:]),
		l1Offset:         be.Uint64(buf[40:]),
		refTableOffset:   be.Uint64(buf[48:]),
		refTableClusters: be.Uint32(buf[56:]),
		nbSnapshots:      be.Uint32(buf[60:]),
		snapshotsOffset:  be.Uint64(buf[64:]),
	}
	if h.version == 2 || h.version == 3 {
		if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
			return nil, fmt.Errorf("%w: cluster_bits %d out of range (%d..%d: 512 B to 2 MiB clusters)", ErrFormat, h.clusterBits, minClusterBits, maxClusterBits)
		}
	}
	switch h.version {
	case 2:
		h.headerLength = v2HeaderLength
		h.refcountOrder = 4
	case 3:
		if len(buf) < v3HeaderLength {
			return nil, fmt.Errorf("%w: version 3 header truncated: file has %d bytes, the header needs %d", ErrFormat, len(buf), v3HeaderLength)
		}
		h.incompat = be.Uint64(buf[72:])
		h.compat = be.Uint64(buf[80:])
		h.autoclear = be.Uint64(buf[88:])
		h.refcountOrder = be.Uint32(buf[96:])
		h.headerLength = be.Uint32(buf[100:])
	default:
		return nil, unsupported(FeatureVersion, "version %d (want 2 or 3)", h.version)
	}
	clusterSize := uint64(1) << h.clusterBits
	if h.version == 3 {
		if h.headerLength < v3HeaderLength || h.headerLength%8 != 0 || uint64(h.headerLength) > clusterSize {
			return nil, fmt.Errorf("%w: header_length %d (want a multiple of 8, at least %d, at most the %d-byte cluster)", ErrFormat, h.headerLength, v3HeaderLength, clusterSize)
		}
		if uint64(h.headerLength) > uint64(len(buf)) {
			return nil, fmt.Errorf("%w: header truncated: header_length %d, file has %d bytes", ErrFormat, h.headerLength, len(buf))
		}
		if h.headerLength > v3HeaderLength {
			h.compressionType = buf[v3HeaderLength]
		}
		if h.refcountOrder > 6 {
			return nil, fmt.Errorf("%w: refcount_order %d (at most 6: 64-bit refcounts)", ErrFormat, h.refcountOrder)
		}
	}
	end := uint64(len(buf))
	if end > clusterSize {
		end = clusterSize
	}
	if h.backingOffset != 0 && h.backingOffset < end {
		// The backing file name sits after the extensions, in the first cluster.
		end = h.backingOffset
	}
	if err := h.parseExtensions(buf[:end]); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions decodes the header extensions that follow the header in area (the first
// cluster up to the backing file name). Each is a type, a length and data padded to 8 bytes;
// type 0 ends the list. Unknown types are ignored, as the format allows; known ones may
// appear at most once.
func (h *header) parseExtensions(area []byte) error {
	be := binary.BigEndian
	seen := map[uint32]bool{}
	off := uint64(h.headerLength)
	for off < uint64(len(area)) {
		if uint64(len(area))-off < 8 {
			return fmt.Errorf("%w: header extension at %d truncated: %d bytes left before the end of the header cluster", ErrFormat, off, uint64(len(area))-off)
		}
		typ := be.Uint32(area[off:])
		length := uint64(be.Uint32(area[off+4:]))
		if typ == extEnd {
			return nil
		}
		data := off + 8
		if length > uint64(len(area))-data {
			return fmt.Errorf("%w: header extension %#08x at %d: length %d runs past the header cluster (%d bytes)", ErrFormat, typ, off, length, len(area))
		}
		body := area[data : data+length]
		switch typ {
		case extBackingFormat, extFeatureNames, extBitmaps, extEncryption, extDataFile:
			if seen[typ] {
				return fmt.Errorf("%w: header extension %#08x (%s) appears twice", ErrFormat, typ, extName(typ))
			}
			seen[typ] = true
		}
		switch typ {
		case extFeatureNames:
			h.featureNames = map[featureBit]string{}
			for e := 0; e+48 <= len(body); e += 48 {
				name := strings.TrimRight(string(body[e+2:e+48]), "\x00")
				h.featureNames[featureBit{body[e], body[e+1]}] = printable(name)
			}
		case extBitmaps:
			if length < 24 {
				return fmt.Errorf("%w: bitmaps extension of %d bytes (want at least 24)", ErrFormat, length)
			}
			h.bitmaps = true
			h.bitmapDirSize = be.Uint64(body[8:])
			h.bitmapDirOffset = be.Uint64(body[16:])
		case extEncryption:
			if length != 16 {
				return fmt.Errorf("%w: full disk encryption header extension of %d bytes (want 16)", ErrFormat, length)
			}
			h.encryption = true
			h.encOffset = be.Uint64(body[0:])
			h.encLength = be.Uint64(body[8:])
		case extDataFile:
			h.dataFile = true
			h.dataFileName = printable(string(body))
		}
		// The data is padded to the next multiple of 8; the padding may be missing after
		// the last extension of a full cluster.
		next := data + (length+7)&^7
		if next < data { // cannot happen with a 32-bit length, kept for the reader
			return fmt.Errorf("%w: header extension %#08x at %d: length overflows", ErrFormat, typ, off)
		}
		off = next
	}
	return nil
}

// extName names a known header extension type for messages.
func extName(typ uint32) string {
	switch typ {
	case extBackingFormat:
		return "backing file format"
	case extFeatureNames:
		return "feature name table"
	case extBitmaps:
		return "bitmaps"
	case extEncryption:
		return "full disk encryption header"
	case extDataFile:
		return "external data file name"
	}
	return "unknown"
}

// checkFeatures refuses, by name, the feature bits this package cannot honour while reading.
// Compatible bits may be ignored by definition; so may autoclear bits, except the raw
// external data bit, which only an image with an external data file sets.
func (h *header) checkFeatures() error {
	if h.incompat&incompatDataFile != 0 || h.dataFile {
		name := ""
		if h.dataFile {
			name = fmt.Sprintf(" %q", h.dataFileName)
		}
		return unsupported(FeatureExternalDataFile, "external data file%s: the guest data is not in this file", name)
	}
	if h.autoclear&autoclearRawData != 0 {
		return unsupported(FeatureExternalDataFile, "raw external data file (autoclear bit 1)")
	}
	if h.incompat&incompatExtendedL2 != 0 {
		return unsupported(FeatureExtendedL2, "extended L2 entries (subclusters)")
	}
	if h.incompat&incompatCorrupt != 0 {
		return fmt.Errorf("%w: QEMU marked the image corrupt (incompatible feature bit 1); repair it with qemu-img check -r all", ErrFormat)
	}
	if h.incompat&incompatDirty != 0 {
		return unsupported(FeatureDirty, "dirty: refcounts may be stale after an unclean shutdown with lazy refcounts")
	}
	if unknown := h.incompat &^ incompatKnown; unknown != 0 {
		bit := uint8(bits.TrailingZeros64(unknown))
		what := fmt.Sprintf("unknown incompatible feature bit %d", bit)
		if name, ok := h.featureNames[featureBit{0, bit}]; ok && name != "" {
			what += fmt.Sprintf(" (%q)", name)
		}
		return unsupported(FeatureUnknownIncompatible, "%s", what)
	}
	switch {
	case h.incompat&incompatCompression != 0:
		if h.compressionType == 0 {
			return fmt.Errorf("%w: compression type bit set but compression_type is zlib (0)", ErrFormat)
		}
		if h.compressionType == 1 {
			return unsupported(FeatureCompressionType, "zstd compression type (only zlib is supported; convert with qemu-img convert -O qcow2 -o compression_type=zlib)")
		}
		return unsupported(FeatureCompressionType, "compression type %d", h.compressionType)
	case h.compressionType != 0:
		return fmt.Errorf("%w: compression_type %d without the compression type feature bit", ErrFormat, h.compressionType)
	}
	return nil
}

// printable returns s with every byte outside printable ASCII replaced, for messages that
// quote names read from the file.
func printable(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}
