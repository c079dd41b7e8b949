// Package fsutil holds file-system helpers shared by crkvol's packages.
package fsutil

import (
	"fmt"
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
