package keyslot

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/pbkdf2"
)

// TestUnlockContextHighIterations: pbkdf2 counts at the cap open (they are what cryptsetup
// can read), and an unlock that would spin through them for many minutes ends promptly when
// its context does, whether the count is the keyslot's or the digest's.
func TestUnlockContextHighIterations(t *testing.T) {
	t.Parallel()
	const maxAllowed = "2147483647"
	tests := []struct {
		name     string
		old, new string
	}{
		{"keyslot", `"iterations":1000,"salt"`, `"iterations":` + maxAllowed + `,"salt"`},
		{"digest", `"segments":["0"],"hash":"sha256","iterations":1000`, `"segments":["0"],"hash":"sha256","iterations":` + maxAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dev, text := baseImage(t, testKDF)
			require.Contains(t, text, tt.old)
			writeRawMetadata(t, dev, strings.Replace(text, tt.old, tt.new, 1))
			img, err := Open(dev, nil)
			require.NoError(t, err, "the highest allowed count opens")

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, _, err = img.UnlockContext(ctx, []byte("pass"), AnyKeyslot)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.NotErrorIs(t, err, ErrWrongPassphrase)
			assert.Less(t, time.Since(start), 20*time.Second, "the KDF stops when the context ends (it would run for minutes; a failure bound, not a speed target)")

			ctx, cancel = context.WithCancel(context.Background())
			cancel()
			_, _, err = img.UnlockContext(ctx, []byte("pass"), 0)
			assert.ErrorIs(t, err, context.Canceled)
		})
	}
}

// TestUnlockContextUncancelled: with a live context UnlockContext is Unlock.
func TestUnlockContextUncancelled(t *testing.T) {
	t.Parallel()
	_, img, vk := newMemImage(t, "pass")
	key, slot, err := img.UnlockContext(context.Background(), []byte("pass"), AnyKeyslot)
	require.NoError(t, err)
	assert.Equal(t, 0, slot)
	assert.Equal(t, vk, key)
	_, _, err = img.UnlockContext(context.Background(), []byte("wrong"), AnyKeyslot)
	assert.ErrorIs(t, err, ErrWrongPassphrase)
}

// TestPBKDF2MatchesXCrypto: the cancellable PBKDF2 gives golang.org/x/crypto/pbkdf2's output
// for every hash, for key lengths that are and are not multiples of the hash size, and for
// counts around the context-check interval.
func TestPBKDF2MatchesXCrypto(t *testing.T) {
	t.Parallel()
	for _, hashName := range []string{"sha1", "sha256", "sha512"} {
		for _, keyLen := range []int{20, 32, 33, 64, 100} {
			for _, iter := range []int{1, 2, 1000, pbkdf2CheckEvery, pbkdf2CheckEvery + 1} {
				t.Run(fmt.Sprintf("%s/%d/%d", hashName, keyLen, iter), func(t *testing.T) {
					h, err := hashByName(hashName)
					require.NoError(t, err)
					pass, salt := []byte("passphrase"), []byte("salt of thirty-two bytes........")
					got, err := pbkdf2Key(context.Background(), pass, salt, iter, keyLen, h.new)
					require.NoError(t, err)
					assert.Equal(t, pbkdf2.Key(pass, salt, iter, keyLen, h.new), got)
				})
			}
		}
	}
}
