package volume_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
	"crkvol/volume"
)

// damage kinds an image can suffer, each making it impossible to open.
var damages = []struct {
	name   string
	damage func(t *testing.T, path string, info *volume.Info, slot keyslot.SlotInfo)
	area   string // the problem's area
	reason string // in its reason
}{
	{"keyslot area bit flip", func(t *testing.T, path string, _ *volume.Info, ks keyslot.SlotInfo) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		b := make([]byte, 1)
		off := int64(ks.AreaOffset) + 1000
		_, err = f.ReadAt(b, off)
		require.NoError(t, err)
		b[0] ^= 0x10
		_, err = f.WriteAt(b, off)
		require.NoError(t, err)
	}, "keyslot 0", "does not open with the unwrapped passphrase"},
	{"keyslot area truncated", func(t *testing.T, path string, _ *volume.Info, ks keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, int64(ks.AreaOffset)+4096))
	}, "keyslot 0", "runs past the end of the"},
	{"file truncated before the data area", func(t *testing.T, path string, info *volume.Info, _ keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, info.DataOffset))
	}, "data area", "ends before the first 4096-byte sector of the data"},
	{"segment past the end", func(t *testing.T, path string, info *volume.Info, _ keyslot.SlotInfo) {
		fixSegment(t, path, info.Size+1<<20)
	}, "data area", "segment runs to byte"},
	{"file truncated inside the data area", func(t *testing.T, path string, info *volume.Info, _ keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, info.DataOffset+info.Size/2+1000))
	}, "data area", "not a whole number of 4096-byte sectors"},
	{"file truncated at a sector boundary inside the data area", func(t *testing.T, path string, info *volume.Info, _ keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, info.DataOffset+4096))
	}, "data area", "less than the 1048576 the volume was created with"},
}

// TestCheckFindsDamage: Check reports each kind of damage with its area and reason (and a
// sound image as healthy); a rewrap of a damaged image is a failure matching ErrUnhealthy,
// and its token is not rewritten.
func TestCheckFindsDamage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sound := f.create(t, "sound.img", 1<<20)
	problems, err := f.mgr.Check(f.ctx, sound.Path)
	require.NoError(t, err)
	assert.Empty(t, problems)

	infos := map[string]*volume.Info{}
	for _, d := range damages {
		infos[d.name] = f.create(t, d.name+".img", 1<<20)
	}
	for _, d := range damages {
		info := infos[d.name]
		fh, err := os.Open(info.Path)
		require.NoError(t, err)
		img, err := keyslot.Open(fh, nil)
		require.NoError(t, err)
		ks := img.Keyslots()[0]
		fh.Close()
		d.damage(t, info.Path, info, ks)
		_, err = f.mgr.Open(f.ctx, info.Path)
		require.Error(t, err, "%s: the damage makes the image unopenable", d.name)
	}
	f.rotate(t) // the rotation's rewrap meets the damaged images
	rep := f.lastReport()
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			info := infos[d.name]
			problems, err := f.mgr.Check(f.ctx, info.Path)
			require.NoError(t, err)
			require.NotEmpty(t, problems)
			var found bool
			for _, p := range problems {
				found = found || (p.Area == d.area && strings.Contains(p.Err.Error(), d.reason))
			}
			assert.True(t, found, "no %q problem about %q in %v", d.area, d.reason, problems)

			require.Contains(t, rep.Failed, info.CRN, "the rotation's rewrap reports it as failed")
			assert.ErrorIs(t, rep.Failed[info.CRN], volume.ErrUnhealthy)
			assert.Contains(t, rep.Failed[info.CRN].Error(), d.area)
			assert.Equal(t, info.KeyVersion, mustDescribe(t, info.Path).KeyVersion, "the token is not rewritten")

			_, err = f.mgr.RewrapVolume(f.ctx, info.Path)
			require.ErrorIs(t, err, volume.ErrUnhealthy, "a manual rewrap fails too")
			assert.Equal(t, info.KeyVersion, mustDescribe(t, info.Path).KeyVersion)
		})
	}
	assert.Equal(t, 1, rep.Rewrapped, "the sound image is rewrapped")
}

// fixSegment rewrites both header copies of the image at path so that its data segment has
// the fixed size size instead of "dynamic", with valid checksums: a header whose segment
// may run past the end of the file.
func fixSegment(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	head := make([]byte, 16)
	_, err = f.ReadAt(head, 0)
	require.NoError(t, err)
	hdrSize := int64(binary.BigEndian.Uint64(head[8:16]))
	dynamic := regexp.MustCompile(`"size"\s*:\s*"dynamic"`)
	for _, off := range []int64{0, hdrSize} {
		hdr := make([]byte, hdrSize)
		_, err := f.ReadAt(hdr, off)
		require.NoError(t, err)
		area := hdr[4096:]
		end := bytes.IndexByte(area, 0)
		require.Positive(t, end)
		js := dynamic.ReplaceAll(area[:end], []byte(fmt.Sprintf(`"size":"%d"`, size)))
		require.Less(t, len(js), len(area))
		clear(area)
		copy(area, js)
		const csumOff = 448 // the binary header's checksum field, 64 bytes
		clear(hdr[csumOff : csumOff+64])
		sum := sha256.Sum256(hdr)
		copy(hdr[csumOff:], sum[:])
		_, err = f.WriteAt(hdr, off)
		require.NoError(t, err)
	}
}

// TestCheckReportsKeyServiceRefusal: a key service that refuses the unwrap is reported as a
// problem, not taken for a healthy image.
func TestCheckReportsKeyServiceRefusal(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "k.img", 1<<20)
	_, err := f.svc.DisableKey(f.ctx, f.key.ID)
	require.NoError(t, err)
	problems, err := f.mgr.Check(f.ctx, info.Path)
	require.NoError(t, err)
	require.Len(t, problems, 1)
	assert.Equal(t, "key service", problems[0].Area)
	assert.ErrorIs(t, problems[0].Err, volume.ErrKeyRefused)
}
