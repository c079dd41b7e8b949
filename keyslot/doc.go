// Package keyslot reads and writes LUKS2 metadata — headers, keyslots and tokens — so that
// images it makes open with cryptsetup 2.6 and images cryptsetup makes open here.
//
// # What it does
//
//   - [Format] writes a new header pair on any [Device] (an *os.File or anything with
//     positioned reads and writes): one aes-xts-plain64 data segment, a random volume key, its
//     pbkdf2 digest and keyslot 0 for a passphrase. Metadata and keyslots-area sizes default to
//     cryptsetup's and accept its smaller allowed values for small sparse images.
//   - [Open] reads an existing image, from either header copy.
//   - [Image.Unlock] turns a passphrase into the volume key: KDF (pbkdf2 with sha1/sha256/
//     sha512, argon2i, argon2id), decryption of the keyslot area with aes-xts-plain64, AF merge
//     over 4000 stripes, digest check. [Image.AddKeyslot], [Image.RemoveKeyslot] and
//     [Image.Erase] manage keyslots.
//   - [Image.AddToken], [Image.ReplaceToken], [Image.UpdateToken] and [Image.RemoveToken]
//     manage LUKS2 tokens: JSON objects with a type, the keyslots they belong to, and free-form
//     members that round-trip unchanged through `cryptsetup token import/export`.
//
// # Format followed
//
// LUKS2 as cryptsetup 2.6.1 implements it (lib/luks2 in its source): the binary header pair
// with sha256 checksums and sequence numbers, the JSON area with u64 values as decimal
// strings, cryptsetup's member order and compact encoding on write, and its validation rules
// on read. Each fact is stated where it is used: the binary header layout in header.go, the
// JSON schema and its limits in json.go, the keyslot and anti-forensic split arithmetic in
// keyslot.go and af.go, with comments naming the cryptsetup code they mirror; testdata/luks2 holds
// images cryptsetup made, with the script that made them.
//
// # Durability and concurrency
//
// Every metadata change is one commit: under an exclusive flock on the device (for devices
// with a file descriptor) and a mutex in the process — both waited for only as long as the
// context of [OpenContext], [Image.ReloadContext] or [Image.UpdateTokenContext] allows, in
// non-blocking attempts with backoff — the header is re-read from disk, the change applied to
// that, and a complete new JSON area with the next sequence number written to the primary copy
// (binary header without checksum, JSON area, binary header with checksum, sync) and then to
// the secondary the same way. Readers take the valid copy with the higher sequence number, so
// a crash at any write leaves an image that opens with either the old or the new metadata.
// Open never writes: a damaged or stale copy is reported by [Image.Health] and rewritten by the
// next change or by [Image.Repair]. When the device also carries another format's signature
// (an LVM2 physical volume label), changes are refused with [ErrAmbiguousSignature] instead,
// since the repair would overwrite it; only an explicit Repair goes ahead, as with cryptsetup. Keyslot material is written (and, on removal, wiped)
// before the commit that references (or forgets) it, as in cryptsetup.
//
// # Hostile input
//
// Every length, offset, id, count and base64 field is checked before use; the JSON area is
// bounded by the header size (at most 4 MiB); KDF costs read from disk are capped at
// cryptsetup's limits (pbkdf2 iterations of keyslots and digests and argon2 time at most
// 2^31-1, argon2 memory at most 4 GiB, at most 4 threads) so a crafted header cannot
// allocate without bound; as even the allowed costs take minutes to hours,
// [Image.UnlockContext] returns when its context ends (stopping pbkdf2, and leaving an argon2
// derivation, which cannot be interrupted, to finish in the background). Segments must start after
// the keyslots area, since the header is always in the image.
// Unknown keyslot, KDF, digest, segment, hash and cipher types are refused with errors naming
// them ([ErrUnsupported]); unknown members are kept and written back. An image with unknown
// mandatory requirements unlocks but refuses changes ([ErrUnmetRequirement]) other than
// removing a luks2 keyslot, as cryptsetup does. Nothing read from disk can cause a panic.
//
// # Secrets
//
// Passphrases, KDF outputs and volume keys are never logged or put in errors. Returned volume
// keys are the caller's to clear; intermediate key material is cleared after use. Go strings
// and crypto/aes key schedules cannot be wiped, so secrets are kept in byte slices.
//
// # LUKS1
//
// [ParseLUKS1] reads and validates a LUKS1 header (the LUKS on-disk format specification
// 1.2.3: cryptsetup's luksFormat --type luks1, and the header QEMU writes inside encrypted
// qcow2 images), [LUKS1.Unlock] recovers its master key with a passphrase (aes-xts-plain64
// only; other ciphers parse and are refused by name), and [FormatLUKS1] makes a header area
// in QEMU's layout holding a given master key. [Open] does not open LUKS1 images: it returns
// an error matching [ErrLUKS1], which says so, for the caller to describe the image with
// ParseLUKS1 or point at cryptsetup convert --type luks2.
//
// # Non-goals
//
// Online reencryption, integrity (dm-integrity) segments and detached LUKS2 headers are not
// implemented, nor changes to LUKS1 headers: such images are refused or, for reencryption,
// readable but unchangeable.
package keyslot
