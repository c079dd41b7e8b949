package volume

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
	"crkvol/qcow2"
	"crkvol/sector"
)

// TestUnlockQcow2TriesRecordedSlotFirst: with keyslots 1 to 7 made active at 2^31-1 PBKDF2
// iterations (more work than keyslot allows in one unlock), a plain unlock is refused before
// deriving anything, while the keyslot recorded at import (0) opens alone.
func TestUnlockQcow2TriesRecordedSlotFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	mk := make([]byte, 64)
	pass := make([]byte, 32)
	_, _ = rand.Read(mk)
	_, _ = rand.Read(pass)
	hdr, err := keyslot.FormatLUKS1(ctx, mk, pass, keyslot.LUKS1Options{})
	require.NoError(t, err)
	for i := 1; i < 8; i++ {
		sb := hdr[208+i*48:]
		binary.BigEndian.PutUint32(sb[0:], 0x00AC71F3) // active
		binary.BigEndian.PutUint32(sb[4:], 0x7fffffff) // iterations
	}
	c, err := sector.New(mk, 512)
	require.NoError(t, err)
	defer c.Wipe()
	p := filepath.Join(t.TempDir(), "img.qcow2")
	fh, err := os.Create(p)
	require.NoError(t, err)
	defer fh.Close()
	_, err = qcow2.Write(ctx, fh, zeroReader{}, nil, qcow2.WriteOptions{Size: 1 << 20, EncryptionHeader: hdr, Cipher: c})
	require.NoError(t, err)
	fi, err := fh.Stat()
	require.NoError(t, err)
	qi, err := qcow2.Open(fh, fi.Size(), qcow2.Options{})
	require.NoError(t, err)

	_, _, _, err = unlockQcow2(ctx, qi, pass, -1)
	assert.ErrorIs(t, err, keyslot.ErrKDFLimits)
	_, got, slot, err := unlockQcow2(ctx, qi, pass, 0)
	require.NoError(t, err)
	assert.Equal(t, mk, got)
	assert.Equal(t, 0, slot)
	// The recorded keyslot refuses (inactive or wrong): the others are tried, within the
	// limits.
	_, _, _, err = unlockQcow2(ctx, qi, []byte("wrong"), 0)
	assert.ErrorIs(t, err, keyslot.ErrKDFLimits)
}

// zeroReader reads as zeros.
type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) { clear(p); return len(p), nil }
