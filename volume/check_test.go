package volume_test

import (
	"os"
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
	}, "keyslot 0"},
	{"keyslot area truncated", func(t *testing.T, path string, _ *volume.Info, ks keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, int64(ks.AreaOffset)+4096))
	}, "keyslot 0"},
	{"file truncated before the data area", func(t *testing.T, path string, info *volume.Info, _ keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, info.DataOffset))
	}, "data area"},
	{"file truncated inside the data area", func(t *testing.T, path string, info *volume.Info, _ keyslot.SlotInfo) {
		require.NoError(t, os.Truncate(path, info.DataOffset+info.Size/2+1000))
	}, "data area"},
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
			var areas []string
			for _, p := range problems {
				areas = append(areas, p.Area)
				assert.NotEmpty(t, p.Err.Error())
			}
			assert.Contains(t, areas, d.area)

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
