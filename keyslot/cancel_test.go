package keyslot

import (
	"context"
	"fmt"
	"os"
	"os/exec"
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

// argon2ChildEnv marks the child process TestUnlockContextArgon2HugeTime runs itself in.
const argon2ChildEnv = "CRKVOL_TEST_ARGON2_CHILD"

// TestUnlockContextArgon2HugeTime: x/crypto's argon2 takes no context, so a crafted keyslot
// with the highest time cost crkvol accepts (hours of work at 32 KiB) must still let
// UnlockContext return promptly, with ctx.Err() wrapped, when the context ends — whether it
// ends by deadline or by cancel during the derivation.
//
// The abandoned derivations run on for hours, which would take the CPU from every other test
// of the package; so the test runs in a child process of the test binary, whose exit ends
// them.
func TestUnlockContextArgon2HugeTime(t *testing.T) {
	if os.Getenv(argon2ChildEnv) == "" {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^TestUnlockContextArgon2HugeTime$", "-test.v", "-test.count", "1")
		cmd.Env = append(os.Environ(), argon2ChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "child test:\n%s", out)
		assert.Contains(t, string(out), "--- PASS: TestUnlockContextArgon2HugeTime/deadline")
		assert.Contains(t, string(out), "--- PASS: TestUnlockContextArgon2HugeTime/cancel")
		return
	}
	huge := fmt.Sprint(MaxArgon2Time)
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dev, text := baseImage(t, Argon2id(4, 32, 1))
			require.Contains(t, text, `"time":4,`)
			writeRawMetadata(t, dev, strings.Replace(text, `"time":4,`, `"time":`+huge+`,`, 1))
			img, err := Open(dev, nil)
			require.NoError(t, err, "the highest allowed time cost opens")

			ctx, cancel := tt.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, _, err := img.UnlockContext(ctx, []byte("pass"), AnyKeyslot)
				done <- err
			}()
			select {
			case err := <-done:
				assert.ErrorIs(t, err, tt.wantErr)
				assert.NotErrorIs(t, err, ErrWrongPassphrase)
			case <-time.After(20 * time.Second):
				t.Fatal("UnlockContext did not return within 20 s of a context ending after 100 ms (a hang guard, not a speed target)")
			}
		})
	}
}
