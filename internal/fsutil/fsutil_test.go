package fsutil

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestSyncDir: a directory syncs; a missing one gives an error naming it.
func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		dir     string
		wantErr error
	}{
		{"directory", dir, nil},
		{"missing", filepath.Join(dir, "nope"), fs.ErrNotExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := SyncDir(tc.dir)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.dir) {
				t.Fatalf("SyncDir(%s) = %v, want %v naming the directory", tc.dir, err, tc.wantErr)
			}
		})
	}
}
