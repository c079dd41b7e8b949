package keyslot

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The binary header of one LUKS2 header copy (struct luks2_hdr_disk in cryptsetup's
// lib/luks2/luks2.h). All integers are big-endian.
const (
	binHeaderSize = 4096

	offMagic     = 0
	offVersion   = 6
	offHdrSize   = 8
	offSeqID     = 16
	offLabel     = 24
	offCsumAlg   = 72
	offSalt      = 104
	offUUID      = 168
	offSubsystem = 208
	offHdrOffset = 256
	offCsum      = 448

	labelLen   = 48
	csumAlgLen = 32
	saltLen    = 64
	uuidLen    = 40
	csumLen    = 64

	// MaxLabelLen is the longest label or subsystem string, in bytes.
	MaxLabelLen = labelLen - 1
)

var (
	magicPrimary   = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}
	magicSecondary = []byte{'S', 'K', 'U', 'L', 0xba, 0xbe}
)

// hdrSizes lists the header sizes (binary header plus JSON area) LUKS2 allows, smallest first.
var hdrSizes = []uint64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

func validHdrSize(n uint64) bool {
	for _, s := range hdrSizes {
		if n == s {
			return true
		}
	}
	return false
}

// binHeader holds the fields of a binary header.
type binHeader struct {
	secondary bool
	hdrSize   uint64
	seqID     uint64
	label     string
	csumAlg   string
	salt      [saltLen]byte
	uuid      string
	subsystem string
	hdrOffset uint64
	csum      [csumLen]byte
}

// parseBinHeader decodes and checks the fixed fields of a 4096-byte binary header: magic,
// version, header size, offset and the text fields. The checksum is checked by the caller,
// which has the JSON area.
func parseBinHeader(b []byte) (*binHeader, error) { return parseBinHeaderLike(b, nil) }

// parseBinHeaderLike is parseBinHeader taking each text field from like (when not nil) when
// it is the same, instead of a new copy.
func parseBinHeaderLike(b []byte, like *binHeader) (*binHeader, error) {
	var prev binHeader
	if like != nil {
		prev = *like
	}
	if len(b) < binHeaderSize {
		return nil, fmt.Errorf("%w: binary header is %d bytes, want %d", ErrHeaderCorrupt, len(b), binHeaderSize)
	}
	h := &binHeader{}
	switch {
	case bytes.Equal(b[offMagic:offMagic+6], magicPrimary):
	case bytes.Equal(b[offMagic:offMagic+6], magicSecondary):
		h.secondary = true
	default:
		return nil, fmt.Errorf("%w: bad magic %x", ErrHeaderCorrupt, b[offMagic:offMagic+6])
	}
	if v := binary.BigEndian.Uint16(b[offVersion:]); v != 2 {
		return nil, fmt.Errorf("%w: version %d, want 2", ErrHeaderCorrupt, v)
	}
	h.hdrSize = binary.BigEndian.Uint64(b[offHdrSize:])
	if !validHdrSize(h.hdrSize) {
		return nil, fmt.Errorf("%w: header size %d is not one LUKS2 allows (16 KiB to 4 MiB, a power of two)", ErrHeaderCorrupt, h.hdrSize)
	}
	h.seqID = binary.BigEndian.Uint64(b[offSeqID:])
	h.hdrOffset = binary.BigEndian.Uint64(b[offHdrOffset:])
	var err error
	if h.label, err = cString(b[offLabel:offLabel+labelLen], "label", prev.label); err != nil {
		return nil, err
	}
	if h.csumAlg, err = cString(b[offCsumAlg:offCsumAlg+csumAlgLen], "checksum_alg", prev.csumAlg); err != nil {
		return nil, err
	}
	if h.uuid, err = cString(b[offUUID:offUUID+uuidLen], "uuid", prev.uuid); err != nil {
		return nil, err
	}
	if h.subsystem, err = cString(b[offSubsystem:offSubsystem+labelLen], "subsystem", prev.subsystem); err != nil {
		return nil, err
	}
	copy(h.salt[:], b[offSalt:])
	copy(h.csum[:], b[offCsum:])
	return h, nil
}

// cString returns a NUL-terminated string field; a field with no NUL is corrupt. When the
// field is prev, prev is returned instead of a new copy.
func cString(b []byte, name, prev string) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", fmt.Errorf("%w: %s field is not NUL-terminated", ErrHeaderCorrupt, name)
	}
	if string(b[:i]) == prev {
		return prev, nil
	}
	return string(b[:i]), nil
}

// marshal encodes the binary header. With withCsum false the checksum field is zero, which is
// also the form the checksum is computed over.
func (h *binHeader) marshal(withCsum bool) []byte {
	return h.marshalTo(make([]byte, binHeaderSize), withCsum)
}

// marshalTo is marshal into b (binHeaderSize bytes, any contents), which it returns.
func (h *binHeader) marshalTo(b []byte, withCsum bool) []byte {
	b = b[:binHeaderSize]
	clear(b[binHeaderUsed:])
	h.marshalFields((*[binHeaderUsed]byte)(b), withCsum)
	return b
}

// marshalFields writes the part of the binary header that holds fields (all of marshal's
// output but the zero padding after them) into b.
func (h *binHeader) marshalFields(f *[binHeaderUsed]byte, withCsum bool) {
	b := f[:]
	clear(b)
	if h.secondary {
		copy(b[offMagic:], magicSecondary)
	} else {
		copy(b[offMagic:], magicPrimary)
	}
	binary.BigEndian.PutUint16(b[offVersion:], 2)
	binary.BigEndian.PutUint64(b[offHdrSize:], h.hdrSize)
	binary.BigEndian.PutUint64(b[offSeqID:], h.seqID)
	copy(b[offLabel:offLabel+labelLen-1], h.label)
	copy(b[offCsumAlg:offCsumAlg+csumAlgLen-1], h.csumAlg)
	copy(b[offSalt:offSalt+saltLen], h.salt[:])
	copy(b[offUUID:offUUID+uuidLen-1], h.uuid)
	copy(b[offSubsystem:offSubsystem+labelLen-1], h.subsystem)
	binary.BigEndian.PutUint64(b[offHdrOffset:], h.hdrOffset)
	if withCsum {
		copy(b[offCsum:offCsum+csumLen], h.csum[:])
	}
}

// diskChecksum computes the checksum of a header copy as read: the hash of the 4096 bytes of
// its binary header exactly as on disk, with the checksum field zeroed, then the whole JSON
// area (cryptsetup's hdr_checksum_check). Padding and bytes after a text field's NUL are
// covered, so a change there makes the copy bad, as it does for cryptsetup.
func diskChecksum(alg string, raw, jsonArea []byte) ([csumLen]byte, error) {
	var out [csumLen]byte
	hi, err := hashByName(alg)
	if err != nil {
		return out, fmt.Errorf("%w: checksum algorithm: %w", ErrHeaderCorrupt, err)
	}
	hh := hi.new()
	hh.Write(raw[:offCsum])
	hh.Write(zeroCsum[:])
	hh.Write(raw[offCsum+csumLen : binHeaderSize])
	hh.Write(jsonArea)
	copy(out[:], hh.Sum(nil))
	return out, nil
}

// diskChecksumPair is diskChecksum of (rawA, areaA) and of (rawB, areaB), binary headers of
// binHeaderSize bytes and JSON areas (a multiple of 64 bytes, as every area is). With
// SHA-256 on a CPU with the SHA extensions, and areas of one size, the two are computed
// together, their compressions interleaved (sha256Block2), which takes less time than one
// after the other.
func diskChecksumPair(alg string, rawA, rawB, areaA, areaB []byte) (a, b [csumLen]byte, err error) {
	if alg != "sha256" || !hasSHANI || len(areaA) != len(areaB) || len(areaA)%64 != 0 || len(rawA) < binHeaderSize || len(rawB) < binHeaderSize {
		if a, err = diskChecksum(alg, rawA, areaA); err != nil {
			return a, b, err
		}
		b, err = diskChecksum(alg, rawB, areaB)
		return a, b, err
	}
	da, db := sha256IV, sha256IV
	for i := 0; i < binHeaderSize; i += 64 {
		pa, pb := (*[64]byte)(rawA[i:i+64]), (*[64]byte)(rawB[i:i+64])
		if i == offCsum { // the checksum field is one whole block, hashed as zeros
			pa, pb = &zeroCsum, &zeroCsum
		}
		sha256Block2(&da, &db, pa, pb)
	}
	for i := 0; i < len(areaA); i += 64 {
		sha256Block2(&da, &db, (*[64]byte)(areaA[i:i+64]), (*[64]byte)(areaB[i:i+64]))
	}
	var pad [64]byte
	sha256Pad(&pad, 0, uint64(binHeaderSize+len(areaA)))
	sha256Block2(&da, &db, &pad, &pad)
	sha256Put(a[:], &da)
	sha256Put(b[:], &db)
	return a, b, nil
}

// The checksum field must be one whole SHA-256 block for diskChecksumPair.
var _ = [1]struct{}{}[offCsum%64+csumLen-64]

// zeroCsum is the checksum field as the checksum is computed over it. It is never written
// (a package-level array, so that hashing it does not allocate one per checksum).
var zeroCsum [csumLen]byte

// jsonText returns the JSON text of a JSON area: the bytes before the first NUL. The area must
// start with '{', and every byte after the text must be NUL, with at least one NUL.
func jsonText(area []byte) ([]byte, error) {
	if len(area) == 0 || area[0] != '{' {
		return nil, fmt.Errorf("%w: JSON area does not start with '{'", ErrHeaderCorrupt)
	}
	n := bytes.IndexByte(area, 0)
	if n < 0 {
		return nil, fmt.Errorf("%w: JSON area has no terminating NUL", ErrHeaderCorrupt)
	}
	if !isZero(area[n:]) {
		return nil, fmt.Errorf("%w: non-NUL bytes after the JSON text", ErrHeaderCorrupt)
	}
	return area[:n], nil
}
