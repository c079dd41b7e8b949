package volume_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"crkvol/volume"
)

// TestCloseReleasesLockHeldElsewhere: a copy of the image's open file description held
// elsewhere (a child forked by another goroutine holds one until it execs; a dup stands in
// for it here) does not keep the volume locked after Close: the next read-write open
// succeeds at once.
func TestCloseReleasesLockHeldElsewhere(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	info := f.create(t, "vol.img", 1<<20)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	dup, err := unix.Dup(int(volume.ImageFd(v)))
	require.NoError(t, err)
	defer unix.Close(dup)
	require.NoError(t, v.Close())
	v, err = f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err, "the copy of the closed description holds no lock")
	require.NoError(t, v.Close())
}
