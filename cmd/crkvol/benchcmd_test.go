package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCreateOutput: an output file (bench --output, sim run --report) is created new; an existing one is refused without
// --force (and left as it was) and truncated with it.
func TestCreateOutput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		exists, force bool
		wantErr       error
		want          string
	}{
		{"new", false, false, nil, "new"},
		{"new with force", false, true, nil, "new"},
		{"exists", true, false, fs.ErrExist, "old content"},
		{"exists with force", true, true, nil, "new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "report.json")
			if tc.exists {
				require.NoError(t, os.WriteFile(path, []byte("old content"), 0o644))
			}
			f, err := createOutput("output", path, tc.force, 0o644)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				assert.Contains(t, err.Error(), path)
			} else {
				require.NoError(t, err)
				_, err = f.WriteString("new")
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
}
