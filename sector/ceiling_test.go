package sector

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCeilingLoop runs every path's ceiling loop briefly (no timing claims): the assembly
// paths this CPU runs return the bytes their iterations stand for, whatever the count
// (below, at and above the chunk one assembly call runs); the portable path, unknown paths
// and the assembly paths this build or CPU lacks report ErrNoCeiling; a negative count is
// refused.
func TestCeilingLoop(t *testing.T) {
	t.Parallel()
	perIteration := map[Path]int64{PathVAES: 1024, PathAESNI: 224}
	for _, path := range []Path{PathVAES, PathAESNI, PathGeneric, "nonesuch"} {
		t.Run(string(path), func(t *testing.T) {
			per, asm := perIteration[path]
			runs := false
			for _, p := range Paths() {
				runs = runs || p == path
			}
			for _, n := range []int{0, 1, ceilingChunk, 3*ceilingChunk + 7} {
				got, err := CeilingLoop(path, n)
				if !asm || !runs {
					require.ErrorIs(t, err, ErrNoCeiling)
					assert.Contains(t, err.Error(), string(path))
					assert.Zero(t, got)
					continue
				}
				require.NoError(t, err)
				assert.Equal(t, int64(n)*per, got)
			}
			_, err := CeilingLoop(path, -1)
			require.Error(t, err)
			assert.False(t, errors.Is(err, ErrNoCeiling))
			assert.Contains(t, err.Error(), "negative")
		})
	}
}
