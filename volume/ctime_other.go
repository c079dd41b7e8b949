//go:build !linux

package volume

import (
	"os"
	"time"
)

// ctimeOf returns the inode change time of a stat result where the platform reports it;
// here it does not (ok is false), and the catalog falls back to the modification time.
func ctimeOf(fi os.FileInfo) (t time.Time, ok bool) { return time.Time{}, false }
