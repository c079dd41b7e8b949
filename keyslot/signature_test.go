package keyslot

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// lvm2Label returns a valid LVM2 physical volume label for sector: what pvcreate writes and
// blkid recognises (id, sector, crc over the rest of the sector, type, PV uuid).
func lvm2Label(sector uint64) []byte {
	b := make([]byte, 512)
	copy(b, "LABELONE")
	binary.LittleEndian.PutUint64(b[8:], sector)
	binary.LittleEndian.PutUint32(b[20:], 32)
	copy(b[24:], "LVM2 001")
	copy(b[32:], "abcdefghijklmnopqrstuvwxyz012345")
	binary.LittleEndian.PutUint32(b[16:], lvm2CRC(b[20:]))
	return b
}

// TestAmbiguousSignature: an image whose primary header is damaged by another format's
// signature (an LVM2 PV label at byte 512) opens read-only, but every metadata change is
// refused, because it would first "repair" the primary and wipe the label; an explicit Repair
// goes ahead, as `cryptsetup repair` does. cryptsetup refuses the same image.
func TestAmbiguousSignature(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		sector  uint64
		corrupt func(b []byte) // after the label is written
		foreign bool
	}{
		{"lvm2 label in sector 1", 1, nil, true},
		{"lvm2 label in sector 0", 0, func(b []byte) {}, true},
		{"lvm2 label with a bad crc", 1, func(b []byte) { b[512+100] ^= 1 }, false},
		{"lvm2 label for another sector", 1, func(b []byte) { binary.LittleEndian.PutUint64(b[512+8:], 2) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dev, img, _ := newMemImage(t, "pass")
			label := lvm2Label(tt.sector)
			copy(dev.buf[tt.sector*512:], label)
			if tt.corrupt != nil {
				tt.corrupt(dev.buf)
			}
			require.NoError(t, img.Reload())
			require.Error(t, img.Health().Primary.Err, "the label damages the primary header")
			seq := img.SeqID()
			_, _, err := img.Unlock([]byte("pass"), AnyKeyslot)
			require.NoError(t, err, "the image still opens and unlocks")

			_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
			if !tt.foreign {
				require.NoError(t, err, "an invalid label is not a signature: auto-repair as before")
				return
			}
			require.ErrorIs(t, err, ErrAmbiguousSignature)
			assert.Contains(t, err.Error(), "LVM2")
			assert.ErrorIs(t, img.RemoveKeyslot(0), ErrAmbiguousSignature)
			assert.ErrorIs(t, img.Erase(), ErrAmbiguousSignature)
			require.NoError(t, img.Reload())
			assert.Equal(t, seq, img.SeqID(), "nothing committed")
			assert.True(t, bytes.Contains(dev.buf[:2048], []byte("LABELONE")), "the label is untouched")

			require.NoError(t, img.Repair(), "an explicit repair goes ahead")
			require.NoError(t, img.Reload())
			assert.True(t, img.Health().OK())
			_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
			require.NoError(t, err)
		})
	}

	t.Run("cryptsetup agrees", func(t *testing.T) {
		t.Parallel()
		cs := tooltest.Require(t, "cryptsetup")["cryptsetup"]
		// blkid 2.38.1 ignores the label on an image as small as smallSize, so this one is
		// larger.
		const size = 4 << 20
		path := filepath.Join(t.TempDir(), "lvm.img")
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		require.NoError(t, err)
		defer f.Close()
		require.NoError(t, f.Truncate(size))
		img, _, err := Format(f, size, []byte("pass"), smallFormat())
		require.NoError(t, err)
		_, err = f.WriteAt(lvm2Label(1), 512)
		require.NoError(t, err)
		out, err := exec.Command(cs, "luksDump", path).CombinedOutput()
		require.Error(t, err)
		assert.Contains(t, string(out), "ambiguous signatures")
		require.NoError(t, img.Reload())
		_, err = img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
		require.ErrorIs(t, err, ErrAmbiguousSignature)
	})
}

// TestLVM2CRCKnownAnswer: the label checksum is LVM's (initial value 0xf597a6cf, reflected
// CRC-32 polynomial, no final inversion): the value blkid 2.38.1 computed for this label
// (LIBBLKID_DEBUG=lowprobe), with which `blkid -p` reports it as LVM2_member.
func TestLVM2CRCKnownAnswer(t *testing.T) {
	t.Parallel()
	b := lvm2Label(1)
	assert.Equal(t, uint32(0x2bdb0791), binary.LittleEndian.Uint32(b[16:]))
}
