package keyslot

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestVerifiedCopiesSeeChanges: an Image takes a header copy it checked before from memory
// only when the bytes read are the same; a change by another Image, a damaged byte anywhere
// in a copy (JSON padding, binary header) or the change undone are all seen on the next read.
func TestVerifiedCopiesSeeChanges(t *testing.T) {
	t.Parallel()
	dev, img, _ := newMemImage(t, "p")
	other, err := Open(dev, nil)
	require.NoError(t, err)
	_, err = other.AddToken(AnyToken, []byte(`{"type":"a","keyslots":["0"]}`))
	require.NoError(t, err)
	_, err = img.AddToken(AnyToken, []byte(`{"type":"b","keyslots":["0"]}`))
	require.NoError(t, err)
	require.NoError(t, other.Reload())
	assert.Len(t, other.Tokens(), 2, "both updates kept")
	assert.True(t, img.Health().OK())

	hdrSize := img.snapshot().bin.hdrSize
	for _, tc := range []struct {
		name      string
		off       uint64
		secondary bool
	}{
		{"secondary JSON padding", 2*hdrSize - 1, true},
		{"primary JSON padding", hdrSize - 1, false},
		{"primary label", offLabel + 10, false},
		{"secondary salt", hdrSize + offSalt, true},
	} {
		dev.buf[tc.off] ^= 0x40
		require.NoError(t, img.Reload(), tc.name)
		h := img.Health()
		bad := h.Primary.Err
		if tc.secondary {
			bad = h.Secondary.Err
		}
		assert.ErrorIs(t, bad, ErrHeaderCorrupt, tc.name)
		dev.buf[tc.off] ^= 0x40
		require.NoError(t, img.Reload(), tc.name)
		assert.True(t, img.Health().OK(), "%s: restored", tc.name)
	}
}

// TestHeaderAllocations counts allocations, a machine-independent measure of the header
// path's cost: reading an unchanged header again (every metadata update starts so) takes the
// checked copies from memory instead of parsing (one parse alone allocates more than the
// bound); opening and a token update stay within their budgets.
func TestHeaderAllocations(t *testing.T) {
	dev, img, _ := newMemImage(t, "p")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"AAAA"}`))
	require.NoError(t, err)
	next := []byte(`{"type":"crkvol-crk","keyslots":["0"],"ciphertext":"BBBB"}`)
	reload := testing.AllocsPerRun(20, func() { require.NoError(t, img.Reload()) })
	open := testing.AllocsPerRun(20, func() {
		_, err := Open(dev, nil)
		require.NoError(t, err)
	})
	update := testing.AllocsPerRun(20, func() { require.NoError(t, img.ReplaceToken(id, next)) })
	t.Logf("allocations: reload %v, open %v, token update %v", reload, open, update)
	assert.LessOrEqual(t, reload, 20.0, "reload")
	assert.LessOrEqual(t, open, 150.0, "open (821 before the scanner)")
	assert.LessOrEqual(t, update, 250.0, "token update (2990 before the scanner)")
}

// readCountingDevice counts ReadAt calls.
type readCountingDevice struct {
	*memDevice
	reads int
}

func (d *readCountingDevice) ReadAt(p []byte, off int64) (int, error) {
	d.reads++
	return d.memDevice.ReadAt(p, off)
}

// TestOpenReads: opening an image with the default header size reads both copies with one
// read; with a larger header, the copies beyond the read-ahead are read as before, and the
// image opens the same.
func TestOpenReads(t *testing.T) {
	t.Parallel()
	dev, img, _ := newMemImage(t, "p")
	d := &readCountingDevice{memDevice: dev}
	again, err := Open(d, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, d.reads, "reads to open")
	assert.Equal(t, img.UUID(), again.UUID())
	assert.True(t, again.Health().OK())

	big := newMemDevice(4 << 20)
	opts := smallFormat()
	opts.MetadataSize = 64 << 10
	_, _, err = Format(big, 4<<20, []byte("p"), opts)
	require.NoError(t, err)
	d = &readCountingDevice{memDevice: big}
	again, err = Open(d, nil)
	require.NoError(t, err)
	assert.True(t, again.Health().OK())
	assert.Equal(t, 4, d.reads, "reads to open a 64 KiB header: the read-ahead, the rest of the primary's area, the secondary's header and area")
}
