package crk

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMasterKeyErrorsSayWhat: every master key problem is an ErrMasterKey, but only a key that
// does not open the store says it does not match; a missing key file, a key of the wrong size
// and a key file others can read each say so.
func TestMasterKeyErrorsSayWhat(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		t.Parallel()
		dir := t.TempDir()
		path := filepath.Join(dir, "crk.db")
		svc, err := st.open(path, Options{})
		require.NoError(t, err)
		require.NoError(t, svc.Close())
		bare := filepath.Join(dir, "bare.db")
		st.existingWithoutKeyFile(t, bare)
		loose := filepath.Join(dir, "loose.db")
		svc, err = st.open(loose, Options{})
		require.NoError(t, err)
		require.NoError(t, svc.Close())
		require.NoError(t, os.Chmod(loose+".masterkey", 0o640))
		for _, tc := range []struct {
			name string
			path string
			opts Options
			want string
		}{
			{"mismatch", path, Options{MasterKey: make([]byte, 32)}, "service master key does not match the store (is the master key or key file the one this store was made with?)"},
			{"size", path, Options{MasterKey: make([]byte, 16)}, "crk: the master key is 16 bytes, want 32"},
			{"no key file", bare, Options{}, "crk: store " + st.name(bare) + " exists but its master key file " + bare + ".masterkey does not"},
			{"mode", loose, Options{}, "crk: master key file " + loose + ".masterkey has mode -rw-r-----; it must be 0600 (readable by its owner only)"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := st.open(tc.path, tc.opts)
				require.ErrorIs(t, err, ErrMasterKey)
				assert.Equal(t, tc.want, err.Error())
				info, ok := LookupError(err)
				assert.True(t, ok)
				assert.Equal(t, ErrMasterKey, info.Err)
			})
		}
	})
}
