package volume

import (
	"os"
)

// osLinkError is os.LinkError (an alias keeps the platform files free of an os import).
type osLinkError = os.LinkError

// linkRename moves oldpath to newpath without replacing an existing newpath: a hard link
// (which fails if newpath exists), then the removal of oldpath.
func linkRename(oldpath, newpath string) error {
	if err := os.Link(oldpath, newpath); err != nil {
		return err
	}
	return os.Remove(oldpath)
}
