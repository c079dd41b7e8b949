// Package sector is the data path of a crkvol volume: aes-xts-plain64 over whole sectors, exactly
// as LUKS2 and dm-crypt apply it.
//
// # Construction
//
// XTS-AES (IEEE Std 1619-2007, NIST SP 800-38E) with the key split in two equal halves: the first
// half encrypts data, the second half encrypts the tweak. A 32-byte key gives AES-128-XTS, a
// 64-byte key AES-256-XTS (the LUKS2 default, "key_size": 64). Each sector is one XTS data unit;
// ciphertext stealing is never needed because sectors are whole numbers of 16-byte blocks.
//
// # Sector numbering
//
// The tweak of a sector is its plain64 IV: the little-endian 64-bit number of the 512-byte
// sector where the data unit starts, counted from the start of the encrypted segment and
// zero-padded to 16 bytes. This holds for every sector size: LUKS2 never enables dm-crypt's
// iv_large_sectors option, so with 4096-byte sectors the tweaks run 0, 8, 16, … and not
// 0, 1, 2, …. Every method therefore takes firstSector counted in 512-byte units, and refuses
// (by panicking) a firstSector that is not a multiple of SectorSize()/512. Use [Cipher.SectorOf]
// to turn a byte offset within the segment into that number.
//
// # Security properties and non-goals
//
// XTS gives confidentiality of data at rest against an attacker who sees the image, and
// diffusion within a 16-byte block only. It provides no integrity: a modified ciphertext
// decrypts to unpredictable plaintext without any error, and an attacker who can see several
// versions of a sector learns which blocks changed. Authenticated disk encryption is out of
// scope, as it is for aes-xts-plain64 in LUKS2.
//
// Key material is kept in expanded form by crypto/aes for the life of a [Cipher]; Go offers no
// way to wipe it, so keep Ciphers only as long as the volume is attached.
//
// # Implementations
//
// The portable implementation (sector_generic.go) batches work per sector: it encrypts the
// sector's tweak once, derives all the block tweaks of the sector in one pass over two 64-bit
// words, applies them with 64-bit XORs, and runs the AES block function over the whole sector
// in a tight loop, with no allocation. It is always compiled and is the reference against which
// any assembly implementation is tested; building with -tags purego selects it everywhere.
//
// # Concurrency
//
// A Cipher is immutable after [New] and safe for concurrent use by multiple goroutines.
package sector
