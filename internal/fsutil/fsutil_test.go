package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

// TestWriteFileAtomic: the file is replaced whole, mode 0600, no temporary file is left, a
// link at the old name is replaced rather than written through, and a failure names the path.
func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	victim := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.WriteFile(victim, []byte("keep"), 0o644))
	require.NoError(t, os.Symlink(victim, path))
	require.NoError(t, WriteFileAtomic(path, []byte("new")))
	got, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "keep", string(got), "the link's target is untouched")
	st, err := os.Lstat(path)
	require.NoError(t, err)
	assert.True(t, st.Mode().IsRegular())
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "new", string(got))
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, ents, 1, "no temporary file is left")
	err = WriteFileAtomic(filepath.Join(dir, "missing", "f"), []byte("x"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "writing "+filepath.Join(dir, "missing", "f"))
}

// TestCheckPrivate: a directory only its owner can write passes; one its group or others can
// write is ErrNotPrivate naming it and its mode; a file is not a directory; a missing one
// matches fs.ErrNotExist.
func TestCheckPrivate(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		require.NoError(t, os.Mkdir(p, 0o700))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	file := filepath.Join(base, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	for _, tc := range []struct {
		name, path string
		is         error
		want       string
	}{
		{"0700", mk("private", 0o700), nil, ""},
		{"0755", mk("readable", 0o755), nil, ""},
		{"0770", mk("group", 0o770), ErrNotPrivate, "has mode 0770, so its group or others can write it"},
		{"0777", mk("world", 0o777), ErrNotPrivate, "has mode 0777"},
		{"0757", mk("others", 0o757), ErrNotPrivate, "has mode 0757"},
		{"file", file, nil, "is a regular file, not a directory"},
		{"missing", filepath.Join(base, "missing"), fs.ErrNotExist, "checking directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPrivate(tc.path)
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
			assert.Contains(t, err.Error(), tc.path)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
