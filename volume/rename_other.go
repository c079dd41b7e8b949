//go:build !linux

package volume

// renameNoReplace renames oldpath to newpath, failing with an error satisfying
// errors.Is(err, fs.ErrExist) if newpath exists (a hard link, then the removal of oldpath).
func renameNoReplace(oldpath, newpath string) error { return linkRename(oldpath, newpath) }
