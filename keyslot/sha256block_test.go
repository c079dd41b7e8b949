package keyslot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"crkvol/internal/tooltest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/pbkdf2"
)

// TestSHA256Blocks: sha256Finish gives crypto/sha256's digest for every message length
// around the padding boundaries, with sha256Blocks (SHA-NI where the CPU has it) and with
// sha256BlocksGeneric, which must agree block by block too; and from a state after one
// block it hashes the rest of the message.
func TestSHA256Blocks(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	msg := make([]byte, 300)
	for i := range msg {
		msg[i] = byte(rng.Uint32())
	}
	for n := range len(msg) {
		want := sha256.Sum256(msg[:n])
		st := sha256IV
		require.Equal(t, want, sha256Finish(&st, 0, msg[:n]), "%d bytes", n)

		a, b := sha256IV, sha256IV
		sha256Blocks(&a, msg[:n])
		sha256BlocksGeneric(&b, msg[:n])
		require.Equal(t, b, a, "%d bytes", n)

		if n >= 64 {
			st = sha256IV
			sha256Blocks(&st, msg[:64])
			require.Equal(t, want, sha256Finish(&st, 64, msg[64:n]), "%d bytes after a block", n)
		}
	}
	var blk [64]byte
	copy(blk[:], "abc")
	sha256Pad(&blk, 3, 0)
	st := sha256IV
	sha256Blocks(&st, blk[:])
	var got [32]byte
	sha256Put(got[:], &st)
	// FIPS 180-4's example "abc".
	assert.Equal(t, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", fmt.Sprintf("%x", got))
	t.Logf("SHA-NI: %v", hasSHANI)
}

// TestPBKDF2SHA256: the PBKDF2 on the compression function gives x/crypto's output for
// passphrases shorter than, as long as and longer than the HMAC block, salts whose first
// message fills one or two blocks, key lengths within and across blocks, and counts around
// the context-check interval; and stops on a cancelled context.
func TestPBKDF2SHA256(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	bytesOf := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	ctx := context.Background()
	for _, passLen := range []int{0, 1, 32, 63, 64, 65, 200} {
		for _, saltLen := range []int{0, 16, 32, 51, 52, 59, 60, 61, 124, 200} {
			for _, keyLen := range []int{1, 20, 32, 33, 64, 100} {
				pass, salt := bytesOf(passLen), bytesOf(saltLen)
				for _, iter := range []int{1, 2, 3, 17} {
					got, err := pbkdf2SHA256(ctx, pass, salt, iter, keyLen)
					require.NoError(t, err)
					require.Equal(t, pbkdf2.Key(pass, salt, iter, keyLen, sha256.New), got, "pass %d, salt %d, key %d, %d iterations", passLen, saltLen, keyLen, iter)
				}
			}
		}
	}
	pass, salt := []byte("passphrase"), []byte("salt of thirty-two bytes........")
	for _, iter := range []int{1000, pbkdf2CheckEvery, pbkdf2CheckEvery + 1} {
		got, err := pbkdf2SHA256(ctx, pass, salt, iter, 64)
		require.NoError(t, err)
		assert.Equal(t, pbkdf2.Key(pass, salt, iter, 64, sha256.New), got, "%d iterations", iter)
		h, err := hashByName("sha256")
		require.NoError(t, err)
		got, err = pbkdf2Derive(ctx, pass, salt, iter, 64, h)
		require.NoError(t, err)
		assert.Equal(t, pbkdf2.Key(pass, salt, iter, 64, sha256.New), got, "%d iterations", iter)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := pbkdf2SHA256(cancelled, pass, salt, 1000, 32)
	assert.ErrorIs(t, err, context.Canceled)
}

// TestDiffuserBlocks: the AF diffusion through sha256Blocks equals the one through
// crypto/sha256 for every buffer length, whole and partial 32-byte blocks; so do merges.
func TestDiffuserBlocks(t *testing.T) {
	t.Parallel()
	h, err := hashByName("sha256")
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(5, 6))
	for n := 1; n <= 130; n++ {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		a, b := bytes.Clone(buf), bytes.Clone(buf)
		fast, slow := newDiffuserWith(h, true), newDiffuserWith(h, false)
		fast.diffuse(a)
		slow.diffuse(b)
		require.Equal(t, b, a, "%d bytes", n)
		require.NotEqual(t, buf, a, "%d bytes", n)
		fast.wipe()
		assert.Equal(t, make([]byte, 64), fast.blk[:], "wiped")
		assert.Equal(t, make([]byte, 64), fast.blk2[:], "wiped")
	}
}

// TestSHA256Block2: the two interleaved compressions equal two single ones, for unrelated
// states and blocks, and for the same state and block given twice.
func TestSHA256Block2(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(7, 8))
	for range 200 {
		var a, b [8]uint32
		var pa, pb [64]byte
		for i := range a {
			a[i], b[i] = rng.Uint32(), rng.Uint32()
		}
		for i := range pa {
			pa[i], pb[i] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		wa, wb := a, b
		sha256BlocksGeneric(&wa, pa[:])
		sha256BlocksGeneric(&wb, pb[:])
		sha256Block2(&a, &b, &pa, &pb)
		require.Equal(t, wa, a)
		require.Equal(t, wb, b)
		c := wa
		sha256Block2(&wa, &c, &pb, &pb)
		require.Equal(t, wa, c)
	}
}

// TestSHA256Block2Generated: sha256block2_amd64.s is what sha256block2_gen.go writes from
// sha256block_amd64.s (run go generate ./keyslot after changing either). It runs the go
// command, so only with the long tests.
func TestSHA256Block2Generated(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("runs go run sha256block2_gen.go; set CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	out := filepath.Join(t.TempDir(), "gen.s")
	cmd := exec.Command("go", "run", "sha256block2_gen.go", "-out", out)
	msg, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", msg)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	want, err := os.ReadFile("sha256block2_amd64.s")
	require.NoError(t, err)
	require.Equal(t, string(want), string(got), "sha256block2_amd64.s is stale: run go generate ./keyslot")
}
