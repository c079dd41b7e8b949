package volume

import (
	"context"
	"crkvol/internal/fsutil"
	"fmt"
	"os"
	"syscall"
	"time"
)

// openCatalogFile opens the image file at path for reading, refusing anything but a regular
// file before it is opened (a FIFO would block open(2) beyond any context deadline, a
// device would be read whole): the path is stat'ed first, and opened with O_NONBLOCK, so a
// file swapped for a FIFO between the stat and the open cannot block either; the opened
// file must be the regular file that was stat'ed. The open holds QEMU's reader locks (see
// lockImageForRead: ErrImageInUse if QEMU has the file open for writing) until the file is
// closed. It returns the open file and its stat.
func openCatalogFile(path string) (*os.File, os.FileInfo, error) {
	pre, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if !pre.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", path, fsutil.Kind(pre.Mode()))
	}
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := fh.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file (%s)", path, fsutil.Kind(fi.Mode()))
	}
	if err == nil && !os.SameFile(pre, fi) {
		err = fmt.Errorf("%w: %s was replaced while it was opened", ErrImageChanged, path)
	}
	if err == nil {
		// QEMU's reader locks, held until fh is closed; then the stat that counts is the
		// one taken under them.
		if _, err = lockImageForRead(fh); err == nil {
			fi, err = fh.Stat()
		}
	}
	if err != nil {
		fh.Close()
		return nil, nil, err
	}
	// O_NONBLOCK means nothing for a regular file's reads; clear it all the same, so the
	// descriptor is an ordinary blocking one.
	if rc, err := fh.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = syscall.SetNonblock(int(fd), false) })
	}
	return fh, fi, nil
}

// fileState is what the catalog compares of an image file without reading it.
type fileState struct {
	size         int64
	mod, ctime   time.Time
	id           fileID
	hasID, hasCT bool
}

// stateOf returns the comparable state of a stat result.
func stateOf(fi os.FileInfo) fileState {
	s := fileState{size: fi.Size(), mod: fi.ModTime().UTC()}
	s.id, s.hasID = idOf(fi)
	s.ctime, s.hasCT = ctimeOf(fi)
	return s
}

// changedSince returns an ErrImageChanged error when the file whose state was before is now
// in state after (another size, modification or change time, or identity); what names the
// operation that read the file between the two stats.
func changedSince(path, what string, before, after fileState) error {
	if before.size != after.size || !before.mod.Equal(after.mod) || !before.ctime.Equal(after.ctime) ||
		before.id != after.id || before.hasID != after.hasID || before.hasCT != after.hasCT {
		return fmt.Errorf("%w: %s changed while %s (size %d, modified %s, changed %s; before: %d, %s, %s)", ErrImageChanged, path, what,
			after.size, fmtTime(after.mod), fmtTime(after.ctime), before.size, fmtTime(before.mod), fmtTime(before.ctime))
	}
	return nil
}

// fmtTime formats a file time in full.
func fmtTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.999999999Z") }

// statFile returns the state of the open file fh.
func statFile(fh *os.File) (fileState, error) {
	fi, err := fh.Stat()
	if err != nil {
		return fileState{}, err
	}
	return stateOf(fi), nil
}

// VerifyImage checks that the file of catalog image name is still the imported one by its
// content: the same device and inode and size as at import, and a SHA-256 of the whole file
// equal to the catalog's (read now, whatever the file's times say). The file must not change
// while it is hashed. Any difference is an ErrImageChanged error naming it. It reads the
// whole file, once; CreateFromImage does the same only when the file's modification or
// change time differs from the catalog's.
func (m *Manager) VerifyImage(ctx context.Context, name string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("volume: verify image %s: %w", name, err)
		}
	}()
	e, err := m.reg.Image(name)
	if err != nil {
		return err
	}
	fh, fi, err := openCatalogFile(e.Path)
	if err != nil {
		return fmt.Errorf("opening the image file: %w", err)
	}
	defer fh.Close()
	before := stateOf(fi)
	if err := checkIdentity(e, before); err != nil {
		return err
	}
	return verifyDigest(ctx, e, fh, before)
}

// checkIdentity checks the identity and size of the file of image e, as stat'ed in s.
func checkIdentity(e ImageEntry, s fileState) error {
	switch {
	case e.Inode != 0 && s.hasID && s.id != (fileID{dev: e.Device, ino: e.Inode}):
		return fmt.Errorf("%w: %s is another file than the one imported (its device and inode changed: replaced or restored?); import it again under a new name",
			ErrImageChanged, e.Path)
	case s.size != e.FileSize:
		return fmt.Errorf("%w: %s is %d bytes, %d at import; import it again under a new name", ErrImageChanged, e.Path, s.size, e.FileSize)
	}
	return nil
}

// verifyDigest hashes the open file of image e (state before, at open) and compares the
// SHA-256 with the catalog's; the file must not have changed meanwhile.
func verifyDigest(ctx context.Context, e ImageEntry, fh *os.File, before fileState) error {
	sum, err := hashFile(ctx, fh, before.size)
	if err != nil {
		return err
	}
	after, err := statFile(fh)
	if err != nil {
		return err
	}
	if err := changedSince(e.Path, "it was hashed", before, after); err != nil {
		return err
	}
	if sum != e.SHA256 {
		return fmt.Errorf("%w: %s has SHA-256 %s, %s at import: its content changed; import it again under a new name", ErrImageChanged, e.Path, sum, e.SHA256)
	}
	return nil
}
