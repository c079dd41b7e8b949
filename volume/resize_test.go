package volume_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	luks "github.com/anatol/luks.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
	"crkvol/volume"
)

// tokenDataSize returns the data_size member of the image's crkvol-crk token (0 if absent).
func tokenDataSize(t testing.TB, path string) int64 {
	t.Helper()
	var tok struct {
		DataSize int64 `json:"data_size"`
	}
	require.NoError(t, json.Unmarshal(readToken(t, path), &tok))
	return tok.DataSize
}

// seqID returns the header sequence number of the image at path.
func seqID(t testing.TB, path string) uint64 {
	t.Helper()
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	img, err := keyslot.Open(fh, nil)
	require.NoError(t, err)
	return img.SeqID()
}

// TestResize: a volume grows to a larger multiple of its sector size, its data intact, the
// token recording the new data size, the volume healthy and open for writing; an independent
// LUKS2 reader (anatol/luks.go) sees the new data size. Shrinking, an unaligned size, an
// attached volume, a truncated one and one with an incomplete wipe are refused, each with
// its sentinel and nothing changed; the same size is a no-op that writes nothing.
func TestResize(t *testing.T) {
	// Not parallel, as TestDataAreaLock: a process started by a parallel test would hold a
	// copy of a descriptor, and its lock, for a moment after a Close here.
	const oldSize = 1 << 20
	tests := []struct {
		name    string
		prepare func(t *testing.T, f *fixture, path string) (cleanup func())
		size    int64
		wipe    bool
		wantErr error
		// wantNew is the data size after a successful resize; wantOld the one before it, if
		// not oldSize.
		wantNew, wantOld int64
		// check, if set, runs on the open volume after a successful resize.
		check func(t *testing.T, v *volume.Volume)
	}{
		{name: "grow", size: 2 << 20, wantNew: 2 << 20},
		{name: "grow by one sector", size: oldSize + 4096, wantNew: oldSize + 4096},
		{name: "grow and wipe", size: 3 << 20, wipe: true, wantNew: 3 << 20},
		{name: "same size", size: oldSize, wantNew: oldSize},
		{name: "grow a token without data_size", size: 2 << 20, wantNew: 2 << 20,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				require.NoError(t, updateToken(t, path, func(cur json.RawMessage) ([]byte, error) {
					return bytes.Replace(cur, []byte(`,"data_size":1048576`), nil, 1), nil
				}))
				require.Zero(t, tokenDataSize(t, path), "an older crkvol's token")
				return nil
			}},
		{name: "grow a file longer than data_size, wipe only past it", size: 3 << 20, wipe: true, wantOld: 2 << 20, wantNew: 3 << 20,
			// The file was grown by hand (or a resize crashed after extending it): the volume
			// opens at the file's size, and what is written past data_size must survive the wipe.
			prepare: func(t *testing.T, f *fixture, path string) func() {
				st, err := os.Stat(path)
				require.NoError(t, err)
				require.NoError(t, os.Truncate(path, st.Size()+oldSize))
				require.Equal(t, int64(2<<20), mustDescribe(t, path).Size, "the volume has the file's size")
				v, err := f.mgr.Open(f.ctx, path)
				require.NoError(t, err)
				_, err = v.WriteAt(pattern(64<<10, 7), oldSize+512<<10)
				require.NoError(t, err)
				require.NoError(t, v.Close())
				return nil
			},
			check: func(t *testing.T, v *volume.Volume) {
				back := make([]byte, 64<<10)
				_, err := v.ReadAt(back, oldSize+512<<10)
				require.NoError(t, err)
				assert.True(t, bytes.Equal(pattern(64<<10, 7), back), "data written past data_size is not wiped")
			}},
		{name: "same size as a file longer than data_size records it", size: 2 << 20, wipe: true, wantOld: 2 << 20, wantNew: 2 << 20,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				st, err := os.Stat(path)
				require.NoError(t, err)
				require.NoError(t, os.Truncate(path, st.Size()+oldSize))
				return nil
			}},
		{name: "shrink refused", size: oldSize - 4096, wantErr: volume.ErrShrink},
		{name: "unaligned refused", size: 2<<20 + 512, wantErr: volume.ErrBadSize},
		{name: "zero refused", size: 0, wantErr: volume.ErrBadSize},
		{name: "attached refused", size: 2 << 20, wantErr: volume.ErrInUse,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				v, err := f.mgr.OpenWith(f.ctx, path, volume.OpenOptions{ReadOnly: true, Exclusive: true})
				require.NoError(t, err)
				return func() { require.NoError(t, v.Close()) }
			}},
		{name: "held open read-only refused", size: 2 << 20, wantErr: volume.ErrInUse,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				v, err := f.mgr.OpenWith(f.ctx, path, volume.OpenOptions{ReadOnly: true})
				require.NoError(t, err)
				return func() { require.NoError(t, v.Close()) }
			}},
		{name: "incomplete wipe refused", size: 2 << 20, wantErr: volume.ErrWipeIncomplete,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				require.NoError(t, updateToken(t, path, func(cur json.RawMessage) ([]byte, error) {
					return append(bytes.TrimSuffix(bytes.TrimSpace(cur), []byte("}")), `,"wipe":{"next":4096,"size":1048576}}`...), nil
				}))
				require.NotNil(t, mustDescribe(t, path).Wipe)
				return nil
			}},
		{name: "fixed-size segment refused", size: 2 << 20, wantErr: volume.ErrUnsupportedImage,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				fixSegment(t, path, oldSize)
				return nil
			}},
		{name: "truncated refused", size: 2 << 20, wantErr: volume.ErrUnhealthy,
			prepare: func(t *testing.T, f *fixture, path string) func() {
				st, err := os.Stat(path)
				require.NoError(t, err)
				require.NoError(t, os.Truncate(path, st.Size()-4096))
				return nil
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			info := f.create(t, "vol.img", oldSize)
			data := writePattern(t, f, info.Path, 64<<10, 3)
			if tc.prepare != nil {
				if cleanup := tc.prepare(t, f, info.Path); cleanup != nil {
					defer cleanup()
				}
			}
			before, err := os.Stat(info.Path)
			require.NoError(t, err)
			seq := seqID(t, info.Path)

			got, err := f.mgr.Resize(f.ctx, info.Path, tc.size, volume.ResizeOptions{Wipe: tc.wipe})
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				assert.Contains(t, err.Error(), info.Path, "the error names the image")
				after, serr := os.Stat(info.Path)
				require.NoError(t, serr)
				assert.Equal(t, before.Size(), after.Size(), "the file is unchanged")
				assert.Equal(t, seq, seqID(t, info.Path), "the header is unchanged")
				return
			}
			require.NoError(t, err)
			wantOld := int64(oldSize)
			if tc.wantOld != 0 {
				wantOld = tc.wantOld
			}
			assert.Equal(t, volume.Resized{Path: info.Path, Old: wantOld, New: tc.wantNew}, got)
			if tc.wantNew == oldSize {
				assert.Equal(t, seq, seqID(t, info.Path), "a no-op writes nothing")
			}
			assert.Equal(t, tc.wantNew, mustDescribe(t, info.Path).Size)
			assert.Equal(t, tc.wantNew, tokenDataSize(t, info.Path))
			problems, err := f.mgr.Check(f.ctx, info.Path)
			require.NoError(t, err)
			assert.Empty(t, problems)
			assert.Nil(t, mustDescribe(t, info.Path).Wipe, "no wipe left recorded")

			v, err := f.mgr.Open(f.ctx, info.Path)
			require.NoError(t, err, "opens for writing")
			assert.Equal(t, tc.wantNew, v.Size())
			back := make([]byte, len(data))
			_, err = v.ReadAt(back, 0)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, back), "the data is intact")
			if tc.wipe && tc.wantNew > wantOld {
				tail := make([]byte, tc.wantNew-wantOld)
				_, err = v.ReadAt(tail, wantOld)
				require.NoError(t, err)
				assert.True(t, bytes.Equal(make([]byte, len(tail)), tail), "the new area reads as zeros")
			}
			if tc.check != nil {
				tc.check(t, v)
			}
			last := pattern(4096, 9)
			_, err = v.WriteAt(last, tc.wantNew-4096)
			require.NoError(t, err, "the last sector of the new area is writable")
			require.NoError(t, v.Close())

			dev, err := luks.Open(info.Path)
			require.NoError(t, err)
			defer dev.Close()
			lv, err := dev.UnsealVolume(0, unwrapPassphrase(t, f, info.Path))
			require.NoError(t, err)
			assert.Equal(t, uint64(tc.wantNew), lv.StorageSize, "luks.go sees the new data size")
		})
	}
}

// TestResizeCrash: a resize interrupted between its steps leaves a volume that opens for
// writing and checks healthy, its data intact: after the file is extended (the token still
// records the old size), or after the token records the new size and the wipe of the new
// area is recorded but not done. Running Resize again with the same size finishes the first;
// volume wipe finishes the second.
func TestResizeCrash(t *testing.T) {
	const oldSize, newSize = 1 << 20, 2 << 20
	crash := errors.New("crashed")
	tests := []struct {
		step string
		wipe bool
		// recorded is the data size the token records after the crash.
		recorded int64
		// finish completes the interrupted resize.
		finish func(t *testing.T, f *fixture, path string)
	}{
		{"extended", false, oldSize, func(t *testing.T, f *fixture, path string) {
			got, err := f.mgr.Resize(f.ctx, path, newSize, volume.ResizeOptions{})
			require.NoError(t, err)
			// The volume already had the new size (it opens at the file's size): the rerun
			// only records it.
			assert.Equal(t, volume.Resized{Path: path, Old: newSize, New: newSize}, got, "the rerun reports the size the volume had")
		}},
		{"recorded", true, newSize, func(t *testing.T, f *fixture, path string) {
			_, err := f.mgr.Resize(f.ctx, path, newSize, volume.ResizeOptions{Wipe: true})
			require.ErrorIs(t, err, volume.ErrWipeIncomplete, "the rerun says to finish the wipe")
			_, err = f.mgr.Wipe(f.ctx, path, volume.WipeOptions{})
			require.NoError(t, err)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.step, func(t *testing.T) {
			f := newFixture(t)
			info := f.create(t, "vol.img", oldSize)
			data := writePattern(t, f, info.Path, 64<<10, 4)
			volume.SetResizeHook(f.mgr, func(step string) error {
				if step == tc.step {
					return crash
				}
				return nil
			})
			_, err := f.mgr.Resize(f.ctx, info.Path, newSize, volume.ResizeOptions{Wipe: tc.wipe})
			require.ErrorIs(t, err, crash)
			volume.SetResizeHook(f.mgr, nil)

			assert.Equal(t, tc.recorded, tokenDataSize(t, info.Path))
			problems, err := f.mgr.Check(f.ctx, info.Path)
			require.NoError(t, err)
			assert.Empty(t, problems, "healthy after the crash")
			assert.Equal(t, data, readBack(t, f, info.Path, len(data)))
			if !tc.wipe {
				v, err := f.mgr.Open(f.ctx, info.Path)
				require.NoError(t, err, "opens for writing after the crash")
				require.NoError(t, v.Close())
			}

			tc.finish(t, f, info.Path)
			assert.Equal(t, int64(newSize), tokenDataSize(t, info.Path))
			assert.Equal(t, int64(newSize), mustDescribe(t, info.Path).Size)
			assert.Nil(t, mustDescribe(t, info.Path).Wipe)
			all := readAll(t, f, info.Path)
			assert.Equal(t, data, all[:len(data)])
			if tc.wipe {
				assert.True(t, bytes.Equal(make([]byte, newSize-oldSize), all[oldSize:]), "the new area reads as zeros")
			}
		})
	}
}

// TestResizeRefusesUnregisteredImage: a byte copy of a registered volume, and the registered
// image moved away from its registered path, are refused with ErrNotRegisteredImage, as a
// read-write open is, with the commands that make them registered images in the error;
// neither the file nor its header changes, with or without --wipe.
func TestResizeRefusesUnregisteredImage(t *testing.T) {
	tests := []struct {
		name string
		wipe bool
		// image returns the path to resize, made from the registered image at path.
		image func(t *testing.T, f *fixture, path string) string
		want  string
	}{
		{name: "copy", image: func(t *testing.T, f *fixture, path string) string {
			dst := filepath.Join(f.dir, "copy.img")
			copyFile(t, path, dst)
			return dst
		}, want: "volume reidentify"},
		{name: "copy with wipe", wipe: true, image: func(t *testing.T, f *fixture, path string) string {
			dst := filepath.Join(f.dir, "copy.img")
			copyFile(t, path, dst)
			return dst
		}, want: "volume reidentify"},
		{name: "moved", image: func(t *testing.T, f *fixture, path string) string {
			dst := filepath.Join(f.dir, "moved.img")
			require.NoError(t, os.Rename(path, dst))
			return dst
		}, want: "volume register"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			info := f.create(t, "vol.img", 1<<20)
			path := tc.image(t, f, info.Path)
			before, err := os.ReadFile(path)
			require.NoError(t, err)

			_, err = f.mgr.Resize(f.ctx, path, 2<<20, volume.ResizeOptions{Wipe: tc.wipe})
			require.ErrorIs(t, err, volume.ErrNotRegisteredImage)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), info.Path, "names the registered image")
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, len(before), len(after), "the file size is unchanged")
			assert.True(t, bytes.Equal(before, after), "the file, header included, is unchanged")
		})
	}
}
