package keyslot

// Generators for TestCryptsetupValidationCases: each derives one header case from the
// reference image the way one of cryptsetup 2.6.1's tests/generators/generate-*.sh scripts
// derives it from tests/luks2_valid_hdr.img (written anew here from a reading of what each
// script does; no text of theirs is copied). The helpers mirror the steps those scripts share:
// read a copy's binary header and JSON area, change the JSON (their jq edits become edits of
// a decoded map), write the area back with a recomputed sha256 checksum, and "kill" a binary
// header by overwriting its magic with VACUUM.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// Layout of cryptsetup's reference header (tests/luks2_valid_hdr.img, 2.6.1), which
// refHeader reproduces: a 16 MiB image, 16 KiB metadata, a 4161536-byte keyslots area, data
// at 4 MiB, eight 256-bit keyslots of 131072 bytes packed from 32768 with keyslot 7's area
// before keyslot 6's, one pbkdf2 digest, 512-byte sectors.
const (
	refImageSize    = 16 << 20
	refMetadataSize = 16 << 10
	refKeyslotsSize = 4161536
	refDataOffset   = 4 << 20
	refKeySize      = 32
	refSectorSize   = 512
	refPassphrase   = "cryptsetup validation reference"
	// refBigDataOffset is where the metadata-size generators move the data segment.
	refBigDataOffset = 16 << 20
)

// refKeyslotOrder is the order keyslots are added in, so that their areas land where the
// reference has them (7 before 6).
var refKeyslotOrder = []int{1, 2, 3, 4, 5, 7, 6}

// refHeader is the reference image and its volume key.
type refHeader struct {
	image     []byte
	volumeKey []byte
}

// makeRefHeader formats the reference with crkvol. The keyslots use cheap argon2i (the
// reference's KDF family, at cryptsetup's minimum costs) so that each case unlocks in
// milliseconds; every keyslot holds the same passphrase.
func makeRefHeader(t *testing.T) refHeader {
	t.Helper()
	kdf := KDF{Type: KDFArgon2i, Time: MinArgon2Time, Memory: MinArgon2Memory, Threads: 1}
	dev := newMemDevice(refImageSize)
	img, vk, err := Format(dev, refImageSize, []byte(refPassphrase), FormatOptions{
		KeySize:      refKeySize,
		SectorSize:   refSectorSize,
		MetadataSize: refMetadataSize,
		KeyslotsSize: refKeyslotsSize,
		DataOffset:   refDataOffset,
		KDF:          kdf,
	})
	require.NoError(t, err)
	for _, id := range refKeyslotOrder {
		_, err := img.AddKeyslot(vk, []byte(refPassphrase), SlotOptions{ID: id, KDF: kdf})
		require.NoError(t, err)
	}
	for _, s := range img.Keyslots() {
		want := uint64(32768 + 131072*s.ID)
		switch s.ID {
		case 6:
			want = 32768 + 131072*7
		case 7:
			want = 32768 + 131072*6
		}
		require.Equal(t, want, img.snapshot().meta.keyslots[s.ID].area.offset, "keyslot %d area", s.ID)
	}
	return refHeader{image: bytes.Clone(dev.buf), volumeKey: vk}
}

// genCase is a case being derived: the whole image, and the copies of the two binary headers
// and JSON areas of the reference layout that the generators work on (lib_prepare).
type genCase struct {
	t            *testing.T
	img          []byte
	hdr0, hdr1   []byte
	json0, json1 []byte
}

func newGenCase(t *testing.T, ref refHeader) *genCase {
	return newGenCaseIn(t, ref, nil)
}

// newGenCaseIn is newGenCase with the image copied into scratch when it has the reference
// image's length: a table of cases run one after another reuses one buffer instead of
// allocating 16 MiB per case (most of the table's time went to that).
func newGenCaseIn(t *testing.T, ref refHeader, scratch []byte) *genCase {
	var img []byte
	if len(scratch) == len(ref.image) {
		img = scratch
		copy(img, ref.image)
	} else {
		img = bytes.Clone(ref.image)
	}
	return &genCase{
		t:     t,
		img:   img,
		hdr0:  bytes.Clone(img[:binHeaderSize]),
		hdr1:  bytes.Clone(img[refMetadataSize : refMetadataSize+binHeaderSize]),
		json0: bytes.Clone(img[binHeaderSize:refMetadataSize]),
		json1: bytes.Clone(img[refMetadataSize+binHeaderSize : 2*refMetadataSize]),
	}
}

// text returns a JSON area's text up to its first NUL.
func jsonAreaText(area []byte) []byte {
	if i := bytes.IndexByte(area, 0); i >= 0 {
		return area[:i]
	}
	return area
}

// padJSON returns text in a zero-filled JSON area of size bytes (write_luks2_json); text
// must fit.
func (c *genCase) padJSON(text []byte, size int) []byte {
	require.Less(c.t, len(text), size, "generated JSON does not fit its area")
	area := make([]byte, size)
	copy(area, text)
	return area
}

// decode parses a JSON area into a map keeping numbers as written.
func (c *genCase) decode(area []byte) map[string]any {
	d := json.NewDecoder(bytes.NewReader(jsonAreaText(area)))
	d.UseNumber()
	var m map[string]any
	require.NoError(c.t, d.Decode(&m))
	return m
}

// edit applies fn to the decoded primary JSON and writes the result back into json0 in an
// area of the default size, as the generators' jq edits do.
func (c *genCase) edit(fn func(m map[string]any)) {
	c.editSized(refMetadataSize-binHeaderSize, fn)
}

// editSized is edit for an area of jsonSize bytes, writing the result to both json0 and
// json1 (the metadata-size generators write both).
func (c *genCase) editSized(jsonSize int, fn func(m map[string]any)) {
	m := c.decode(c.json0)
	fn(m)
	text, err := json.Marshal(m)
	require.NoError(c.t, err)
	c.json0 = c.padJSON(text, jsonSize)
	if jsonSize != refMetadataSize-binHeaderSize {
		c.json1 = c.padJSON(text, jsonSize)
	}
}

// setBoth makes json1 a copy of json0 (the generators that write one string to both).
func (c *genCase) setBoth() { c.json1 = bytes.Clone(c.json0) }

// area merges a binary header and a JSON area into one copy with its checksum recomputed
// (erase_checksum, sha256 over the copy, write_checksum), and kills its magic when asked.
func (c *genCase) area(hdr, js []byte, mda int, kill bool) []byte {
	a := make([]byte, mda)
	copy(a, hdr)
	copy(a[binHeaderSize:], js)
	clear(a[offCsum : offCsum+csumLen])
	sum := sha256.Sum256(a)
	copy(a[offCsum:], sum[:])
	if kill {
		copy(a, "VACUUM")
	}
	return a
}

// writeHdr0 writes the primary copy (lib_mangle_json_hdr0) for a metadata size of mda.
func (c *genCase) writeHdr0(mda int, kill bool) {
	copy(c.img, c.area(c.hdr0, c.json0, mda, kill))
}

// writeHdr1 writes the secondary copy at mda (lib_mangle_json_hdr1).
func (c *genCase) writeHdr1(mda int, kill bool) {
	copy(c.img[mda:], c.area(c.hdr1, c.json1, mda, kill))
}

// killHdr1 overwrites the magic of the secondary binary header at the default offset.
func (c *genCase) killHdr1() { copy(c.img[refMetadataSize:], "VACUUM") }

// mangle0Kill1 writes the primary copy and kills the secondary (lib_mangle_json_hdr0_kill_hdr1):
// the case then rests on the primary alone.
func (c *genCase) mangle0Kill1() {
	c.writeHdr0(refMetadataSize, false)
	c.killHdr1()
}

// mangleBoth writes both copies with json0 and json1.
func (c *genCase) mangleBoth() {
	c.writeHdr0(refMetadataSize, false)
	c.writeHdr1(refMetadataSize, false)
}

// setHdrSize and setHdrOffset set the binary header fields hdr_size and hdr_offset.
func setHdrSize(hdr []byte, v uint64)   { binary.BigEndian.PutUint64(hdr[offHdrSize:], v) }
func setHdrOffset(hdr []byte, v uint64) { binary.BigEndian.PutUint64(hdr[offHdrOffset:], v) }

// writeChecksum stores an arbitrary (wrong) checksum in a binary header without recomputing it.
func writeChecksum(hdr []byte, seed string) {
	sum := sha256.Sum256([]byte(seed))
	copy(hdr[offCsum:], sum[:])
}

// rawJSON0 replaces the primary JSON area with raw bytes (for cases that are not JSON the
// encoder could produce), zero-padded.
func (c *genCase) rawJSON0(b []byte) { c.json0 = c.padJSON(b, refMetadataSize-binHeaderSize) }

// json0Text is the primary JSON text.
func (c *genCase) json0Text() []byte { return bytes.Clone(jsonAreaText(c.json0)) }

// obj returns m[path...] as an object, failing the test when it is not one.
func (c *genCase) obj(m map[string]any, path ...string) map[string]any {
	cur := m
	for _, p := range path {
		next, ok := cur[p].(map[string]any)
		require.True(c.t, ok, "no object at %v", path)
		cur = next
	}
	return cur
}

// num returns a decimal-string or JSON number value as a uint64.
func (c *genCase) num(v any) uint64 {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case json.Number:
		s = x.String()
	default:
		c.t.Fatalf("not a number: %v", v)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	require.NoError(c.t, err)
	return n
}

// str formats a uint64 as LUKS2's decimal string.
func str(n uint64) string { return strconv.FormatUint(n, 10) }

// metadataSizeCase moves the reference to a metadata size of mda (the generate-luks2-
// metadata-size-* family): keyslot areas shift by twice the growth, json_size follows, the
// data segment moves to 16 MiB, both binary headers get the new size. areaShiftAdjust and
// extra adjust the JSON for the inv-* variants; hdrSize0/1 override the binary header sizes;
// secondary (the *-secondary generators) sets the secondary's hdr_offset to mda and kills the
// primary, where the others kill the secondary.
type metadataSize struct {
	mda             int
	areaShiftAdjust int64
	extra           func(c *genCase, m map[string]any)
	hdrSize0        uint64
	hdrSize1        uint64
	secondary       bool
}

func (c *genCase) metadataSize(p metadataSize) {
	jsonSize := p.mda - binHeaderSize
	shift := int64(2*(p.mda-refMetadataSize)) + p.areaShiftAdjust
	// The generators move only the JSON, since cryptsetup's test only runs luksDump; the
	// key material moves too here, so that the valid cases also unlock.
	type move struct {
		to       int64
		material []byte
	}
	var moves []move
	c.editSized(jsonSize, func(m map[string]any) {
		for _, ks := range c.obj(m, "keyslots") {
			a := ks.(map[string]any)["area"].(map[string]any)
			off, size := c.num(a["offset"]), c.num(a["size"])
			moves = append(moves, move{int64(off) + shift, bytes.Clone(c.img[off : off+size])})
			a["offset"] = fmt.Sprint(int64(off) + shift)
		}
		c.obj(m, "config")["json_size"] = str(uint64(jsonSize))
		c.obj(m, "segments", "0")["offset"] = str(refBigDataOffset)
		if p.extra != nil {
			p.extra(c, m)
		}
	})
	size0, size1 := uint64(p.mda), uint64(p.mda)
	if p.hdrSize0 != 0 {
		size0 = p.hdrSize0
	}
	if p.hdrSize1 != 0 {
		size1 = p.hdrSize1
	}
	setHdrSize(c.hdr0, size0)
	setHdrSize(c.hdr1, size1)
	if p.secondary {
		setHdrOffset(c.hdr1, uint64(p.mda))
	}
	for _, mv := range moves {
		copy(c.img[mv.to:], mv.material)
	}
	c.writeHdr0(p.mda, p.secondary)
	c.writeHdr1(p.mda, !p.secondary)
}

// sparse holds an image as its non-zero 4 KiB blocks, so that a table of 16 MiB cases
// does not keep gigabytes alive.
type sparse struct {
	size   int
	blocks map[int][]byte
}

func toSparse(image []byte) sparse {
	s := sparse{size: len(image), blocks: map[int][]byte{}}
	for off := 0; off < len(image); off += 4096 {
		b := image[off:min(off+4096, len(image))]
		if !allZero(b) {
			s.blocks[off] = bytes.Clone(b)
		}
	}
	return s
}

// zeroBlock is what allZero compares with, 4 KiB at a time.
var zeroBlock [4096]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
