package volume

import (
	"errors"

	"golang.org/x/sys/unix"
)

// renameNoReplace renames oldpath to newpath, failing with an error satisfying
// errors.Is(err, fs.ErrExist) if newpath exists: renameat2 with RENAME_NOREPLACE, or, where
// the file system lacks it, a hard link followed by the removal of oldpath.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return linkRename(oldpath, newpath)
	}
	if err != nil {
		return &osLinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	return nil
}
