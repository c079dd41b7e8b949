package sector

import (
	"crypto/cipher"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
)

// IVUnit is the size in bytes of the unit in which sector numbers (and so XTS tweaks) count,
// whatever the sector size: the plain64 IV of LUKS2 is always a 512-byte sector number.
const IVUnit = 512

// MaxSectorSize is the largest sector size [New] accepts.
const MaxSectorSize = 4096

// Errors returned by [New]; test for them with errors.Is.
var (
	// ErrKeySize reports a key that is neither 32 nor 64 bytes long.
	ErrKeySize = errors.New("sector: invalid key size")
	// ErrWeakKey reports an XTS key whose two halves are equal.
	ErrWeakKey = errors.New("sector: weak key")
	// ErrSectorSize reports a sector size other than 512, 1024, 2048 or 4096.
	ErrSectorSize = errors.New("sector: unsupported sector size")
)

// Path names an implementation of the sector engine.
type Path string

// Implementations. New picks the fastest this CPU runs; NewPath forces one (for tests and
// benchmarks).
const (
	// PathGeneric is the portable Go implementation over crypto/aes.
	PathGeneric Path = "generic"
	// PathAESNI is amd64 assembly with AES-NI (and AVX), eight blocks in flight.
	PathAESNI Path = "aesni"
	// PathVAES is amd64 assembly with VAES and AVX-512 (F, VL, BW and VBMI2), sixteen blocks
	// in flight in four 512-bit registers.
	PathVAES Path = "vaes"
)

// Paths lists the implementations available on this machine and build, fastest first.
func Paths() []Path { return available() }

// Cipher encrypts and decrypts whole sectors with aes-xts-plain64. It is safe for concurrent
// use by multiple goroutines, [Cipher.Wipe] included.
type Cipher struct {
	data  cipher.Block // first key half: encrypts the data blocks
	tweak cipher.Block // second key half: encrypts the tweak
	size  int          // sector size in bytes (a power of two)
	shift uint         // log2(size): the hot path divides by shifting, not with DIV
	step  uint64       // IV units (512-byte sectors) per sector (a power of two)
	path  Path
	k1    schedule // data key schedule, for the assembly paths
	k2    schedule // tweak key schedule, for the assembly paths
	// wide holds, for the VAES path, from wideOff on, each round key of k1.enc, k1.dec and
	// k2.enc (in that order, wideKeys bytes each) broadcast to the four lanes of a 512-bit
	// register, so the assembly reads them with plain loads. wideOff puts them on a 64-byte
	// boundary (the Go heap does not move objects); a copied Cipher keeps the offset, so it
	// reads the same keys, perhaps unaligned, and wiping it leaves the original intact.
	wide    [3*wideKeys + 63]byte
	wideOff int
	// wiped is set (to 1, atomically) by Wipe before it clears any key. A call checks it
	// before and after its work, so a call that overlapped Wipe, and may have read cleared
	// keys, panics instead of returning (see Wipe). It is a plain uint32 with the
	// sync/atomic functions, not an atomic.Uint32, so that copying a Cipher stays legal.
	wiped uint32
	// laneOffs holds 0, step, 2·step, 3·step in the low quadwords of four 128-bit lanes,
	// then 4·step: the VAES path's sector numbering.
	laneOffs [80]byte
}

// New returns a Cipher for aes-xts-plain64 with the given key and sector size.
//
// The key is the whole XTS key as LUKS2 stores it: 32 bytes for AES-128-XTS or 64 bytes for
// AES-256-XTS, data-key half first. A key whose two halves are equal is refused, as
// IEEE 1619 and FIPS require. The sector size must be 512, 1024, 2048 or 4096.
// New keeps no reference to key.
func New(key []byte, sectorSize int) (*Cipher, error) {
	return NewPath(key, sectorSize, available()[0])
}

// NewPath is New with a chosen implementation, which must be one of Paths().
func NewPath(key []byte, sectorSize int, path Path) (*Cipher, error) {
	ok := false
	for _, p := range available() {
		ok = ok || p == path
	}
	if !ok {
		return nil, fmt.Errorf("sector: implementation %q is not available here (have %v)", path, available())
	}
	switch len(key) {
	case 32, 64:
	default:
		return nil, fmt.Errorf("%w: %d bytes, want 32 (AES-128-XTS) or 64 (AES-256-XTS)", ErrKeySize, len(key))
	}
	switch sectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("%w: %d bytes, want 512, 1024, 2048 or 4096", ErrSectorSize, sectorSize)
	}
	half := len(key) / 2
	if subtle.ConstantTimeCompare(key[:half], key[half:]) == 1 {
		return nil, fmt.Errorf("%w: the two halves of the %d-byte XTS key are equal", ErrWeakKey, len(key))
	}
	c := &Cipher{size: sectorSize, shift: uint(bits.TrailingZeros(uint(sectorSize))), step: uint64(sectorSize / IVUnit), path: path}
	if err := c.setKeys(key[:half], key[half:]); err != nil {
		return nil, err
	}
	return c, nil
}

// Path returns the implementation this Cipher runs.
func (c *Cipher) Path() Path { return c.path }

// Wipe zeroes the round keys of the assembly paths and makes the Cipher unusable: any later
// call panics with "sector: Cipher used after Wipe", rather than encrypting with zero keys.
// The crypto/aes schedules behind the portable path cannot be wiped: they are released with
// the Cipher.
//
// Wipe may run while other goroutines are inside EncryptSectors or DecryptSectors on c.
// Such a call either completes with the keys intact (it read them all before Wipe began) or
// panics with "sector: Cipher wiped during use" after clearing dst[:len(src)], so no call
// returns output made with half-wiped keys. Wipe does not wait for those calls: a caller
// who wants them to succeed stops issuing them first, and must if they run on goroutines
// that do not recover (a scheduler's helpers, say), where the panic would end the program.
// Calling Wipe more than once, even concurrently, is harmless. The check costs each call
// one more load of a flag it has just read, and no atomic read-modify-write.
func (c *Cipher) Wipe() {
	if !atomic.CompareAndSwapUint32(&c.wiped, 0, 1) {
		return
	}
	c.k1.wipe()
	c.k2.wipe()
	clear(c.wide[:])
}

// SectorSize returns the sector (XTS data unit) size in bytes.
func (c *Cipher) SectorSize() int { return c.size }

// SectorOf returns the 512-byte sector number of a byte offset within the encrypted segment,
// the value the firstSector arguments take. It panics if offset is not a multiple of
// SectorSize().
func (c *Cipher) SectorOf(offset uint64) uint64 {
	if offset%uint64(c.size) != 0 {
		panic(fmt.Sprintf("sector: offset %d is not a multiple of the %d-byte sector size", offset, c.size))
	}
	return offset / IVUnit
}

// EncryptSectors encrypts src into dst, one XTS data unit per sector.
//
// firstSector is the 512-byte sector number of src[0] within the segment (byte offset ÷ 512),
// whatever the sector size; the sector at src[k*SectorSize():] uses tweak
// firstSector + k*SectorSize()/512. So with 4096-byte sectors the second sector of the segment
// is sector 8, not 1. See [Cipher.SectorOf].
//
// Preconditions, whose violation is a programming error and panics: len(src) is a whole
// number of sectors; len(dst) >= len(src); dst and src overlap entirely or not at all;
// firstSector is a multiple of SectorSize()/512. dst and src may be the same slice.
// EncryptSectors does not allocate.
func (c *Cipher) EncryptSectors(dst, src []byte, firstSector uint64) {
	if !c.valid(dst, src, firstSector) {
		c.fail(dst, src, firstSector)
	}
	// One Go call down to the assembly: with one sector per call, the fewer instructions
	// between two calls, the more of the next call's tweak rounds run while this call's
	// last blocks are still in flight (see _asm/gen.go, func final).
	c.xts(dst[:len(src)], src, firstSector, false)
	if atomic.LoadUint32(&c.wiped) != 0 {
		c.failWiped(dst[:len(src)])
	}
}

// DecryptSectors decrypts src into dst; it is the inverse of [Cipher.EncryptSectors] and has
// the same sector numbering and preconditions.
func (c *Cipher) DecryptSectors(dst, src []byte, firstSector uint64) {
	if !c.valid(dst, src, firstSector) {
		c.fail(dst, src, firstSector)
	}
	c.xts(dst[:len(src)], src, firstSector, true)
	if atomic.LoadUint32(&c.wiped) != 0 {
		c.failWiped(dst[:len(src)])
	}
}

// valid reports whether a call meets the preconditions of EncryptSectors. It is inlined: a
// valid call costs a few compares and no call.
func (c *Cipher) valid(dst, src []byte, firstSector uint64) bool {
	return atomic.LoadUint32(&c.wiped) == 0 && len(src)&(c.size-1) == 0 && len(dst) >= len(src) &&
		firstSector&(c.step-1) == 0 && !inexactOverlap(dst, src)
}

// Check panics, with the reason, unless a call of EncryptSectors or DecryptSectors with these
// arguments meets their preconditions. It is for schedulers that split one call into several
// (crkvol/volume's Parallel), so a bad call panics in its caller before any part of it runs
// elsewhere. EncryptSectors and DecryptSectors check for themselves.
func (c *Cipher) Check(dst, src []byte, firstSector uint64) {
	if !c.valid(dst, src, firstSector) {
		c.fail(dst, src, firstSector)
	}
}

// failWiped clears out (the output of a call that Wipe overlapped, made perhaps in part with
// cleared keys) and panics.
//
//go:noinline
func (c *Cipher) failWiped(out []byte) {
	clear(out)
	panic("sector: Cipher wiped during use")
}

// fail panics with the reason valid refused a call.
//
//go:noinline
func (c *Cipher) fail(dst, src []byte, firstSector uint64) {
	if atomic.LoadUint32(&c.wiped) != 0 {
		panic("sector: Cipher used after Wipe")
	}
	if len(src)&(c.size-1) != 0 {
		panic(fmt.Sprintf("sector: input of %d bytes is not a whole number of %d-byte sectors", len(src), c.size))
	}
	if len(dst) < len(src) {
		panic(fmt.Sprintf("sector: output of %d bytes is smaller than input of %d bytes", len(dst), len(src)))
	}
	if firstSector&(c.step-1) != 0 {
		panic(fmt.Sprintf("sector: first sector %d is not a multiple of %d: sector numbers count 512-byte units, and a %d-byte sector starts on every %dth",
			firstSector, c.step, c.size, c.step))
	}
	if inexactOverlap(dst, src) {
		panic("sector: invalid buffer overlap")
	}
	panic("sector: internal error: valid refused a call that fail accepts")
}
