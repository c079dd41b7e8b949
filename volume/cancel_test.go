package volume_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setDigestIterations rewrites the digest's pbkdf2 iteration count in both header copies of
// the image at path and fixes their checksums, as a hostile or corrupted header would have it.
func setDigestIterations(t *testing.T, path string, iterations string) {
	t.Helper()
	img, err := os.ReadFile(path)
	require.NoError(t, err)
	hdrSize := binary.BigEndian.Uint64(img[8:16])
	old := []byte(`"segments":["0"],"hash":"sha256","iterations":1000,`)
	repl := []byte(`"segments":["0"],"hash":"sha256","iterations":` + iterations + `,`)
	for _, off := range []uint64{0, hdrSize} {
		area := img[off+4096 : off+hdrSize]
		text := area[:bytes.IndexByte(area, 0)]
		require.Contains(t, string(text), string(old))
		newText := bytes.Replace(text, old, repl, 1)
		clear(area)
		copy(area, newText)
		hdr := img[off : off+4096]
		clear(hdr[448:512])
		sum := sha256.New()
		sum.Write(hdr)
		sum.Write(area)
		copy(hdr[448:], sum.Sum(nil))
	}
	require.NoError(t, os.WriteFile(path, img, 0o600))
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
