package main

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
)

// The agent's host over a state directory sees the image catalog: a key only an image uses
// is among its keys, its rewrap pass (Manager.Sync) brings the image's WDEK to the key's
// latest version, and a lockout counts the key's images.
func TestAgentHostCoversImages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	env := map[string]string{"CRKVOL_STATE": state}
	a := &app{stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string { return env[k] }}
	ctx := t.Context()
	require.NoError(t, a.open(ctx))
	fleet, err := a.svc.CreateRootKey(ctx, "fleet")
	require.NoError(t, err)
	images, err := a.svc.CreateRootKey(ctx, "images")
	require.NoError(t, err)
	vol := filepath.Join(dir, "v.img")
	_, err = a.mgr.Create(ctx, vol, volume.CreateOptions{KeyID: fleet.ID, Size: 1 << 20, MetadataSize: 16 << 10, KeyslotsSize: 256 << 10})
	require.NoError(t, err)
	res, err := a.mgr.ExportImage(ctx, vol, filepath.Join(dir, "v.qcow2"), volume.ExportOptions{Name: "golden", KeyID: images.ID, ClusterSize: 4096})
	require.NoError(t, err)
	require.NotNil(t, res.Image)
	a.close()

	h := &cliHost{a: a, dir: state, log: slog.New(slog.DiscardHandler), now: time.Now}
	keys, err := h.Keys(ctx)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{fleet.ID, images.ID}, keys, "the image's key is the host's too")

	// A rotation of the image's key that no rotation hook sees (the agent's case: made by
	// another process), rewrapped by the host's pass; the file is not written.
	require.NoError(t, a.open(ctx))
	a.mgr.Close() // unsubscribed from the rotation hook
	rotated, err := a.svc.RotateKey(ctx, images.ID, nil)
	require.NoError(t, err)
	a.close()
	rep, err := h.Rewrap(ctx, images.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Images)
	assert.Equal(t, 1, rep.ImagesRewrapped)
	assert.Zero(t, rep.Volumes)
	require.NoError(t, a.open(ctx))
	e, err := a.reg.Image("golden")
	a.close()
	require.NoError(t, err)
	assert.Equal(t, rotated.KeyVersion.ID, e.KeyVersion)
	assert.Equal(t, res.Image.SHA256, e.SHA256)

	lo, err := h.Lockout(ctx, images.ID, volume.KeyStateSuspended)
	require.NoError(t, err)
	assert.Equal(t, 0, lo.Volumes)
	assert.Equal(t, 1, lo.Images)
}
