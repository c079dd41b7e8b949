package volume_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/keyslot"
	"crkvol/volume"
)

// writeLUKS1 writes a LUKS1 image (keyslot.FormatLUKS1's header area and 64 KiB of data) to
// dir/name and returns its path.
func writeLUKS1(t testing.TB, dir, name string, pass []byte, mutate func([]byte)) string {
	t.Helper()
	mk := bytes.Repeat([]byte{1, 2, 3, 4}, 8)
	area, err := keyslot.FormatLUKS1(context.Background(), mk, pass, keyslot.LUKS1Options{Hash: "sha1", UUID: "5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f6"})
	require.NoError(t, err)
	if mutate != nil {
		mutate(area)
	}
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, append(area, make([]byte, 64<<10)...), 0o600))
	return path
}

// TestLUKS1Image: every operation on a LUKS1 image fails with a LUKS1Error that describes
// the header (or says why it does not validate), matching keyslot.ErrLUKS1 and never a
// corrupt LUKS2 header; the file is not changed.
func TestLUKS1Image(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pass := []byte("luks1 passphrase")
	path := writeLUKS1(t, f.dir, "luks1.img", pass, nil)
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	checkHeader := func(t *testing.T, err error) {
		t.Helper()
		require.Error(t, err)
		assert.ErrorIs(t, err, keyslot.ErrLUKS1)
		assert.ErrorIs(t, err, keyslot.ErrNotLUKS2)
		assert.NotErrorIs(t, err, keyslot.ErrHeaderCorrupt)
		var le *volume.LUKS1Error
		require.True(t, errors.As(err, &le), "%v", err)
		require.NotNil(t, le.Header)
		assert.Equal(t, path, le.Path)
		assert.Equal(t, "aes-xts-plain64", le.Header.CipherSpec())
		assert.Equal(t, "sha1", le.Header.HashSpec)
		assert.Equal(t, 32, le.Header.KeyBytes)
		assert.Equal(t, "5e1f7c2a-1b3d-4c5e-8f90-a1b2c3d4e5f6", le.Header.UUID)
		assert.Equal(t, []int{0}, le.Header.ActiveSlots())
		assert.Equal(t, "volume: "+path+" is a LUKS1 image; convert it to LUKS2 first", err.Error())
	}
	t.Run("describe", func(t *testing.T) {
		_, err := volume.Describe(path)
		checkHeader(t, err)
	})
	t.Run("adopt", func(t *testing.T) {
		_, err := f.mgr.Adopt(f.ctx, path, pass, f.key.ID, volume.AdoptOptions{})
		checkHeader(t, err)
	})
	t.Run("check", func(t *testing.T) {
		_, err := f.mgr.Check(f.ctx, path)
		checkHeader(t, err)
	})
	t.Run("open", func(t *testing.T) {
		_, err := f.mgr.Open(f.ctx, path)
		checkHeader(t, err)
	})
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(before, after), "the LUKS1 image changed")

	t.Run("invalid header", func(t *testing.T) {
		bad := writeLUKS1(t, f.dir, "bad.img", pass, func(b []byte) {
			binary.BigEndian.PutUint32(b[208+3*48+44:], 3999) // keyslot 3's stripes
		})
		_, err := volume.Describe(bad)
		require.Error(t, err)
		assert.ErrorIs(t, err, keyslot.ErrLUKS1)
		assert.ErrorIs(t, err, keyslot.ErrLUKS1Header)
		var le *volume.LUKS1Error
		require.True(t, errors.As(err, &le))
		assert.Nil(t, le.Header)
		assert.Contains(t, err.Error(), bad+" is a LUKS1 image with an invalid header: invalid LUKS1 header: keyslot 3: 3999 stripes, want 4000")
	})
	t.Run("unsupported hash", func(t *testing.T) {
		rmd := writeLUKS1(t, f.dir, "ripemd160.img", pass, func(b []byte) {
			copy(b[72:104], "ripemd160\x00")
		})
		_, err := volume.Describe(rmd)
		require.Error(t, err)
		assert.ErrorIs(t, err, keyslot.ErrLUKS1)
		assert.ErrorIs(t, err, keyslot.ErrUnsupported)
		assert.Contains(t, err.Error(), rmd+` is a LUKS1 image crkvol cannot read: LUKS1 hash-spec: unsupported: hash "ripemd160"`)
	})
}
