package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"crkvol/internal/fsutil"
	"crkvol/keyslot"
	"crkvol/qcow2"
	"crkvol/sector"
)

// ExportOptions describe an export of a volume to an encrypted qcow2 image.
type ExportOptions struct {
	// Passphrase is the LUKS passphrase of the exported image; it must be valid UTF-8, as
	// QEMU requires ([ErrPassphraseNotUTF8]). If nil, a random passphrase is made (32
	// random bytes in base64, printable as QEMU requires), wrapped by KeyID, and the image
	// is imported into the catalog as Name (exactly as [Manager.ImportImage] imports one,
	// registration included): the passphrase is then known only wrapped. The caller keeps and clears its Passphrase.
	Passphrase []byte
	// Name is the catalog name of the exported image (required without Passphrase, refused
	// with it).
	Name string
	// KeyID is the root key wrapping a random passphrase; default the volume's key.
	KeyID string
	// ClusterSize is the qcow2 cluster size (default 65536).
	ClusterSize int
	// KeyBytes and Hash are the LUKS1 header's master key size (32 or 64, default 64:
	// aes-256-xts) and PBKDF2 hash (sha1, sha256 or sha512; default sha256).
	KeyBytes int
	Hash     string
	// IterTime is how long the keyslot's PBKDF2 should take, as QEMU's encrypt.iter-time:
	// the iteration count is measured on this machine ([keyslot.PBKDF2Iterations], which
	// takes up to half a second itself). With a Passphrase, 0 means DefaultExportIterTime,
	// QEMU's default: a passphrase a person chose needs the stretching. With the random
	// passphrase, 0 means 1000 iterations (the keyslot package's minimum): 32 random bytes
	// have 256 bits of entropy, which no iteration count makes stronger, while every import
	// and volume create --from-image would pay for the iterations. The count must stay within
	// keyslot.MaxLUKS1Iterations (with the digest's 1000), or crkvol could not open the image:
	// about ten seconds of sha256 here; more is refused with an error matching
	// keyslot.ErrKDFLimits.
	IterTime time.Duration
	// Iterations, if not 0, is the keyslot's PBKDF2 iteration count as given (at least 1000),
	// instead of one measured from IterTime; giving both is refused.
	Iterations int
	// Progress, if set, is called as the image is written with the bytes done and the total.
	Progress func(done, total int64)
	// Replace lets the export replace an existing regular file (or symbolic link: the link
	// itself, never its target) at out, atomically: the new image is renamed over it once
	// complete. Without it an existing out is refused. Anything else at out (a directory, a
	// device, a pipe) is always refused: a qcow2 image is written at random offsets. It is
	// refused with a catalog Name (see [Manager.ExportImage]), and it never replaces the
	// file of a catalog image.
	Replace bool
}

// DefaultExportIterTime is the keyslot iteration time of an export with a given passphrase:
// QEMU's default encrypt.iter-time (2000 ms), and cryptsetup's for LUKS1.
const DefaultExportIterTime = 2 * time.Second

// ExportResult describes an exported image.
type ExportResult struct {
	// Path is the exported image's absolute path.
	Path string
	// Size is the guest size (the volume's size); FileSize the image file's size;
	// DataClusters the clusters written (the rest read as zeros).
	Size, FileSize, DataClusters int64
	// Image is the catalog entry of the exported image, or nil when the caller gave the
	// passphrase.
	Image *ImageEntry
}

// ExportImage writes the content of the volume at volumePath to a new qcow2 v3 image at out
// encrypted with LUKS as QEMU encrypts one (encrypt.format=luks, aes-xts-plain64, a fresh
// random master key): QEMU and qemu-img open it with the passphrase. Only allocated content
// is written: what the volume's image file holds no blocks for (never written: it reads as
// noise through the volume) is exported as unallocated, reading as zeros, as are all-zero
// clusters. The volume is opened read-only (shared with other readers). The image is
// written to a temporary file beside out, synced, and only when complete hard-linked into
// place (out must not exist) or, with opts.Replace, renamed over an existing regular file or
// symbolic link at out; so out never holds a partial image (a crash may leave the temporary
// file, named .OUT.*.tmp). Replace never replaces the file of a catalog image
// (ErrCatalogFile). With no opts.Passphrase the image goes into the catalog (see
// [ExportOptions]); if that fails, out is removed, since its passphrase is lost; Replace is
// refused then, so that no existing file is lost with it.
func (m *Manager) ExportImage(ctx context.Context, volumePath, out string, opts ExportOptions) (_ *ExportResult, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("volume: export %s to %s: %w", volumePath, out, err)
		}
	}()
	catalog := opts.Passphrase == nil
	switch {
	case catalog:
		if err := CheckImageName(opts.Name); err != nil {
			return nil, err
		}
		if _, err := m.reg.Image(opts.Name); err == nil {
			return nil, fmt.Errorf("%w: %s", ErrImageExists, opts.Name)
		}
	case len(opts.Passphrase) == 0:
		return nil, errors.New("an empty passphrase")
	case checkImagePassphrase(opts.Passphrase) != nil:
		return nil, checkImagePassphrase(opts.Passphrase)
	case opts.Name != "":
		return nil, errors.New("a catalog name is for an export with a random passphrase, not with a given one")
	}
	if catalog && opts.Replace {
		// The file is imported after it is in place: a failed import would remove it, and
		// the replaced file with it.
		return nil, errors.New("replacing an existing file is refused with a catalog name (a failed import would lose both files): remove it first, or export to a new path")
	}
	outAbs, err := filepath.Abs(out)
	if err != nil {
		return nil, err
	}
	replace := false
	if st, err := os.Lstat(outAbs); err == nil {
		if !st.Mode().IsRegular() && st.Mode()&fs.ModeSymlink == 0 {
			return nil, fmt.Errorf("%s is not a regular file (%s): an image is written as a new regular file", outAbs, fsutil.Kind(st.Mode()))
		}
		if !opts.Replace {
			return nil, fmt.Errorf("%w: %s exists (refusing to overwrite it)", fs.ErrExist, outAbs)
		}
		if err := m.notCatalogFile(outAbs); err != nil {
			return nil, err
		}
		replace = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if st, err := os.Stat(filepath.Dir(outAbs)); err != nil {
		return nil, fmt.Errorf("the directory of the output: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("the directory of the output, %s, is not a directory", filepath.Dir(outAbs))
	}
	v, err := m.OpenWith(ctx, volumePath, OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer v.Close()
	keyID := opts.KeyID
	if keyID == "" && catalog {
		info, err := describe(ctx, volumePath)
		if err != nil {
			return nil, err
		}
		keyID = info.KeyID
	}
	if catalog {
		if _, err := m.kms.KeyCRN(ctx, keyID); err != nil {
			return nil, err
		}
	}
	extents, err := allocatedExtents(v)
	if err != nil {
		return nil, err
	}

	keyBytes := opts.KeyBytes
	if keyBytes == 0 {
		keyBytes = 64
	}
	if keyBytes != 32 && keyBytes != 64 {
		return nil, fmt.Errorf("master key of %d bytes: 32 (aes-128-xts) or 64 (aes-256-xts)", keyBytes)
	}
	mk := make([]byte, keyBytes)
	defer clear(mk)
	if _, err := io.ReadFull(m.opts.Rand, mk); err != nil {
		return nil, fmt.Errorf("reading a random master key: %w", err)
	}
	iter, err := exportIterations(ctx, opts, keyBytes)
	if err != nil {
		return nil, err
	}
	pass := opts.Passphrase
	if catalog {
		if pass, err = randomImagePassphrase(m.opts.Rand); err != nil {
			return nil, err
		}
		defer clear(pass)
	}
	area, err := keyslot.FormatLUKS1(ctx, mk, pass, keyslot.LUKS1Options{
		KeyBytes: keyBytes, Hash: opts.Hash, Iterations: iter, Rand: m.opts.Rand,
	})
	if err != nil {
		return nil, err
	}
	c, err := sector.New(mk, 512)
	if err != nil {
		return nil, err
	}
	defer c.Wipe()

	tmp, err := os.CreateTemp(filepath.Dir(outAbs), "."+filepath.Base(outAbs)+".*.tmp")
	if err != nil {
		return nil, err
	}
	linked := false
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
		if err != nil && linked {
			os.Remove(outAbs)
		}
	}()
	stats, err := qcow2.Write(ctx, tmp, v, extents, qcow2.WriteOptions{
		Size: v.Size(), ClusterSize: opts.ClusterSize, EncryptionHeader: area, Cipher: c, Progress: opts.Progress,
	})
	if err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if replace {
		// Replace: a rename, atomic; a link at out is replaced, not followed.
		if err := os.Rename(tmp.Name(), outAbs); err != nil {
			return nil, err
		}
	} else if err := os.Link(tmp.Name(), outAbs); err != nil {
		// A hard link, not a rename: it fails if out appeared meanwhile, never replacing it.
		return nil, err
	}
	linked = true
	if err := fsutil.SyncDir(filepath.Dir(outAbs)); err != nil {
		return nil, err
	}
	res := &ExportResult{Path: outAbs, Size: v.Size(), FileSize: stats.FileSize, DataClusters: stats.DataClusters}
	if catalog {
		// The temporary name goes first, so the catalog records out's only name.
		tmp.Close()
		os.Remove(tmp.Name())
		e, err := m.ImportImage(ctx, outAbs, ImportOptions{Name: opts.Name, KeyID: keyID, Passphrase: pass})
		if err != nil {
			return nil, err
		}
		res.Image = e
	}
	m.opts.Logger.Info("volume exported", "volume", volumePath, "out", outAbs, "clusters", stats.DataClusters, "catalog", opts.Name)
	return res, nil
}

// ErrCatalogFile refuses to replace the file of a catalog image.
var ErrCatalogFile = errors.New("is the file of a catalog image")

// notCatalogFile refuses path (which exists) if it names the file of a catalog image: the
// same path (symbolic links resolved) or the same file.
func (m *Manager) notCatalogFile(path string) error {
	images, err := m.reg.Images()
	if err != nil {
		return err
	}
	resolved, rerr := resolvePath(path)
	st, serr := os.Stat(path)
	for _, e := range images {
		same := rerr == nil && resolved == e.Path
		if !same && serr == nil {
			if est, err := os.Stat(e.Path); err == nil && os.SameFile(st, est) {
				same = true
			}
		}
		if same {
			return fmt.Errorf("%s %w %s: refusing to replace it (delete the image from the catalog first)", path, ErrCatalogFile, e.Name)
		}
	}
	return nil
}

// exportIterations returns the keyslot iteration count of an export (see
// [ExportOptions.IterTime]): opts.Iterations as given, or measured from opts.IterTime, whose
// default depends on whether the passphrase is the caller's; 0 leaves keyslot's default.
func exportIterations(ctx context.Context, opts ExportOptions, keyBytes int) (int, error) {
	switch {
	case opts.IterTime < 0:
		return 0, fmt.Errorf("iteration time %v: want a positive duration", opts.IterTime)
	case opts.Iterations != 0 && opts.IterTime != 0:
		return 0, errors.New("give an iteration count or an iteration time, not both")
	case opts.Iterations != 0:
		return opts.Iterations, nil
	}
	d := opts.IterTime
	if d == 0 {
		if opts.Passphrase == nil {
			return 0, nil
		}
		d = DefaultExportIterTime
	}
	hash := opts.Hash
	if hash == "" {
		hash = "sha256"
	}
	n, err := keyslot.PBKDF2Iterations(ctx, hash, keyBytes, d)
	if err != nil {
		return 0, err
	}
	if n+1000 > keyslot.MaxLUKS1Iterations {
		return 0, fmt.Errorf("%w: an iteration time of %v is %d PBKDF2 iterations (%s, %d-byte key) on this machine, over the %d crkvol opens an image with (keyslot.MaxLUKS1Iterations, less the digest's 1000)",
			keyslot.ErrKDFLimits, d, n, hash, keyBytes, keyslot.MaxLUKS1Iterations-1000)
	}
	return n, nil
}

// allocatedExtents maps the volume's data area by what its image file holds blocks for
// (SEEK_DATA and SEEK_HOLE), in whole volume sectors: Data extents are allocated, the
// others are holes. A file system without SEEK_DATA gives one Data extent for everything.
func allocatedExtents(v *Volume) ([]qcow2.Extent, error) {
	f, err := os.Open(v.f.Name())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fd := int(f.Fd())
	size, base, ss := v.size, v.dataOff, v.ss
	var data [][2]int64 // guest [start, end) ranges with blocks, sector-aligned, merged
	for pos := base; pos < base+size; {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data past pos
		}
		if err != nil {
			return []qcow2.Extent{{Offset: 0, Length: size, Data: true}}, nil
		}
		if d >= base+size {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			h = base + size
		}
		h = min(h, base+size)
		s, e := (d-base)/ss*ss, min(roundUp(h-base, ss), size)
		if n := len(data); n > 0 && s <= data[n-1][1] {
			data[n-1][1] = max(data[n-1][1], e)
		} else {
			data = append(data, [2]int64{s, e})
		}
		pos = h
	}
	var out []qcow2.Extent
	next := int64(0)
	for _, r := range data {
		if r[0] > next {
			out = append(out, qcow2.Extent{Offset: next, Length: r[0] - next})
		}
		out = append(out, qcow2.Extent{Offset: r[0], Length: r[1] - r[0], Data: true})
		next = r[1]
	}
	if next < size {
		out = append(out, qcow2.Extent{Offset: next, Length: size - next})
	}
	return out, nil
}
