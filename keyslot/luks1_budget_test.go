package keyslot

import (
	"bytes"
	"context"
	"crkvol/internal/tooltest"
	"encoding/binary"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// formatTestArea returns a LUKS1 header area made by FormatLUKS1 (sha256, 256-bit key) with
// its master key and passphrase.
func formatTestArea(t *testing.T) (area, mk, pass []byte) {
	t.Helper()
	mk = bytes.Repeat([]byte{3, 1, 4, 1, 5, 9, 2, 6}, 4)
	pass = []byte("budget passphrase")
	area, err := FormatLUKS1(context.Background(), mk, pass, LUKS1Options{})
	require.NoError(t, err)
	return area, mk, pass
}

// TestLUKS1WorkBudget is the reviewer's finding: a header with eight active keyslots and a
// master-key digest at 2^31-1 iterations each (every count allowed on its own) made Unlock
// run for hours. Unlock and UnlockSlot must refuse before deriving anything, naming the
// numbers, while headers at the budget's edge still open.
func TestLUKS1WorkBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	area, mk, pass := formatTestArea(t)
	// hostile sets the digest's and every keyslot's iterations, all keyslots active.
	hostile := func(slotIter, digestIter uint32, active int) []byte {
		b := bytes.Clone(area)
		binary.BigEndian.PutUint32(b[l1OffMKIter:], digestIter)
		for i := range active {
			sb := b[l1OffSlots+i*l1SlotSize:]
			binary.BigEndian.PutUint32(sb[0:], l1SlotActive)
			binary.BigEndian.PutUint32(sb[4:], slotIter)
		}
		return b
	}
	tests := []struct {
		name               string
		slotIter, digest   uint32
		active             int
		unlockErr, slotErr bool
		msg                string
	}{
		{"eight keyslots and the digest at 2^31-1", math.MaxInt32, math.MaxInt32, 8, true, true, "over the limit of 67108864"},
		{"eight keyslots under the cap each, over it together", MaxLUKS1Iterations / 8, 1000, 8, true, false, "keyslot 7: 8388608"},
		{"one keyslot just over", MaxLUKS1Iterations - 999, 1000, 1, true, true, "67108865 PBKDF2 iterations"},
		{"the digest alone over", 1000, MaxLUKS1Iterations, 1, true, true, "plus 67108864 for the master-key digest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := hostile(tt.slotIter, tt.digest, tt.active)
			h, err := ParseLUKS1(bytes.NewReader(b), int64(len(b)))
			require.NoError(t, err, "each count is within MaxPBKDF2Iterations: the header parses")
			// A short deadline: refusing must not need derivation at all.
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			start := time.Now()
			_, _, err = h.Unlock(ctx, bytes.NewReader(b), pass)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrKDFLimits)
			assert.Contains(t, err.Error(), tt.msg)
			if tt.slotErr {
				_, err = h.UnlockSlot(ctx, bytes.NewReader(b), pass, 0)
				assert.ErrorIs(t, err, ErrKDFLimits)
			} else {
				// One keyslot alone is within the budget: UnlockSlot would derive (8 M
				// iterations, too slow for this test), not refuse.
				assert.NoError(t, h.checkWork([]int{0}))
			}
			assert.Less(t, time.Since(start), 4*time.Second)
		})
	}

	// At the edge, the budget is not the reason: the real header opens, and one with all
	// keyslots active is still within it.
	h, err := ParseLUKS1(bytes.NewReader(area), int64(len(area)))
	require.NoError(t, err)
	assert.NoError(t, h.checkWork(h.ActiveSlots()))
	got, slot, err := h.Unlock(ctx, bytes.NewReader(area), pass)
	require.NoError(t, err)
	assert.Equal(t, mk, got)
	assert.Equal(t, 0, slot)
	edge := hostile(MaxLUKS1Iterations/8-1000, 1000, 8)
	h, err = ParseLUKS1(bytes.NewReader(edge), int64(len(edge)))
	require.NoError(t, err)
	assert.NoError(t, h.checkWork(h.ActiveSlots()))

	// FormatLUKS1 never makes a header Unlock refuses.
	_, err = FormatLUKS1(ctx, mk, pass, LUKS1Options{Iterations: MaxLUKS1Iterations - 999})
	assert.ErrorIs(t, err, ErrKDFLimits)
}

// TestLUKS1UnlockSlot opens one named keyslot.
func TestLUKS1UnlockSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	area, mk, pass := formatTestArea(t)
	h, err := ParseLUKS1(bytes.NewReader(area), int64(len(area)))
	require.NoError(t, err)
	tests := []struct {
		name   string
		pass   []byte
		slot   int
		target error
	}{
		{"the keyslot holding it", pass, 0, nil},
		{"wrong passphrase", []byte("wrong"), 0, ErrLUKS1Passphrase},
		{"inactive keyslot", pass, 3, ErrLUKS1Passphrase},
		{"negative", pass, -1, ErrKeyslotNotFound},
		{"past the last", pass, 8, ErrKeyslotNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := h.UnlockSlot(ctx, bytes.NewReader(area), tt.pass, tt.slot)
			if tt.target == nil {
				require.NoError(t, err)
				assert.Equal(t, mk, key)
				return
			}
			assert.ErrorIs(t, err, tt.target)
			assert.Nil(t, key)
		})
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = h.UnlockSlot(cancelled, bytes.NewReader(area), pass, 0)
	assert.ErrorIs(t, err, context.Canceled)
}

// TestLUKS1DefaultCostsWithinBudget: headers qemu-img and cryptsetup make with their default
// iteration times (2 s each: slow, long runs only) are well within MaxLUKS1Iterations, and
// open, with Unlock and with UnlockSlot.
func TestLUKS1DefaultCostsWithinBudget(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("qemu-img and cryptsetup spend 2 s each on PBKDF2, and so does each unlock; set " + tooltest.LongEnv + "=1")
	}
	t.Parallel()
	tools := tooltest.Require(t, "qemu-img", "cryptsetup")
	dir := t.TempDir()
	pass := []byte("default cost passphrase")
	passFile := filepath.Join(dir, "pass")
	require.NoError(t, os.WriteFile(passFile, pass, 0o600))
	check := func(t *testing.T, area io.ReaderAt, size int64) {
		h, err := ParseLUKS1(area, size)
		require.NoError(t, err)
		w := h.work(h.ActiveSlots())
		t.Logf("%s, %d-byte key: keyslot iterations %d, digest %d: %d of %d", h.HashSpec, h.KeyBytes,
			h.Slots[0].Iterations, h.MKDigestIterations, w, MaxLUKS1Iterations)
		assert.Less(t, w, uint64(MaxLUKS1Iterations/2), "a default header leaves room for a faster machine")
		_, slot, err := h.Unlock(context.Background(), area, pass)
		require.NoError(t, err)
		_, err = h.UnlockSlot(context.Background(), area, pass, slot)
		require.NoError(t, err)
	}
	t.Run("qemu-img", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "q.qcow2")
		run(t, tools["qemu-img"], "create", "-f", "qcow2", "--object", "secret,id=sec0,file="+passFile,
			"-o", "encrypt.format=luks,encrypt.key-secret=sec0", out, "1M")
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		off, length := qcow2LUKSExtension(t, b)
		check(t, io.NewSectionReader(bytes.NewReader(b), off, length), length)
	})
	t.Run("cryptsetup", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "c.img")
		require.NoError(t, os.WriteFile(out, make([]byte, 4<<20), 0o600))
		run(t, tools["cryptsetup"], "luksFormat", "-q", "--type", "luks1", "--key-file", passFile, out)
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		check(t, bytes.NewReader(b), int64(len(b)))
	})
}
