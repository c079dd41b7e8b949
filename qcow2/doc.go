// Package qcow2 reads and writes QEMU's qcow2 disk images, plain or LUKS-encrypted, as
// crkvol imports and exports them ("encrypted custom images").
//
// The format followed is QEMU's docs/interop/qcow2.txt: versions 2 and 3, cluster sizes from
// 512 bytes to 2 MiB, the two-level L1/L2 cluster mapping, zero clusters (version 3),
// compressed clusters (raw deflate, unencrypted images) and the full disk encryption header
// extension (type 0x0537be77) that locates a LUKS header inside the image.
//
// # Reading
//
// [Open] validates the header, its extensions, the active L1 table and the refcount table
// before anything is used: every offset aligned and inside the file, every size bounded (by
// QEMU's own limits and by the file's size, so a hostile file cannot make it allocate
// more than it holds), and no two metadata structures overlapping each other or the
// header. Open keeps the metadata compactly (8 bytes per refcount block or L2 table, at most
// about twice the tables QEMU's limits allow, 80 MiB). L2 tables are checked when first read,
// and every data cluster is checked against the metadata before it is read.
// [Image.Reader] returns the guest disk as an io.ReaderAt; [Image.Map] lists which guest
// ranges hold data, so a copy can skip the rest, and refuses host clusters shared within the
// active mapping (which QEMU never writes), so the data it reports stays within 1032
// times the file's size plus a cluster (deflate's best ratio) however the L2 tables lie.
//
// Refused by name with an [*UnsupportedError] (its [Feature] says which; it wraps
// [ErrUnsupported]): backing files, external data files, extended
// L2 entries (subclusters), legacy AES encryption (crypt_method 1), zstd compression,
// compressed clusters in an encrypted image, dirty images (run `qemu-img check -r all`),
// and unknown incompatible feature bits (named from the image's feature name table when it
// has one). Internal snapshots are allowed and ignored: only the active L1 table is read.
// Malformed images are refused with errors wrapping [ErrFormat].
//
// # Encryption
//
// An encrypted image (crypt_method 2) keeps a LUKS1 header in the clusters named by its full
// disk encryption header extension ([Image.EncryptionHeader]); unlocking it is
// crkvol/keyslot's job. The data clusters are aes-xts-plain64 with 512-byte sectors, and —
// unlike a raw LUKS device — each sector's tweak is its HOST offset in the image file / 512,
// not its guest offset (QEMU's crypt_physical_offset). [SectorCipher] is that engine;
// crkvol/sector's Cipher satisfies it. Metadata is never encrypted, and XTS gives no
// integrity: a modified image decrypts to garbage without error.
//
// # Writing
//
// [Write] produces a qcow2 version 3 image with 16-bit refcounts that `qemu-img check`
// reports clean, storing only the clusters that hold data, optionally encrypted under a
// LUKS1 header area made by crkvol/keyslot. It writes the header last.
//
// # Concurrency
//
// An [Image] and its readers are safe for concurrent use: an Image's only mutable state is
// the bounded LRU cache of L2 tables ([Options].CacheClusters), behind a mutex; the package
// also keeps a sync.Pool of deflate readers for compressed clusters, safe for concurrent use.
//
// The package imports nothing of crkvol's.
package qcow2
