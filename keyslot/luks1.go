package keyslot

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"crkvol/internal/ident"
	"crkvol/sector"
)

// LUKS1: the format cryptsetup wrote before LUKS2 and the one QEMU writes inside qcow2 images
// (crypto/block-luks.c). The layout is the LUKS on-disk format specification 1.2.3
// (cryptsetup's docs/on-disk-format.pdf, struct luks_phdr in lib/luks1/luks.h): a 592-byte
// binary header, all integers big-endian, followed by the key material of eight keyslots.
const (
	// LUKS1HeaderSize is the size of the LUKS1 binary header with its eight keyslot entries.
	LUKS1HeaderSize = 592

	l1OffVersion    = 6
	l1OffCipherName = 8
	l1OffCipherMode = 40
	l1OffHashSpec   = 72
	l1OffPayload    = 104
	l1OffKeyBytes   = 108
	l1OffMKDigest   = 112
	l1OffMKSalt     = 132
	l1OffMKIter     = 164
	l1OffUUID       = 168
	l1OffSlots      = 208
	l1SlotSize      = 48
	l1StringLen     = 32
	l1UUIDLen       = 40
	l1DigestLen     = 20

	// LUKS1Slots is the number of keyslots of a LUKS1 header.
	LUKS1Slots = 8

	l1SlotActive   = 0x00AC71F3
	l1SlotInactive = 0x0000DEAD

	// l1HeaderSectors is where QEMU and cryptsetup put the first keyslot's material: 4096
	// bytes in, each slot's area rounded up to 4096 bytes.
	l1HeaderSectors = 4096 / 512
	// l1MinMaterialSector is the first sector key material may start at without overlapping
	// the 592-byte header (cryptsetup's LUKS_check_keyslots).
	l1MinMaterialSector = (LUKS1HeaderSize + 511) / 512
	// l1DigestIterations is the iteration count of the master-key digest FormatLUKS1 writes:
	// cryptsetup's minimum (LUKS_MKD_ITERATIONS_MIN). The master key is random and at least as
	// long as the digest, so iterations add no strength.
	l1DigestIterations = 1000
	// l1DefaultIterations is the keyslot iteration count FormatLUKS1 uses by default.
	l1DefaultIterations = 1000
)

// ErrLUKS1Header means a LUKS1 header fails validation: wrong magic or version, a field that
// is not NUL-terminated or not printable, a key size, offset or stripe count out of range, or
// keyslot material overlapping the header, another keyslot or the payload. The message names
// the field.
var ErrLUKS1Header = errors.New("invalid LUKS1 header")

// ErrLUKS1Passphrase means no active keyslot of a LUKS1 header opens with the passphrase. It
// matches ErrWrongPassphrase too.
var ErrLUKS1Passphrase = fmt.Errorf("LUKS1: %w", ErrWrongPassphrase)

// LUKS1 is a parsed and validated LUKS1 header ([ParseLUKS1]).
type LUKS1 struct {
	// CipherName, CipherMode and HashSpec are the header's strings, such as "aes",
	// "xts-plain64" and "sha256". HashSpec is the hash of every PBKDF2 and of the AF splitter.
	CipherName, CipherMode, HashSpec string
	// PayloadOffset is where the encrypted data starts, in 512-byte sectors; 0 for a detached
	// header. Inside qcow2 it is the size of the LUKS header area.
	PayloadOffset uint64
	// KeyBytes is the master key size: 16, 32, 48 or 64 (only 32 and 64, with aes in
	// xts-plain64 or xts-plain mode, can be unlocked).
	KeyBytes int
	// MKDigest is PBKDF2 over the master key with MKDigestSalt and MKDigestIterations, 20
	// bytes, which identifies the right master key.
	MKDigest           [20]byte
	MKDigestSalt       [32]byte
	MKDigestIterations uint32
	// UUID is the header's UUID, as written.
	UUID string
	// Slots are the eight keyslots.
	Slots [LUKS1Slots]LUKS1Slot
}

// LUKS1Slot is one keyslot of a LUKS1 header.
type LUKS1Slot struct {
	// Active says whether the keyslot holds a key (0x00AC71F3 on disk; 0x0000DEAD inactive).
	Active bool
	// Iterations and Salt are the keyslot's PBKDF2 parameters.
	Iterations uint32
	Salt       [32]byte
	// KeyMaterialOffset is where the AF-split, encrypted master key starts, in 512-byte
	// sectors from the start of the header.
	KeyMaterialOffset uint64
	// Stripes is the AF stripe count; always 4000.
	Stripes uint32
}

// CipherSpec returns the cipher in cryptsetup's notation, such as "aes-xts-plain64".
func (h *LUKS1) CipherSpec() string { return h.CipherName + "-" + h.CipherMode }

// ActiveSlots returns the numbers of the active keyslots, in order.
func (h *LUKS1) ActiveSlots() []int {
	var out []int
	for i, s := range h.Slots {
		if s.Active {
			out = append(out, i)
		}
	}
	return out
}

// ParseLUKS1 reads the LUKS1 header at offset 0 of r and validates it, as cryptsetup
// (lib/luks1/keymanage.c) and QEMU (qcrypto_block_luks_check_header) do before using one,
// and more: every string NUL-terminated and printable, a hash this package implements, a key
// size of 16, 32, 48 or 64 bytes, 4000 stripes in every keyslot, keyslot material after the
// header, before the payload (unless the payload offset is 0, a detached header) and not
// overlapping another keyslot's, PBKDF2 iteration counts of at least 1 and at most
// MaxPBKDF2Iterations, and a UUID in the 8-4-4-4-12 form. size is how many bytes of r belong
// to the LUKS area — a plain image's file size, or the length of a qcow2 image's LUKS header
// extension — and every active keyslot's material must lie inside it. Errors wrap
// ErrLUKS1Header, ErrUnsupported (a hash) or ErrKDFLimits (an iteration count).
func ParseLUKS1(r io.ReaderAt, size int64) (*LUKS1, error) {
	if size < LUKS1HeaderSize {
		return nil, fmt.Errorf("%w: the LUKS area is %d bytes, shorter than the %d-byte header", ErrLUKS1Header, size, LUKS1HeaderSize)
	}
	b := make([]byte, LUKS1HeaderSize)
	if n, err := r.ReadAt(b, 0); n < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: truncated: %d of %d header bytes", ErrLUKS1Header, n, LUKS1HeaderSize)
		}
		return nil, fmt.Errorf("keyslot: reading LUKS1 header: %w", err)
	}
	return parseLUKS1(b, size)
}

// parseLUKS1 decodes and validates the 592 bytes of a LUKS1 header.
func parseLUKS1(b []byte, size int64) (*LUKS1, error) {
	if !bytes.Equal(b[:len(magicPrimary)], magicPrimary) {
		return nil, fmt.Errorf("%w: bad magic %x", ErrLUKS1Header, b[:len(magicPrimary)])
	}
	if v := binary.BigEndian.Uint16(b[l1OffVersion:]); v != 1 {
		return nil, fmt.Errorf("%w: version %d, want 1", ErrLUKS1Header, v)
	}
	h := &LUKS1{}
	var err error
	if h.CipherName, err = luks1String(b[l1OffCipherName:l1OffCipherName+l1StringLen], "cipher-name"); err != nil {
		return nil, err
	}
	if h.CipherMode, err = luks1String(b[l1OffCipherMode:l1OffCipherMode+l1StringLen], "cipher-mode"); err != nil {
		return nil, err
	}
	if h.HashSpec, err = luks1String(b[l1OffHashSpec:l1OffHashSpec+l1StringLen], "hash-spec"); err != nil {
		return nil, err
	}
	if _, err := hashByName(h.HashSpec); err != nil {
		return nil, fmt.Errorf("LUKS1 hash-spec: %w", err)
	}
	h.PayloadOffset = uint64(binary.BigEndian.Uint32(b[l1OffPayload:]))
	if h.PayloadOffset != 0 && h.PayloadOffset < l1MinMaterialSector {
		return nil, fmt.Errorf("%w: payload-offset %d sectors overlaps the header", ErrLUKS1Header, h.PayloadOffset)
	}
	kb := binary.BigEndian.Uint32(b[l1OffKeyBytes:])
	switch kb {
	case 16, 32, 48, 64:
		h.KeyBytes = int(kb)
	default:
		return nil, fmt.Errorf("%w: key-bytes %d, want 16, 32, 48 or 64", ErrLUKS1Header, kb)
	}
	copy(h.MKDigest[:], b[l1OffMKDigest:])
	copy(h.MKDigestSalt[:], b[l1OffMKSalt:])
	h.MKDigestIterations = binary.BigEndian.Uint32(b[l1OffMKIter:])
	if err := checkLUKS1Iterations(h.MKDigestIterations, "mk-digest-iter"); err != nil {
		return nil, err
	}
	uuid, err := luks1String(b[l1OffUUID:l1OffUUID+l1UUIDLen], "uuid")
	if err != nil {
		return nil, err
	}
	if _, err := ident.ParseUUID(uuid); err != nil {
		return nil, fmt.Errorf("%w: uuid %q: %w", ErrLUKS1Header, truncate(uuid), err)
	}
	h.UUID = uuid

	material := uint64(afSize(h.KeyBytes) / 512) // sectors of one keyslot's material
	for i := range h.Slots {
		sb := b[l1OffSlots+i*l1SlotSize : l1OffSlots+(i+1)*l1SlotSize]
		s := &h.Slots[i]
		switch st := binary.BigEndian.Uint32(sb[0:]); st {
		case l1SlotActive:
			s.Active = true
		case l1SlotInactive:
		default:
			return nil, fmt.Errorf("%w: keyslot %d: state 0x%08x is neither active (0x%08x) nor inactive (0x%08x)",
				ErrLUKS1Header, i, st, l1SlotActive, l1SlotInactive)
		}
		s.Iterations = binary.BigEndian.Uint32(sb[4:])
		copy(s.Salt[:], sb[8:40])
		s.KeyMaterialOffset = uint64(binary.BigEndian.Uint32(sb[40:]))
		s.Stripes = binary.BigEndian.Uint32(sb[44:])
		if s.Stripes != afStripes {
			return nil, fmt.Errorf("%w: keyslot %d: %d stripes, want %d", ErrLUKS1Header, i, s.Stripes, afStripes)
		}
		if s.Active {
			if err := checkLUKS1Iterations(s.Iterations, fmt.Sprintf("keyslot %d iterations", i)); err != nil {
				return nil, err
			}
		}
		if s.KeyMaterialOffset < l1MinMaterialSector {
			return nil, fmt.Errorf("%w: keyslot %d: key-material-offset %d sectors overlaps the header", ErrLUKS1Header, i, s.KeyMaterialOffset)
		}
		end := s.KeyMaterialOffset + material
		if h.PayloadOffset != 0 && end > h.PayloadOffset {
			return nil, fmt.Errorf("%w: keyslot %d: key material at sectors [%d, %d) overlaps the payload at sector %d",
				ErrLUKS1Header, i, s.KeyMaterialOffset, end, h.PayloadOffset)
		}
		if s.Active && end*512 > uint64(size) {
			return nil, fmt.Errorf("%w: keyslot %d: key material at bytes [%d, %d) lies outside the %d-byte LUKS area",
				ErrLUKS1Header, i, s.KeyMaterialOffset*512, end*512, size)
		}
	}
	order := []int{0, 1, 2, 3, 4, 5, 6, 7}
	slices.SortStableFunc(order, func(x, y int) int {
		return cmp.Compare(h.Slots[x].KeyMaterialOffset, h.Slots[y].KeyMaterialOffset)
	})
	for k := 1; k < len(order); k++ {
		prev, next := order[k-1], order[k]
		if h.Slots[next].KeyMaterialOffset < h.Slots[prev].KeyMaterialOffset+material {
			lo, hi := min(prev, next), max(prev, next)
			return nil, fmt.Errorf("%w: keyslots %d and %d: key material overlaps", ErrLUKS1Header, lo, hi)
		}
	}
	return h, nil
}

// luks1String returns a NUL-terminated string field, which must be non-empty printable ASCII
// without spaces.
func luks1String(b []byte, name string) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", fmt.Errorf("%w: %s is not NUL-terminated", ErrLUKS1Header, name)
	}
	if i == 0 {
		return "", fmt.Errorf("%w: %s is empty", ErrLUKS1Header, name)
	}
	for _, c := range b[:i] {
		if c <= ' ' || c > '~' {
			return "", fmt.Errorf("%w: %s %q has a byte that is not printable ASCII", ErrLUKS1Header, name, b[:i])
		}
	}
	return string(b[:i]), nil
}

// checkLUKS1Iterations refuses a PBKDF2 iteration count of 0 (QEMU's check) or above
// MaxPBKDF2Iterations, so that a crafted header cannot make an unlock run for days.
func checkLUKS1Iterations(n uint32, name string) error {
	if n == 0 || uint64(n) > MaxPBKDF2Iterations {
		return fmt.Errorf("%w: LUKS1 %s %d, want 1 to %d", ErrKDFLimits, name, n, uint64(MaxPBKDF2Iterations))
	}
	return nil
}

// unlockable reports whether this package can decrypt the header's keyslots: aes in XTS mode
// with a plain64 (or plain, identical below 2 TiB of keyslot material) IV, 256- or 512-bit
// key.
func (h *LUKS1) unlockable() error {
	if h.CipherName == "aes" && (h.CipherMode == "xts-plain64" || h.CipherMode == "xts-plain") && (h.KeyBytes == 32 || h.KeyBytes == 64) {
		return nil
	}
	return fmt.Errorf("%w: LUKS1 cipher %s with a %d-bit key (only aes-xts-plain64 with a 256- or 512-bit key)",
		ErrUnsupported, truncate(h.CipherSpec()), h.KeyBytes*8)
}

// Adoptable reports whether crkvol can adopt the image of this header once cryptsetup
// convert --type luks2 has converted it: its data must be encrypted as crkvol volumes' are,
// with aes-xts-plain64 ([SegmentEncryption]) and a 256- or 512-bit key. If not, the error
// matches ErrUnsupported and names the cipher and key size.
func (h *LUKS1) Adoptable() error {
	if h.CipherSpec() == SegmentEncryption && (h.KeyBytes == 32 || h.KeyBytes == 64) {
		return nil
	}
	return fmt.Errorf("LUKS1 data cipher %s with a %d-bit key is %w: crkvol volumes use %s with a 256- or 512-bit key",
		truncate(h.CipherSpec()), h.KeyBytes*8, ErrUnsupported, SegmentEncryption)
}

// MaxLUKS1Iterations is the most PBKDF2 work [LUKS1.Unlock] and [LUKS1.UnlockSlot] do for
// one call: the sum, over the keyslots they would try, of the keyslot's iterations plus the
// master-key digest's iterations (each tried keyslot's candidate key is checked against the
// digest). A header asking for more is refused before anything is derived, with an error
// matching ErrKDFLimits, so that a crafted header (eight active keyslots and a digest at
// MaxPBKDF2Iterations each, allowed one by one, would take hours) cannot make an unlock run
// for longer than about 20 seconds of sha256 work on crkvol's development machine, where
// 2^20 iterations for a 64-byte key take 0.34 s; sha1 with a 64-byte key (four PBKDF2
// blocks) takes about twice as long. Real headers are far below it: measured on that
// machine, qemu-img with its default iter-time of 2000 ms wrote 8316750 keyslot and 2065015
// digest iterations (10.4 M in all), and cryptsetup luksFormat --type luks1 with its defaults
// 4328486 and 282787 (4.6 M). The cap admits such a header made on a machine six times faster,
// or several keyslots made here; a header over it can still be opened with [LUKS1.UnlockSlot]
// naming the keyslot, when that keyslot alone is within it.
const MaxLUKS1Iterations = 1 << 26

// work returns the PBKDF2 iterations an unlock trying the given keyslots derives.
func (h *LUKS1) work(slots []int) uint64 {
	var n uint64
	for _, i := range slots {
		n += uint64(h.Slots[i].Iterations) + uint64(h.MKDigestIterations)
	}
	return n
}

// checkWork refuses an unlock of the given keyslots whose PBKDF2 work exceeds
// MaxLUKS1Iterations.
func (h *LUKS1) checkWork(slots []int) error {
	if w := h.work(slots); w > MaxLUKS1Iterations {
		var parts []string
		for _, i := range slots {
			parts = append(parts, fmt.Sprintf("keyslot %d: %d", i, h.Slots[i].Iterations))
		}
		return fmt.Errorf("%w: LUKS1 unlock would derive %d PBKDF2 iterations (%s, plus %d for the master-key digest per keyslot), over the limit of %d",
			ErrKDFLimits, w, strings.Join(parts, ", "), h.MKDigestIterations, MaxLUKS1Iterations)
	}
	return nil
}

// Unlock tries passphrase on each active keyslot in order and returns the master key of the
// first that opens, checked against the master-key digest in constant time, and that
// keyslot's number. r must be the reader the header was parsed from. Before deriving
// anything it refuses, with an error matching ErrKDFLimits that names the numbers, a header
// whose active keyslots together ask for more than MaxLUKS1Iterations (see there). Key
// derivation stops, with an error wrapping ctx.Err(), when ctx ends. A passphrase no keyslot
// accepts gives an error matching ErrLUKS1Passphrase (and ErrWrongPassphrase); a cipher other
// than aes-xts-plain64 with a 256- or 512-bit key gives one matching ErrUnsupported that
// names it. The caller should clear the key when done.
func (h *LUKS1) Unlock(ctx context.Context, r io.ReaderAt, passphrase []byte) ([]byte, int, error) {
	if err := h.unlockable(); err != nil {
		return nil, -1, err
	}
	active := h.ActiveSlots()
	if len(active) == 0 {
		return nil, -1, fmt.Errorf("%w: no keyslot is active", ErrLUKS1Passphrase)
	}
	if err := h.checkWork(active); err != nil {
		return nil, -1, err
	}
	for _, i := range active {
		key, ok, err := h.tryslot(ctx, r, passphrase, i)
		if err != nil {
			return nil, -1, err
		}
		if ok {
			return key, i, nil
		}
	}
	return nil, -1, fmt.Errorf("%w (tried keyslots %v)", ErrLUKS1Passphrase, active)
}

// UnlockSlot tries passphrase on keyslot slot only, with the checks of [LUKS1.Unlock] — the
// work of that keyslot and the digest must be within MaxLUKS1Iterations — and returns the
// verified master key. A slot number outside 0 to 7 gives an error matching
// ErrKeyslotNotFound; an inactive keyslot, or one the passphrase does not open, an error
// matching ErrLUKS1Passphrase. Use it to open with the keyslot known to hold the passphrase
// (the one Unlock reported) without trying the others. The caller should clear the key.
func (h *LUKS1) UnlockSlot(ctx context.Context, r io.ReaderAt, passphrase []byte, slot int) ([]byte, error) {
	if slot < 0 || slot >= LUKS1Slots {
		return nil, fmt.Errorf("%w: LUKS1 keyslot %d (0 to %d)", ErrKeyslotNotFound, slot, LUKS1Slots-1)
	}
	if err := h.unlockable(); err != nil {
		return nil, err
	}
	if !h.Slots[slot].Active {
		return nil, fmt.Errorf("%w: keyslot %d is not active", ErrLUKS1Passphrase, slot)
	}
	if err := h.checkWork([]int{slot}); err != nil {
		return nil, err
	}
	key, ok, err := h.tryslot(ctx, r, passphrase, slot)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w (tried keyslot %d)", ErrLUKS1Passphrase, slot)
	}
	return key, nil
}

// tryslot derives keyslot i's key from passphrase, decrypts and merges its material and
// checks the result against the master-key digest: the master key and true if it matches.
func (h *LUKS1) tryslot(ctx context.Context, r io.ReaderAt, passphrase []byte, i int) ([]byte, bool, error) {
	hi, err := hashByName(h.HashSpec)
	if err != nil {
		return nil, false, err
	}
	s := &h.Slots[i]
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("keyslot %d: key derivation: %w", i, err)
	}
	material := make([]byte, afSize(h.KeyBytes))
	defer clear(material)
	off := int64(s.KeyMaterialOffset * 512)
	if n, err := r.ReadAt(material, off); n < len(material) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, false, fmt.Errorf("keyslot: reading LUKS1 keyslot %d material at %d: %w", i, off, err)
	}
	slotKey, err := pbkdf2Derive(ctx, passphrase, s.Salt[:], int(s.Iterations), h.KeyBytes, hi)
	if err != nil {
		return nil, false, fmt.Errorf("keyslot %d: %w", i, err)
	}
	defer clear(slotKey)
	if err := withAreaCipher(slotKey, func(c *sector.Cipher) { c.DecryptSectors(material, material, 0) }); err != nil {
		// Only a derived key with equal halves, as likely as guessing the key.
		return nil, false, nil
	}
	key, err := afMerge(material, h.KeyBytes, h.HashSpec)
	if err != nil {
		return nil, false, fmt.Errorf("keyslot %d: %w", i, err)
	}
	ok, err := h.checkDigest(ctx, key)
	if err != nil {
		clear(key)
		return nil, false, fmt.Errorf("keyslot %d: %w", i, err)
	}
	if !ok {
		clear(key)
		return nil, false, nil
	}
	return key, true, nil
}

// checkDigest reports, in constant time, whether key matches the master-key digest.
func (h *LUKS1) checkDigest(ctx context.Context, key []byte) (bool, error) {
	hi, err := hashByName(h.HashSpec)
	if err != nil {
		return false, err
	}
	got, err := pbkdf2Derive(ctx, key, h.MKDigestSalt[:], int(h.MKDigestIterations), l1DigestLen, hi)
	if err != nil {
		return false, err
	}
	defer clear(got)
	return subtle.ConstantTimeCompare(got, h.MKDigest[:]) == 1, nil
}

// LUKS1Options are the parameters of [FormatLUKS1]; the zero value gives QEMU's cipher and
// hash (aes-256-xts, sha256) but 1000 keyslot iterations, not QEMU's iteration time (see
// Iterations).
type LUKS1Options struct {
	// KeyBytes is the master key size, 32 or 64 (aes-128-xts or aes-256-xts); 0 means the
	// length of the master key given. It must equal that length.
	KeyBytes int
	// Hash is the PBKDF2 and AF hash: "sha1", "sha256" or "sha512"; default sha256.
	Hash string
	// Iterations is the keyslot's PBKDF2 iteration count, at least 1000 (cryptsetup's
	// minimum) and at most MaxLUKS1Iterations-1000 (so that [LUKS1.Unlock] opens the
	// header); 0 means 1000. [PBKDF2Iterations] turns an iteration time into a count. Stretching protects a passphrase a person chose; crkvol's
	// passphrases are 32 random bytes, which no iteration count makes stronger, so the
	// minimum only keeps every open fast.
	Iterations int
	// UUID is the header's UUID in the 8-4-4-4-12 form; default random.
	UUID string
	// Rand is the source of the salts, AF stripes and UUID; default crypto/rand.
	Rand io.Reader
}

// FormatLUKS1 returns a complete LUKS1 header area holding masterKey in keyslot 0 under
// passphrase, cipher aes-xts-plain64: the 592-byte header, then keyslot 0's encrypted,
// AF-split (4000 stripes) key material at 4096 bytes, and room for the other seven keyslots,
// each area aligned to 4096 bytes — QEMU's layout (qcrypto_block_luks_create), which
// cryptsetup opens too. The result is PayloadOffset × 512 bytes long, a multiple of 4096
// (1052672 bytes for a 32-byte key, 2068480 for a 64-byte one): the header of a plain image
// whose encrypted data follows it, or the LUKS header area of a qcow2 image, where QEMU
// expects exactly that length. Key derivation stops when ctx ends.
func FormatLUKS1(ctx context.Context, masterKey, passphrase []byte, opts LUKS1Options) ([]byte, error) {
	kb := opts.KeyBytes
	if kb == 0 {
		kb = len(masterKey)
	}
	if kb != 32 && kb != 64 {
		return nil, fmt.Errorf("keyslot: LUKS1 key size %d bytes, want 32 or 64", kb)
	}
	if len(masterKey) != kb {
		return nil, fmt.Errorf("keyslot: LUKS1 master key is %d bytes, want %d", len(masterKey), kb)
	}
	if len(passphrase) == 0 {
		return nil, fmt.Errorf("keyslot: LUKS1 passphrase is empty")
	}
	hashName := opts.Hash
	if hashName == "" {
		hashName = "sha256"
	}
	hi, err := hashByName(hashName)
	if err != nil {
		return nil, fmt.Errorf("keyslot: LUKS1 hash: %w", err)
	}
	iter := opts.Iterations
	if iter == 0 {
		iter = l1DefaultIterations
	}
	if iter < MinPBKDF2Iterations || iter > MaxPBKDF2Iterations {
		return nil, fmt.Errorf("%w: LUKS1 keyslot iterations %d, want %d to %d", ErrKDFLimits, iter, MinPBKDF2Iterations, uint64(MaxPBKDF2Iterations))
	}
	if iter+l1DigestIterations > MaxLUKS1Iterations {
		return nil, fmt.Errorf("%w: LUKS1 keyslot iterations %d: with the %d of the master-key digest, over the unlock limit of %d (MaxLUKS1Iterations)",
			ErrKDFLimits, iter, l1DigestIterations, MaxLUKS1Iterations)
	}
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	uuid := opts.UUID
	if uuid == "" {
		if uuid, err = newUUID(rnd); err != nil {
			return nil, err
		}
	} else if uuid, err = ident.CanonicalUUID(uuid); err != nil {
		return nil, fmt.Errorf("keyslot: LUKS1 UUID %q: %w", truncate(opts.UUID), err)
	}

	// Each keyslot's material rounded up to 4096 bytes, the first at 4096: QEMU's layout,
	// and cryptsetup's keyslot placement.
	materialSectors := afSize(kb) / 512
	stride := (materialSectors + l1HeaderSectors - 1) / l1HeaderSectors * l1HeaderSectors
	payload := l1HeaderSectors + LUKS1Slots*stride
	area := make([]byte, payload*512)

	b := area[:LUKS1HeaderSize]
	copy(b, magicPrimary)
	binary.BigEndian.PutUint16(b[l1OffVersion:], 1)
	copy(b[l1OffCipherName:], "aes")
	copy(b[l1OffCipherMode:], "xts-plain64")
	copy(b[l1OffHashSpec:], hashName)
	binary.BigEndian.PutUint32(b[l1OffPayload:], uint32(payload))
	binary.BigEndian.PutUint32(b[l1OffKeyBytes:], uint32(kb))
	if _, err := io.ReadFull(rnd, b[l1OffMKSalt:l1OffMKSalt+saltSize]); err != nil {
		return nil, fmt.Errorf("keyslot: reading random LUKS1 digest salt: %w", err)
	}
	binary.BigEndian.PutUint32(b[l1OffMKIter:], l1DigestIterations)
	digest, err := pbkdf2Derive(ctx, masterKey, b[l1OffMKSalt:l1OffMKSalt+saltSize], l1DigestIterations, l1DigestLen, hi)
	if err != nil {
		return nil, err
	}
	copy(b[l1OffMKDigest:], digest)
	copy(b[l1OffUUID:], uuid)
	for i := range LUKS1Slots {
		sb := b[l1OffSlots+i*l1SlotSize : l1OffSlots+(i+1)*l1SlotSize]
		binary.BigEndian.PutUint32(sb[0:], l1SlotInactive)
		binary.BigEndian.PutUint32(sb[40:], uint32(l1HeaderSectors+uint64(i)*stride))
		binary.BigEndian.PutUint32(sb[44:], afStripes)
	}

	// Keyslot 0: PBKDF2 of the passphrase keys aes-xts-plain64 over the AF-split master key,
	// sector numbers counted from the start of the key material.
	s0 := b[l1OffSlots : l1OffSlots+l1SlotSize]
	binary.BigEndian.PutUint32(s0[0:], l1SlotActive)
	binary.BigEndian.PutUint32(s0[4:], uint32(iter))
	salt := s0[8:40]
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return nil, fmt.Errorf("keyslot: reading random LUKS1 keyslot salt: %w", err)
	}
	slotKey, err := pbkdf2Derive(ctx, passphrase, salt, iter, kb, hi)
	if err != nil {
		return nil, err
	}
	defer clear(slotKey)
	split, err := afSplit(masterKey, hashName, rnd)
	if err != nil {
		return nil, err
	}
	material := area[l1HeaderSectors*512 : l1HeaderSectors*512+afSize(kb)]
	copy(material, split)
	clear(split)
	if err := withAreaCipher(slotKey, func(c *sector.Cipher) { c.EncryptSectors(material, material, 0) }); err != nil {
		clear(material)
		return nil, fmt.Errorf("keyslot: LUKS1 keyslot key: %w", err)
	}
	return area, nil
}
