package keyslot

import (
	"bytes"
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
		{"primary binary header padding", binHeaderUsed + 100, false},
		{"secondary binary header padding end", hdrSize + binHeaderSize - 1, true},
		{"primary JSON text", binHeaderSize + 20, false},
		{"primary JSON terminating NUL", binHeaderSize + uint64(len(img.snapshot().text)), false},
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

// TestSameBytes: copyState.sameBytes, which compares against the short form a copyState
// keeps, answers as bytes.Equal over the whole binary header and JSON area did, for changes
// anywhere in them and for other sizes, with each form keepRaw keeps: nothing (the header
// is what its fields marshal to), the fields (a byte after a text field's NUL is not zero)
// and the whole header (the padding is not zero).
func TestSameBytes(t *testing.T) {
	t.Parallel()
	dev, img, _ := newMemImage(t, "p")
	st := img.snapshot()
	size := int(st.bin.hdrSize)
	for _, form := range []string{"marshalled", "fields", "whole"} {
		raw := bytes.Clone(dev.buf[:binHeaderSize])
		area := bytes.Clone(dev.buf[binHeaderSize:size])
		switch form {
		case "fields":
			raw[offLabel+labelLen-2] = 'x' // after the label's NUL
		case "whole":
			raw[binHeaderUsed+7] = 1
		}
		h, err := parseBinHeader(raw)
		require.NoError(t, err)
		text, err := jsonText(area)
		require.NoError(t, err)
		c := &copyState{bin: h, raw: keepRaw(raw, h), text: bytes.Clone(text)}
		require.Equal(t, map[string]int{"marshalled": 0, "fields": binHeaderUsed, "whole": binHeaderSize}[form], len(c.raw), form)
		require.True(t, c.sameBytes(raw, area))

		n := len(text)
		for _, at := range []int{0, 6, offSeqID + 7, offLabel + labelLen - 2, offSalt, offCsum, binHeaderUsed - 1, binHeaderUsed, binHeaderUsed + 7, binHeaderSize - 1} {
			r := bytes.Clone(raw)
			r[at] ^= 0x10
			assert.False(t, c.sameBytes(r, area), "%s: binary header byte %d", form, at)
		}
		for _, at := range []int{0, n / 2, n - 1, n, n + 1, len(area) / 2, len(area) - 1} {
			a := bytes.Clone(area)
			a[at] ^= 0x10
			assert.Equal(t, bytes.Equal(a, area), c.sameBytes(raw, a), "%s: JSON area byte %d", form, at)
		}
		assert.False(t, c.sameBytes(raw, area[:len(area)-1]), "shorter area")
		assert.False(t, c.sameBytes(raw, append(bytes.Clone(area), 0)), "longer area")
		assert.False(t, c.sameBytes(raw[:binHeaderSize-1], area), "shorter binary header")
		assert.False(t, c.sameBytes(raw, area[:n]), "area without its NUL")
	}
}

// TestHeaderAllocations counts allocations, a machine-independent measure of the header
// path's cost: reading an unchanged header again (every metadata update starts so) takes the
// checked copies from memory instead of parsing (one parse alone allocates more than the
// bound); opening and a token update stay within their budgets.
func TestHeaderAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector (its sync.Pool drops items)")
	}
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
	assert.LessOrEqual(t, reload, 8.0, "reload (20 before the lent buffers)")
	assert.LessOrEqual(t, open, 50.0, "open (821 before the scanner, 112 before the lent buffers and arenas)")
	assert.LessOrEqual(t, update, 60.0, "token update (2990 before the scanner, 198 before the lent buffers and arenas)")
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
