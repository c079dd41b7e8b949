// Package volume is the heart of crkvol: file-backed block volumes in real LUKS2 format whose
// data is encrypted with aes-xts-plain64 under a random master key, whose LUKS passphrase is
// wrapped by a customer root key (CRK) in a key management service, and whose passphrase is
// rewrapped — never the data — when that key rotates.
//
// # The three keys of a volume
//
//   - The master (volume) key, 64 random bytes, encrypts the data sector by sector
//     (crkvol/sector). It lives only in memory while a volume is attached and in
//     keyslot 0, AF-split and encrypted under the passphrase (crkvol/keyslot).
//   - The LUKS passphrase, 32 random bytes, opens that keyslot. It is never stored: the
//     crkvol-crk LUKS2 token holds it wrapped by the root key, with the volume's UUID as
//     AAD, so a token copied to another volume does not unwrap (and one whose volume_crn is
//     not the volume's is refused before any unwrap). crkvol changes only the token members
//     it owns; members another tool added keep their place and bytes. Its ciphertext
//     member is the Key Protect ciphertext string (standard base64 of the binary
//     ciphertext), whichever way the key service is reached, so a volume opens and rewraps
//     in process and through the API alike; the form earlier versions wrote through the API
//     (base64 of that string) still reads, and the next rewrap replaces it.
//   - The root key version, held by the key service ([KeyService]); rotating the root key
//     adds a version.
//
// # Flows
//
// [Manager.Create] formats an image, wraps its passphrase, stores the token and registers the
// volume's CRN with the key (preventKeyDeletion) and in the [Registry] (CRN → image path).
// [Manager.Open] unwraps, unlocks and returns a [Volume] — an io.ReaderAt and io.WriterAt at
// any offset and length, safe for concurrent use — storing a rewrapped ciphertext if the key
// service hands one back. [Manager.Adopt] brings a cryptsetup-made image under a root key by
// adding a keyslot, leaving data and existing keyslots alone. [Manager.Delete] deregisters a
// volume, optionally crypto-erasing it.
//
// When a root key rotates, the Manager's hook rewraps every registered volume of that key:
// per volume one atomic LUKS2 token commit (a few KiB, whatever the volume's size, two
// flushes) and a registration update, with retries and backoff for transient failures; a
// refusal of the key service ([ErrKeyRefused]) is not retried. Volumes go through in waves
// ([Options.RewrapBatch]) that share the key service's and the registry's commits: one batch
// rewrap and one batch registration update at the key service, one registry commit, per wave;
// the next wave is read while one commits, so the device's flush queue stays full. The key service is called
// with no lock held; the token is then committed under the image's header lock only if its
// ciphertext is still the one rewrapped (compare and swap), so a concurrent rewrap elsewhere
// is never overwritten with an older answer. A failure at any point leaves the old
// ciphertext — still valid, since old key versions keep unwrapping — in place;
// [Manager.Sync] later brings every lagging volume up to date. Rotation runs while volumes are
// attached and busy in this or another process: it only touches header metadata. Waits for
// the header lock end with the caller's context.
//
// # Identity: an image is its registration
//
// A byte copy of an image carries the volume's UUID and token, so the UUID alone cannot say
// which file is the volume. The [Registry] records, per volume, the image's resolved path
// (symbolic links followed) and its file identity (device and inode, from the stat at
// registration); entries of older registries, without the identity, match by path until the
// next registration change on that image records it. Every operation that changes a
// registration or a token — [Manager.Delete], a rewrap (manual, rotation, sync), the lazy
// rewrap of an open, [Manager.Adopt] — acts only on the registered image and refuses any
// other file with the volume's UUID with [ErrNotRegisteredImage], naming the registered path.
// A copy still opens read-only ([Volume.CopyOf] says so) and is never rewrapped; a rotation
// that finds another file at the registered path reports a failure. [Manager.Reregister] lets
// a moved or restored image take over its registration, [Manager.Reidentify] gives a copy an
// identity of its own (its volume key stays the original's), and [Manager.Erase]
// crypto-erases a copy or an image whose registration is gone.
//
// # Encrypted images
//
// The [Registry] also holds a catalog of encrypted custom images ([ImageEntry], bucket
// "images"): qcow2 files encrypted with QEMU's LUKS (a LUKS1 header inside the qcow2 file,
// its sectors' XTS tweak the host offset / 512), each with its LUKS passphrase wrapped by a
// root key with no AAD — a WDEK, as `ibmcloud kp key wrap` makes one. [Manager.ImportImage]
// accepts an image only when its WDEK unwraps with the key and the passphrase unlocks the
// image's header (or wraps a passphrase given in clear after checking it), keeps the WDEK and
// never the passphrase, and registers the image's CRN (ident.ImageCRN) with the key
// (preventKeyDeletion). [Manager.CreateFromImage] decrypts an image's guest content into a
// new volume with its own master key and passphrase, under any key; [Manager.ExportImage]
// writes a volume to a new encrypted qcow2 image QEMU opens, with a given passphrase or a
// random one wrapped straight into the catalog. A rotation or [Manager.Sync] rewraps the
// WDEKs of the key's images in the same pass as its volumes (a catalog update, then the
// registration; the image file is never read nor written), counted apart in the [Report];
// [Manager.DeleteImage] removes an image from the catalog, then deregisters it from its key
// ([Manager.DeleteImageRegistration] removes a registration a crash left without an entry).
//
// # Interrupted and unhealthy states
//
// [Manager.Wipe] writes zeros over the data area and records how far it got in the token
// (member "wipe", {"next", "size"}): at the start, every 16 MiB after syncing the data, and
// when its context ends (an interrupt); it removes the record when done. [Describe] shows an
// incomplete wipe in [Info.Wipe], and Wipe resumes it. [Manager.Check] finds what keeps a
// volume from opening — a keyslot area missing or damaged (the crkvol keyslot must open with
// the unwrapped passphrase), a data area the file does not hold, a key service that refuses —
// and reports each [Problem] with its reason. A rewrap runs the same check first: a damaged
// image is a failure matching [ErrUnhealthy] in the [Report], and its token is left as it is.
// The check's unwrap and keyslot unlock are skipped while the image is in a state this
// Manager proved to open (at create, check, open, or a rewrap's full check), which the
// registry records as a fingerprint ([Entry.Verified]) of the token's ciphertext, the keyslot,
// digest and segment metadata and the keyslot area's bytes; any change to them runs the full
// check.
// [Manager.Resize] grows a volume that is not in use: it extends the file, then records the
// new data size in the token; a crash in between leaves the longer file with the old record,
// which opens and checks healthy, and running it again finishes it. The dynamic LUKS2
// segment runs to the end of the file, so the header's segment is not rewritten.
//
// # Secrets
//
// The unwrapped passphrase is cleared as soon as its keyslot is open, and on every error path
// after the key service returned it; the master key and the cipher built from it are cleared
// when an open fails after unlocking, and by [Volume.Close] otherwise.
//
// # Interoperability
//
// Images open with cryptsetup 2.6 (with the unwrapped passphrase), cryptsetup's offline
// decryption recovers the plaintext written here, and images cryptsetup encrypted can be
// adopted. Never-written sectors read as whatever zeros decrypt to, as with cryptsetup.
//
// # Non-goals
//
// Re-encryption of the data under a new master key, integrity protection (XTS has none),
// online resize (of an attached volume), shrinking, and detached headers.
package volume
