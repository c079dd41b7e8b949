// Package fsutil holds file-system helpers shared by crkvol's packages.
package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// SyncDir fsyncs the directory dir, so that a file created, linked or renamed in it survives
// a crash. The error names dir.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// Kind names the type of a file for a message: "a regular file", "a directory", "a FIFO",
// "a socket", "a character device", "a block device", else "a special file".
func Kind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "a special file"
}

// ErrNotPrivate means a directory that holds secrets (a master key file, API key hashes,
// the key store) could be written by someone other than its owner, or is owned by another
// user than the one running crkvol (or root): whoever can write it can plant a file or a link where
// a secret is about to be written, or replace what is read from it.
var ErrNotPrivate = errors.New("directory is not private")

// CheckPrivate returns an error matching ErrNotPrivate, naming dir and what is wrong, when
// dir (followed if a symbolic link) is writable by its group or by others, or is owned by
// another user than the effective user (on systems with Unix owners and modes; elsewhere it
// only checks that dir is a directory); an error naming dir
// when it cannot be looked at or is not a directory; else nil.
func CheckPrivate(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("checking directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is %s, not a directory", dir, Kind(st.Mode()))
	}
	if perm := st.Mode().Perm(); hasOwners && perm&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o, so its group or others can write it (chmod go-w %s)", ErrNotPrivate, dir, perm, dir)
	}
	if owner, ok := ownerOf(st); ok && owner != os.Geteuid() && owner != 0 {
		return fmt.Errorf("%w: %s is owned by user id %d, neither the user running crkvol (%d) nor root", ErrNotPrivate, dir, owner, os.Geteuid())
	}
	return nil
}

// OwnFile reports whether st describes a regular file that only its owner can write, owned by
// the effective user (where the system has owners): one another user cannot have planted or
// changed.
func OwnFile(st fs.FileInfo) bool {
	if !st.Mode().IsRegular() {
		return false
	}
	if !hasOwners {
		return true
	}
	owner, ok := ownerOf(st)
	return ok && owner == os.Geteuid() && st.Mode().Perm()&0o022 == 0
}

// WriteFileAtomic replaces path with data, mode 0600, so that a crash leaves the old or the
// new content, durably: a new temporary file of a random name beside it (created
// exclusively, so never a file or link someone placed there), synced, renamed over path, and
// the directory synced. The temporary file is removed on failure. The error names path.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return SyncDir(dir)
}
