package volume_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setDigestIterations rewrites the digest's pbkdf2 iteration count in both header copies of
// the image at path and fixes their checksums, as a hostile or corrupted header would have it.
func setDigestIterations(t *testing.T, path string, iterations string) {
	t.Helper()
	old := `"segments":["0"],"hash":"sha256","iterations":1000,`
	repl := `"segments":["0"],"hash":"sha256","iterations":` + iterations + `,`
	rewriteMetadata(t, path, func(text string) string {
		require.Contains(t, text, old)
		return strings.Replace(text, old, repl, 1)
	})
}

// TestOpenStopsWhenContextEnds: a header whose digest asks for the most pbkdf2 iterations
// allowed (minutes of work) does not hang Open: the key derivation stops when the context
// ends.
func TestOpenStopsWhenContextEnds(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "slow.img", 1<<20)
	setDigestIterations(t, info.Path, "2147483647")

	ctx, cancel := context.WithTimeout(f.ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.mgr.Open(ctx, info.Path)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 10*time.Second)
}
