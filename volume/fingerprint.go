package volume

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strconv"
	"sync"

	"crkvol/keyslot"
)

// A volume's verification fingerprint (Entry.Verified) says that this Manager proved, by
// unwrapping the token's passphrase and opening the keyslot with it, that the volume opens
// in one exact state of its image: the fingerprint is a hash of everything that proof
// depends on. A rewrap that finds the same fingerprint skips the proof (an unwrap at the key
// service and a PBKDF2 + anti-forensic merge, about a millisecond of CPU); any change to one
// of those bytes (damage, a hand edit, another tool) gives another fingerprint, and the full
// check runs. After a rewrap the fingerprint moves to the new ciphertext: the key service
// guarantees it holds the same passphrase.
//
// What the proof depends on, and so the fingerprint covers: the volume's UUID (the AAD) and
// key id, the token's ciphertext, the keyslot's JSON object, the JSON objects of the digests
// bound to the keyslot, the data segment's JSON object (segment 0, which the volume key is
// checked for), and the keyslot area's bytes, through their CRC-32C: a checksum detects
// damage, and whoever can write the image file can destroy the volume anyway. The metadata
// is read from the header copy the image was opened from, and only when that copy still has
// the sequence number the image was opened at.

// fingerprintVersion starts every fingerprint hash: a change of what is hashed changes it, so
// that fingerprints of an older rule never match.
const fingerprintVersion = "crkvol verified v1\x00"

// keyslotState is the SHA-256 of the parts of an image's state a keyslot's opening depends on
// (all but the volume's identity and the token's ciphertext, which fingerprint adds).
type keyslotState [sha256.Size]byte

// fingerprint returns the fingerprint of the keyslot state s holding the passphrase wrapped
// as ciphertext (the token's member) by key keyID for the volume with LUKS2 UUID uuid.
func (s keyslotState) fingerprint(uuid, keyID, ciphertext string) string {
	h := sha256.New()
	h.Write([]byte(fingerprintVersion))
	h.Write(s[:])
	for _, p := range [...]string{uuid, keyID, ciphertext} {
		writeLenPrefixed(h, []byte(p))
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0]))
}

// writeLenPrefixed writes p to w after its length, so that no two lists of parts hash alike.
func writeLenPrefixed(w io.Writer, p []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(p)))
	w.Write(n[:])
	w.Write(p)
}

// errStateChanged means the header copy read for a fingerprint is not the one the image was
// opened from (another process committed since, or the copy is damaged): no fingerprint,
// so the full check runs.
var errStateChanged = errors.New("volume: the header changed since the image was read")

// fingerprintBufSize is the size of the buffers the keyslot area is checksummed through.
const fingerprintBufSize = 64 << 10

// fingerprintBufs hands out the buffers of readKeyslotState.
type fingerprintBufs struct{ pool sync.Pool }

func (b *fingerprintBufs) get() *[]byte {
	if p, ok := b.pool.Get().(*[]byte); ok {
		return p
	}
	buf := make([]byte, fingerprintBufSize)
	return &buf
}

func (b *fingerprintBufs) put(p *[]byte) { b.pool.Put(p) }

// castagnoli is the CRC-32C table (crc32 uses the CPU's instruction with it).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// luks2Metadata is what a fingerprint takes of a LUKS2 header's JSON: the objects as they are
// stored, undecoded.
type luks2Metadata struct {
	Keyslots map[string]json.RawMessage `json:"keyslots"`
	Digests  map[string]json.RawMessage `json:"digests"`
	Segments map[string]json.RawMessage `json:"segments"`
}

// luks2Binding is what a digest object says it covers.
type luks2Binding struct {
	Keyslots []string `json:"keyslots"`
	Segments []string `json:"segments"`
}

// LUKS2 binary header: the magic of each copy and where the fields read here are.
var (
	luks2MagicPrimary   = []byte("LUKS\xba\xbe")
	luks2MagicSecondary = []byte("SKUL\xba\xbe")
)

const (
	luks2BinHeaderSize = 4096
	luks2OffHdrSize    = 8
	luks2OffSeqID      = 16
)

// readKeyslotState reads from dev the state keyslot slot of img opens in (see the top of this
// file): the metadata from the header copy img was read from, the keyslot area in chunks.
// It fails with errStateChanged when that copy no longer has img's sequence number.
func (m *Manager) readKeyslotState(dev io.ReaderAt, img *keyslot.Image, slot int) (keyslotState, error) {
	var st keyslotState
	var area keyslot.SlotInfo
	found := false
	for _, ks := range img.Keyslots() {
		if ks.ID == slot && ks.Type == "luks2" {
			area, found = ks, true
			break
		}
	}
	if !found {
		return st, fmt.Errorf("volume: keyslot %d: %w", slot, ErrBadToken)
	}
	health := img.Health()
	var off uint64
	var magic []byte
	switch {
	case health.Primary.Err == nil:
		off, magic = health.Primary.Offset, luks2MagicPrimary
	case health.Secondary.Err == nil:
		off, magic = health.Secondary.Offset, luks2MagicSecondary
	default:
		return st, errStateChanged
	}
	size := img.MetadataSize()
	if size <= luks2BinHeaderSize || size > 4<<20 {
		return st, errStateChanged
	}
	var hdr []byte
	if size <= fingerprintBufSize {
		bp := m.fpBufs.get()
		defer m.fpBufs.put(bp)
		hdr = (*bp)[:size]
	} else {
		hdr = make([]byte, size)
	}
	if _, err := dev.ReadAt(hdr, int64(off)); err != nil {
		return st, fmt.Errorf("volume: reading the LUKS2 header: %w", err)
	}
	if !bytes.Equal(hdr[:len(magic)], magic) ||
		binary.BigEndian.Uint64(hdr[luks2OffHdrSize:]) != size ||
		binary.BigEndian.Uint64(hdr[luks2OffSeqID:]) != img.SeqID() {
		return st, errStateChanged
	}
	text := hdr[luks2BinHeaderSize:]
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	h := sha256.New()
	h.Write([]byte(fingerprintVersion))
	if err := hashKeyslotMetadata(h, text, slot); err != nil {
		return st, err
	}
	crc, err := m.areaCRC(dev, int64(area.AreaOffset), int64(area.AreaSize))
	if err != nil {
		return st, err
	}
	var tail [24]byte
	binary.BigEndian.PutUint64(tail[0:], area.AreaOffset)
	binary.BigEndian.PutUint64(tail[8:], area.AreaSize)
	binary.BigEndian.PutUint32(tail[16:], crc)
	h.Write(tail[:])
	h.Sum(st[:0])
	return st, nil
}

// hashKeyslotMetadata writes to h what keyslot slot's opening depends on in the LUKS2 JSON
// text: the keyslot's object, the data segment's (segment 0) and every digest bound to the
// keyslot, each as stored. It fails with errStateChanged when the text is not such a JSON
// object or lacks one of them.
func hashKeyslotMetadata(h io.Writer, text []byte, slot int) error {
	var meta luks2Metadata
	if err := json.Unmarshal(text, &meta); err != nil {
		return fmt.Errorf("%w: %w", errStateChanged, err)
	}
	id := strconv.Itoa(slot)
	ksObj, ok1 := meta.Keyslots[id]
	segObj, ok2 := meta.Segments["0"]
	if !ok1 || !ok2 {
		return errStateChanged
	}
	writeLenPrefixed(h, ksObj)
	writeLenPrefixed(h, segObj)
	digests := make([]string, 0, len(meta.Digests))
	for d := range meta.Digests {
		digests = append(digests, d)
	}
	slices.Sort(digests)
	bound := 0
	for _, d := range digests {
		var b luks2Binding
		if err := json.Unmarshal(meta.Digests[d], &b); err != nil {
			return fmt.Errorf("%w: %w", errStateChanged, err)
		}
		if slices.Contains(b.Keyslots, id) {
			writeLenPrefixed(h, []byte(d))
			writeLenPrefixed(h, meta.Digests[d])
			bound++
		}
	}
	if bound == 0 {
		return errStateChanged
	}
	return nil
}

// areaCRC returns the CRC-32C of the size bytes of dev at off.
func (m *Manager) areaCRC(dev io.ReaderAt, off, size int64) (uint32, error) {
	bp := m.fpBufs.get()
	defer m.fpBufs.put(bp)
	buf := *bp
	var crc uint32
	for done := int64(0); done < size; {
		n := min(int64(len(buf)), size-done)
		if _, err := dev.ReadAt(buf[:n], off+done); err != nil {
			return 0, fmt.Errorf("volume: reading the keyslot area: %w", err)
		}
		crc = crc32.Update(crc, castagnoli, buf[:n])
		done += n
	}
	return crc, nil
}
