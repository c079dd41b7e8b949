package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"crkvol/qcow2"
	"crkvol/sector"
)

// FromImageOptions describe a volume made from a catalog image.
type FromImageOptions struct {
	// Image is the catalog image's name. Required.
	Image string
	// KeyID is the root key of the new volume (it may differ from the image's). Required.
	KeyID string
	// Size is the volume's size: 0 for the image's guest size (rounded up to the sector
	// size); larger grows the volume, smaller is refused (ErrBadSize), as is a size that is
	// not a whole number of sectors. The part beyond the image is written with zeros (it
	// reads as zeros), except with Sparse, where it reads as noise until written, as in any
	// new volume.
	Size int64
	// SectorSize is the volume's encryption sector size: 512, 1024, 2048 or 4096; 0 picks
	// 4096 when the size is a multiple of it, else 512.
	SectorSize int
	// KeyBits is the volume's aes-xts-plain64 key size: 512 (AES-256-XTS, the default when
	// 0) or 256.
	KeyBits int
	// Sparse skips what reads as zeros in the image (unallocated and zero clusters, and
	// all-zero blocks of data): the volume file stays sparse, but those ranges read as noise
	// (as a new volume's never-written blocks do), not as zeros. Without it those ranges are
	// written as zeros, so the volume reads back exactly the image's guest content.
	Sparse bool
	// Progress, if set, is called after each piece copied with the bytes done and the total
	// (the volume's size, or with Sparse the bytes of the image's data extents).
	Progress func(done, total int64)
}

// copyChunk is the size of one read of the image and one write to the volume.
const copyChunk = 1 << 20

// CreateFromImage makes a new volume at path (which must not exist) holding the guest
// content of catalog image opts.Image: the image's WDEK is unwrapped (a rewrapped WDEK the
// key service hands back is stored in the catalog: lazy rewrap), the passphrase unlocks the
// image's LUKS header, and the decrypted content is written into a new volume made as
// [Manager.Create] makes one, with its own master key and passphrase wrapped by
// opts.KeyID. The image file must still be the imported one, otherwise ErrImageChanged: the
// same device and inode and size, and the same modification and change times as at import;
// if only the times differ (a touch, a chmod, a rewrite of the same bytes, or a write whose
// writer set the modification time back), the whole file is hashed and accepted only if its
// SHA-256 is still the catalog's. After the content is copied the file is stat'ed again: if
// it changed meanwhile (its size or change time moved), the new volume is deleted and the
// error is ErrImageChanged. (A change time only moves at the file system's clock tick: a
// write within the same tick as the first stat is not seen; [Manager.VerifyImage] hashes the
// file whatever its times say.) The keyslot that opened at import is tried first. The
// volume is made, filled and synced at a temporary sibling path, ".NAME.partial-XXXXXXXXXXXX"
// in path's directory, then renamed onto path (never replacing a file that appeared there
// meanwhile) and its registration pointed at path. If anything fails, the half-made volume
// is deleted and deregistered: a failure leaves nothing. A crash during the copy leaves only
// that obviously partial volume, registered at its temporary path, which `crkvol volume
// delete` (or [Manager.Delete] with RemoveImage) removes with its registration; a crash
// between the rename and the registry update leaves the complete volume at path registered
// at the temporary path, which `crkvol volume reregister` ([Manager.Reregister]) repairs.
func (m *Manager) CreateFromImage(ctx context.Context, path string, opts FromImageOptions) (_ *Info, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("volume: create %s from image %s: %w", path, opts.Image, err)
		}
	}()
	if opts.KeyID == "" {
		return nil, errors.New("a root key id is required")
	}
	e, err := m.reg.Image(opts.Image)
	if err != nil {
		return nil, err
	}
	fh, qi, opened, err := openCatalogImage(ctx, e)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	size, ss, keyBytes, err := fromImageGeometry(qi.Size(), opts)
	if err != nil {
		return nil, err
	}
	// Check the key before the image is decrypted (a wrong key id costs nothing).
	if _, err := m.kms.KeyCRN(ctx, opts.KeyID); err != nil {
		return nil, err
	}

	u, err := m.kms.Unwrap(ctx, e.KeyID, e.WDEK, nil)
	if err == nil && len(u.Plaintext) == 0 {
		err = fmt.Errorf("%w: the unwrap answer has no plaintext", ErrIncompleteAnswer)
	}
	if err != nil {
		clear(u.Plaintext)
		return nil, fmt.Errorf("unwrapping the image's WDEK with key %s: %w", e.KeyID, err)
	}
	_, mk, _, err := unlockQcow2(ctx, qi, u.Plaintext, e.Keyslot)
	clear(u.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("the image's WDEK does not unlock its LUKS header: %w", err)
	}
	c, err := sector.New(mk, 512)
	clear(mk)
	if err != nil {
		return nil, err
	}
	defer c.Wipe()
	if u.Rewrapped != nil {
		if err := m.storeImageRewrapped(ctx, e, u.Rewrapped); err != nil {
			// The old WDEK still works; a later rotation or sync retries.
			m.opts.Logger.Warn("lazy rewrap of an image failed", "image", e.Name, "crn", e.CRN, "err", err)
		}
	}
	src, err := qi.Reader(c)
	if err != nil {
		return nil, err
	}
	extents, err := qi.Map(ctx)
	if err != nil {
		return nil, err
	}
	extents = withTail(extents, qi.Size(), size)

	// The volume is made and filled at a temporary sibling path and renamed onto path only
	// once complete: a crash leaves an obviously partial volume, never a normal-looking one.
	final, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("%s: %w", final, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil { // not m.opts.Rand: a name must not shift a seeded stream
		return nil, fmt.Errorf("reading random bytes: %w", err)
	}
	partial := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+".partial-"+hex.EncodeToString(rnd[:]))

	info, err := m.Create(ctx, partial, CreateOptions{KeyID: opts.KeyID, Size: size, SectorSize: ss, KeySize: keyBytes})
	if err != nil {
		return nil, err
	}
	err = m.fillFromImage(ctx, info.Path, src, extents, opts)
	if err == nil {
		// The content copied must be the content checked: the file must not have changed
		// while it was read.
		var now fileState
		if now, err = statFile(fh); err == nil {
			err = changedSince(e.Path, "the volume was made from it", opened, now)
		}
	}
	if err == nil {
		err = m.movePartial(info, final)
	}
	if err != nil {
		if derr := m.Delete(context.WithoutCancel(ctx), info.Path, DeleteOptions{RemoveImage: true}); derr != nil {
			m.opts.Logger.Warn("undoing a failed create from an image: deleting the volume failed", "path", info.Path, "err", derr)
		}
		return nil, err
	}
	m.opts.Logger.Info("volume created from image", "path", info.Path, "image", e.Name, "crn", info.CRN, "key", info.KeyID)
	return info, nil
}

// movePartial renames the complete volume info (registered at its temporary path) onto
// final, which must not exist, and points its registration there (the file's identity
// survives the rename). If the registration cannot be updated, the volume is moved back, so
// that info.Path still names it. On success info.Path is the final path.
func (m *Manager) movePartial(info *Info, final string) error {
	if err := renameNoReplace(info.Path, final); err != nil {
		return fmt.Errorf("moving the complete volume into place: %w", err)
	}
	err := func() error {
		resolved, err := resolvePath(final)
		if err != nil {
			return err
		}
		e, err := m.reg.Get(info.CRN)
		if err != nil {
			return err
		}
		e.Path = resolved
		if err := m.reg.Put(e); err != nil {
			return err
		}
		info.Path = final
		return nil
	}()
	if err != nil {
		if rerr := renameNoReplace(final, info.Path); rerr != nil {
			m.opts.Logger.Warn("undoing a failed create from an image: moving the volume back failed", "path", final, "partial", info.Path, "err", rerr)
		}
		return fmt.Errorf("registering the volume at %s: %w", final, err)
	}
	return nil
}

// openCatalogImage opens the file of catalog image e, checks that it is still the imported
// file (see CreateFromImage; ErrImageChanged if not) and opens it as an encrypted qcow2
// image of e's guest size. It returns the file's state when it was opened.
func openCatalogImage(ctx context.Context, e ImageEntry) (*os.File, *qcow2.Image, fileState, error) {
	fh, fi, err := openCatalogFile(e.Path)
	if err != nil {
		return nil, nil, fileState{}, fmt.Errorf("opening the image file: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			fh.Close()
		}
	}()
	st := stateOf(fi)
	if err := checkIdentity(e, st); err != nil {
		return nil, nil, st, err
	}
	if !st.mod.Equal(e.ModTime) || (st.hasCT && !st.ctime.Equal(e.CTime)) {
		// Touched since the import: the content decides.
		if err := verifyDigest(ctx, e, fh, st); err != nil {
			return nil, nil, st, err
		}
	}
	qi, err := openEncryptedQcow2(fh, fi.Size())
	if err != nil {
		return nil, nil, st, fmt.Errorf("%w: %w", ErrImageChanged, err)
	}
	if qi.Size() != e.Size {
		return nil, nil, st, fmt.Errorf("%w: its guest size is %d bytes, %d at import", ErrImageChanged, qi.Size(), e.Size)
	}
	ok = true
	return fh, qi, st, nil
}

// fillFromImage writes the guest content src (mapped by extents) into the new volume at
// path: see FromImageOptions.Sparse for what is written.
func (m *Manager) fillFromImage(ctx context.Context, path string, src io.ReaderAt, extents []qcow2.Extent, opts FromImageOptions) (err error) {
	v, err := m.OpenWith(ctx, path, OpenOptions{Exclusive: true})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := v.Close(); err == nil {
			err = cerr
		}
	}()
	var total int64
	for _, x := range extents {
		if x.Data || !opts.Sparse {
			total += x.Length
		}
	}
	var done int64
	if opts.Progress != nil {
		opts.Progress(0, total)
	}
	buf := make([]byte, copyChunk)
	defer clear(buf)
	blk := int(v.SectorSize())
	for _, x := range extents {
		if !x.Data && opts.Sparse {
			continue
		}
		for off := x.Offset; off < x.Offset+x.Length; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(len(buf)), x.Offset+x.Length-off))
			p := buf[:n]
			if x.Data {
				if _, err := src.ReadAt(p, off); err != nil {
					return fmt.Errorf("reading the image at %d: %w", off, err)
				}
			} else {
				clear(p)
			}
			if err := writeBlocks(v, p, off, blk, opts.Sparse); err != nil {
				return err
			}
			off += int64(n)
			done += int64(n)
			if opts.Progress != nil {
				opts.Progress(done, total)
			}
		}
	}
	return v.Sync()
}

// writeBlocks writes p at off into v; with skipZeros, only its runs of blocks (aligned to
// blk in the volume) that are not all zeros.
func writeBlocks(v *Volume, p []byte, off int64, blk int, skipZeros bool) error {
	if !skipZeros {
		_, err := v.WriteAt(p, off)
		return err
	}
	start := -1 // start in p of the pending run of non-zero blocks
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := v.WriteAt(p[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(p); {
		// The block holding off+i, cut at the block boundary.
		n := min(len(p)-i, blk-int((off+int64(i))%int64(blk)))
		if allZero(p[i : i+n]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i += n
	}
	return flush(len(p))
}

// allZero reports whether b holds only zeros.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
