// Package fsutil holds file-system helpers shared by crkvol's packages.
package fsutil

import (
	"fmt"
	"io/fs"
	"os"
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
