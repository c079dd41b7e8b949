package volume_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
	"crkvol/volume"
)

// dirty fills a volume's data with a non-zero pattern, as a reused disk would hold.
func dirty(t *testing.T, f *fixture, path string, size int64) {
	t.Helper()
	v, err := f.mgr.Open(f.ctx, path)
	require.NoError(t, err)
	_, err = v.WriteAt(bytes.Repeat([]byte{0xA5}, int(size)), 0)
	require.NoError(t, err)
	require.NoError(t, v.Close())
}

// readAll reads a volume's whole data.
func readAll(t *testing.T, f *fixture, path string) []byte {
	t.Helper()
	v, err := f.mgr.OpenWith(f.ctx, path, volume.OpenOptions{ReadOnly: true})
	require.NoError(t, err)
	defer v.Close()
	b := make([]byte, v.Size())
	_, err = v.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

// TestWipeInterruptedIsRecordedAndResumes: a wipe stopped by its context records how far it
// got in the token (Describe shows it), the volume still opens, and Wipe without All resumes
// from the record and removes it when done; the data then reads as zeros.
func TestWipeInterruptedIsRecordedAndResumes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 24 << 20
	info := f.create(t, "w.img", size)
	dirty(t, f, info.Path, size)

	ctx, cancel := context.WithCancel(f.ctx)
	var seen int64
	p, err := f.mgr.Wipe(ctx, info.Path, volume.WipeOptions{All: true, Progress: func(done, total int64) {
		seen = done
		if done >= 10<<20 {
			cancel()
		}
	}})
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, int64(size), p.Size)
	assert.GreaterOrEqual(t, p.Next, int64(10<<20))
	assert.Less(t, p.Next, int64(size))
	assert.Equal(t, seen, p.Next, "the record covers exactly what was written and synced")

	d, err := volume.Describe(info.Path)
	require.NoError(t, err)
	require.NotNil(t, d.Wipe, "status sees the incomplete wipe")
	assert.Equal(t, p, *d.Wipe)
	assert.Equal(t, int(100*p.Next/size), d.Wipe.Percent())

	_, err = f.mgr.Open(f.ctx, info.Path)
	require.ErrorIs(t, err, volume.ErrWipeIncomplete, "no writer until the wipe is done: resuming it would zero what was written")
	data := readAll(t, f, info.Path) // opening read-only still works
	assert.Equal(t, make([]byte, p.Next), data[:p.Next])
	assert.NotEqual(t, make([]byte, size-p.Next), data[p.Next:], "the rest is not wiped yet")

	p, err = f.mgr.Wipe(f.ctx, info.Path, volume.WipeOptions{})
	require.NoError(t, err)
	assert.Equal(t, volume.WipeProgress{Next: size, Size: size}, p)
	d, err = volume.Describe(info.Path)
	require.NoError(t, err)
	assert.Nil(t, d.Wipe, "the record is removed at completion")
	assert.Equal(t, make([]byte, size), readAll(t, f, info.Path))

	_, err = f.mgr.Wipe(f.ctx, info.Path, volume.WipeOptions{})
	assert.ErrorIs(t, err, volume.ErrNoWipe, "nothing to resume: a full wipe needs All")
}

// TestCreateWithWipeRecordsItFirst: CreateOptions.Wipe writes the wipe record with the token,
// so a create interrupted before any zero is written still shows an incomplete wipe.
func TestCreateWithWipeRecordsItFirst(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	path := filepath.Join(f.dir, "cw.img")
	info, err := f.mgr.Create(f.ctx, path, volume.CreateOptions{KeyID: f.key.ID, Size: 2 << 20, KeyslotsSize: 512 << 10, Wipe: true})
	require.NoError(t, err)
	require.NotNil(t, info.Wipe)
	assert.Equal(t, volume.WipeProgress{Next: 0, Size: 2 << 20}, *info.Wipe)
	d, err := volume.Describe(path)
	require.NoError(t, err)
	require.NotNil(t, d.Wipe)
	assert.Equal(t, 0, d.Wipe.Percent())
	_, err = f.mgr.Wipe(f.ctx, path, volume.WipeOptions{})
	require.NoError(t, err)
	d, err = volume.Describe(path)
	require.NoError(t, err)
	assert.Nil(t, d.Wipe)
}

// TestWipeRecordKeepsTokenReadable: the wipe member is an owned member of the token: a
// cryptsetup-visible token with it still parses, and a malformed one is refused by name.
func TestWipeRecordKeepsTokenReadable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "tok.img", 1<<20)
	fh, err := os.OpenFile(info.Path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	cases := []struct {
		name, wipe string
		ok         bool
	}{
		{"valid", `{"next":4096,"size":1048576}`, true},
		{"next past size", `{"next":2097152,"size":1048576}`, false},
		{"negative next", `{"next":-1,"size":1048576}`, false},
		{"zero size", `{"next":0,"size":0}`, false},
		{"not an object", `"half"`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.NoError(t, img.UpdateToken(0, func(cur json.RawMessage) ([]byte, error) {
				var m map[string]json.RawMessage
				require.NoError(t, json.Unmarshal(cur, &m))
				m["wipe"] = json.RawMessage(c.wipe)
				return json.Marshal(m)
			}))
			_, err := volume.Describe(info.Path)
			if c.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, volume.ErrBadToken)
			assert.Contains(t, err.Error(), "wipe")
		})
	}
}
