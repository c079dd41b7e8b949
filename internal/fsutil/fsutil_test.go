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

func TestKind(t *testing.T) {
	for m, want := range map[fs.FileMode]string{
		0o644:                             "a regular file",
		fs.ModeDir | 0o755:                "a directory",
		fs.ModeNamedPipe:                  "a FIFO",
		fs.ModeSocket:                     "a socket",
		fs.ModeDevice | fs.ModeCharDevice: "a character device",
		fs.ModeDevice:                     "a block device",
		fs.ModeSymlink:                    "a special file",
	} {
		if got := Kind(m); got != want {
			t.Errorf("Kind(%v) = %q, want %q", m, got, want)
		}
	}
}
