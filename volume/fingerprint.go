package volume

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"crkvol/keyslot"
)

// A volume's verification fingerprint (Entry.Verified) says that this Manager proved, by
// unwrapping the token's passphrase and opening the keyslot with it, that the volume opens
// in one exact state of its image: the fingerprint is a hash of everything that proof
// depends on. A rewrap that finds the same fingerprint skips the proof (an unwrap at the key
// service and a PBKDF2 + anti-forensic merge, about a millisecond of CPU); any change to the
// metadata it covers, and any accidental change to the keyslot area (damage, a hand edit,
// another tool), gives another fingerprint, and the full check runs. After a rewrap the fingerprint moves to the new ciphertext: the key service
// guarantees it holds the same passphrase.
//
// What the proof depends on, and so the fingerprint covers: the volume's UUID (the AAD) and
// key id, the token's ciphertext, the keyslot's JSON object, the JSON objects of the digests
// bound to the keyslot, the data segment's JSON object (segment 0, which the volume key is
// checked for), and the keyslot area's bytes, through their CRC-32C. The metadata objects are
// those the LUKS2 parser uses, by their exact names: a lookalike member (another letter
// case, a Unicode lookalike) is not them. The area's CRC detects damage, not a deliberate
// edit: someone who can write the image file can make an area with the same CRC that no
// longer opens, and a rotation then rewraps the volume without noticing. That is within what
// such a writer can do anyway (destroy the volume, silently, in its keyslot area or its data,
// which nothing checks), gains them no key and no data, and touches no other volume; a
// SHA-256 of the 252 KiB area would cost about 150 µs per volume, against 10 for the CRC.
// `crkvol volume status` and the next open find such a volume. The metadata
// is the text of the header copy the image was read (opened, reloaded or updated) from, as
// the image holds it; the keyslot area is read when the fingerprint is made.

// fingerprintVersion starts every fingerprint hash: a change of what is hashed changes it, so
// that fingerprints of an older rule never match.
const fingerprintVersion = "crkvol verified v1\x00"

// keyslotState is the SHA-256 of the parts of an image's state a keyslot's opening depends on
// (all but the volume's identity and the token's ciphertext, which fingerprint adds).
type keyslotState [sha256.Size]byte

// fingerprint returns the fingerprint of the keyslot state s holding the passphrase wrapped
// as ciphertext (the token's member) by key keyID for the volume with LUKS2 UUID uuid.
func (s keyslotState) fingerprint(uuid, keyID, ciphertext string) string {
	// The bytes hashed, in a buffer on the stack for the usual sizes.
	var buf [512]byte
	b := append(buf[:0], fingerprintVersion...)
	b = append(b, s[:]...)
	for _, p := range [...]string{uuid, keyID, ciphertext} {
		b = lenPrefixed(b, p)
	}
	sum := sha256.Sum256(b)
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

// lenPrefixed appends p to b after its length, so that no two lists of parts hash alike.
func lenPrefixed[T string | []byte](b []byte, p T) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(p)))
	return append(b, p...)
}

// errStateChanged means the image's metadata lacks what a fingerprint covers (no such luks2
// keyslot, no segment 0, no digest bound to the keyslot): no fingerprint, so the full check
// runs, and reports what is wrong.
var errStateChanged = errors.New("volume: the keyslot state cannot be fingerprinted")

// fingerprintBufSize is the size of the buffers the keyslot area is checksummed through: a
// keyslot area of a key of up to 64 bytes (258,048 bytes, cryptsetup's for AES-XTS-512) in
// one read; larger ones in chunks.
const fingerprintBufSize = 256 << 10

// fingerprintBufsKept is how many idle buffers a Manager keeps for readKeyslotState.
const fingerprintBufsKept = 8

// fingerprintBufs hands out the buffers of readKeyslotState: a free list the Manager owns,
// of at most fingerprintBufsKept idle buffers, so that a pass reuses the same few buffers
// whatever the garbage collector does (a sync.Pool loses them at every collection).
type fingerprintBufs struct{ free chan *[]byte }

func (b *fingerprintBufs) get() *[]byte {
	select {
	case p := <-b.free:
		return p
	default:
		buf := make([]byte, fingerprintBufSize)
		return &buf
	}
}

func (b *fingerprintBufs) put(p *[]byte) {
	select {
	case b.free <- p:
	default: // enough are kept: this one is for the collector
	}
}

// castagnoli is the CRC-32C table (crc32 uses the CPU's instruction with it).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readKeyslotState returns the state keyslot slot of img opens in (see the top of this file):
// the metadata text of the header copy img was read from (keyslot.Image.KeyslotText, as
// stored: no second read of the header, no JSON decoding here), and the CRC-32C of the
// keyslot area as dev holds it now. It fails with errStateChanged when img has no luks2
// keyslot slot, no segment 0 or no digest bound to the keyslot.
func (m *Manager) readKeyslotState(dev io.ReaderAt, img *keyslot.Image, slot int) (keyslotState, error) {
	var st keyslotState
	area, err := luks2Keyslot(img, slot)
	if err != nil {
		return st, err
	}
	kt, err := img.KeyslotText(slot)
	if err != nil {
		return st, fmt.Errorf("%w: %w", errStateChanged, err)
	}
	crc, err := m.areaCRC(dev, int64(area.AreaOffset), int64(area.AreaSize))
	if err != nil {
		return st, err
	}
	// The bytes hashed, in a buffer on the stack for the usual sizes.
	var buf [2048]byte
	b := append(buf[:0], fingerprintVersion...)
	b = appendKeyslotText(b, kt)
	b = binary.BigEndian.AppendUint64(b, area.AreaOffset)
	b = binary.BigEndian.AppendUint64(b, area.AreaSize)
	b = binary.BigEndian.AppendUint32(b, crc)
	b = append(b, 0, 0, 0, 0) // the state's hash has always ended with a 24-byte field
	return sha256.Sum256(b), nil
}

// luks2Keyslot returns keyslot slot of img, which must be a luks2 keyslot (ErrBadToken
// otherwise: the token names a keyslot the image does not have).
func luks2Keyslot(img *keyslot.Image, slot int) (keyslot.SlotInfo, error) {
	for _, ks := range img.Keyslots() {
		if ks.ID == slot && ks.Type == "luks2" {
			return ks, nil
		}
	}
	return keyslot.SlotInfo{}, fmt.Errorf("volume: keyslot %d: %w", slot, ErrBadToken)
}

// appendKeyslotText appends to b what keyslot slot's opening depends on in the LUKS2 JSON
// text (kt), each part after its length: the keyslot's object, the data segment's (segment
// 0) and every digest bound to the keyslot (its id, then its object), ascending by id, each
// as stored.
func appendKeyslotText(b []byte, kt keyslot.KeyslotText) []byte {
	b = lenPrefixed(b, kt.Keyslot)
	b = lenPrefixed(b, kt.Segment)
	for _, d := range kt.Digests {
		b = lenPrefixed(b, []byte(d.ID))
		b = lenPrefixed(b, d.Text)
	}
	return b
}

// areaCRC returns the CRC-32C of the size bytes of dev at off: one read for an area of a
// key of up to 64 bytes.
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
