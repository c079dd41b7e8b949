package crk

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMasterKeyDirectoryMustBePrivate: a master key file in a directory its group or others
// can write, or one owned by another user (not root), is refused before anything is read or
// written, and nothing is created there.
func TestMasterKeyDirectoryMustBePrivate(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix modes")
	}
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		owner int // -1: the test's user
		want  string
	}{
		{"world-writable", 0o777, -1, "has mode 0777, so its group or others can write it (chmod go-w "},
		{"sticky world-writable", 0o777 | os.ModeSticky, -1, "has mode 0777, so its group or others can write it"},
		{"group-writable", 0o770, -1, "has mode 0770, so its group or others can write it"},
		{"another user's", 0o700, 65534, "is owned by user id 65534, neither the user running crkvol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.owner >= 0 && os.Geteuid() != 0 {
				t.Skip("giving a directory to another user needs root")
			}
			dir := filepath.Join(t.TempDir(), "state")
			require.NoError(t, os.Mkdir(dir, 0o700))
			require.NoError(t, os.Chmod(dir, tc.mode))
			if tc.owner >= 0 {
				require.NoError(t, os.Chown(dir, tc.owner, tc.owner))
			}
			_, err := Open(filepath.Join(dir, "crk.db"), Options{})
			require.ErrorIs(t, err, ErrMasterKey)
			assert.Contains(t, err.Error(), "crk: master key file "+filepath.Join(dir, "crk.db.masterkey")+": ")
			assert.Contains(t, err.Error(), tc.want)
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Empty(t, ents, "nothing is made in the directory")
		})
	}
}

// TestMasterKeyFileNotWrittenThroughPlantedLink: the new key file is written through a
// temporary file of a random name, created exclusively: a link planted at a predictable name
// beside it (the old crk.db.masterkey.tmp) is neither followed nor left pointing at the key.
func TestMasterKeyFileNotWrittenThroughPlantedLink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.WriteFile(victim, []byte("important\n"), 0o644))
	path := filepath.Join(dir, "crk.db")
	require.NoError(t, os.Symlink(victim, path+".masterkey.tmp"))
	svc, err := Open(path, Options{})
	require.NoError(t, err)
	require.NoError(t, svc.Close())
	got, err := os.ReadFile(victim)
	require.NoError(t, err)
	assert.Equal(t, "important\n", string(got), "the link's target is untouched")
	st, err := os.Lstat(path + ".masterkey")
	require.NoError(t, err)
	assert.True(t, st.Mode().IsRegular())
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	assert.ElementsMatch(t, []string{"crk.db", "crk.db.masterkey", "crk.db.masterkey.tmp"}, names, "no temporary file is left")
}
