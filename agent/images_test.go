package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/agent"
	"crkvol/volume"
)

// imageHost is testHost with the host's image catalog: its keys are those of its volumes and
// of its images (as the CLI's host lists them), and a lockout counts the key's images.
type imageHost struct{ *testHost }

func (h imageHost) Keys(ctx context.Context) ([]string, error) {
	keys, err := h.testHost.Keys(ctx)
	if err != nil {
		return nil, err
	}
	imgs, err := h.reg.Images()
	if err != nil {
		return nil, err
	}
	for _, e := range imgs {
		if !slices.Contains(keys, e.KeyID) {
			keys = append(keys, e.KeyID)
		}
	}
	return keys, nil
}

func (h imageHost) Lockout(ctx context.Context, keyID, state string) (agent.LockoutResult, error) {
	res, err := h.testHost.Lockout(ctx, keyID, state)
	if err != nil {
		return res, err
	}
	imgs, err := h.reg.Images()
	if err != nil {
		return res, err
	}
	for _, e := range imgs {
		if e.KeyID == keyID {
			res.Images++
		}
	}
	return res, nil
}

// TestAgentRewrapsImages: the host's catalog images are rewrapped with its volumes: a
// rotation of a key only an image uses, handled from the feed, brings the image's WDEK (and
// its registration) to the new version without writing the image file; a reconciliation
// brings one whose rotation the agent missed; and a lockout of an image's key counts it.
func TestAgentRewrapsImages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	ctx := f.ctx
	imgKey, err := f.svc.CreateRootKey(ctx, "image-key")
	require.NoError(t, err)
	// Two images of the host's one volume: one under the volumes' key, one under a key
	// only it uses.
	export := func(name, keyID string) string {
		out := filepath.Join(f.dir, name+".qcow2")
		res, err := f.host.mgr.ExportImage(ctx, f.vols[0], out, volume.ExportOptions{Name: name, KeyID: keyID, ClusterSize: 4096})
		require.NoError(t, err)
		require.NotNil(t, res.Image)
		return res.Image.SHA256
	}
	sums := map[string]string{"img-own": export("img-own", imgKey.ID), "img-shared": export("img-shared", f.key)}
	var logs bytes.Buffer
	a, err := agent.New(agent.Options{Feed: f.host.ks, Host: imageHost{f.host}, Now: f.clock.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.NoError(t, err)
	head, err := f.host.ks.KeyEvents(ctx, "", 0)
	require.NoError(t, err)
	cursor := head.Cursor
	// apply hands the agent the feed's events since the last call.
	apply := func() {
		t.Helper()
		page, err := f.host.ks.KeyEvents(ctx, cursor, 0)
		require.NoError(t, err)
		require.NotEmpty(t, page.Events)
		require.NoError(t, a.Apply(ctx, page.Events))
		cursor = page.Cursor
	}
	image := func(name string) volume.ImageEntry {
		t.Helper()
		e, err := f.host.reg.Image(name)
		require.NoError(t, err)
		return e
	}
	latestOf := func(keyID string) string {
		st, err := f.host.ks.KeyState(ctx, keyID)
		require.NoError(t, err)
		return st.LatestVersion
	}
	registered := func(keyID, crn string) string {
		regs, _, err := f.host.ks.Registrations(ctx, keyID)
		require.NoError(t, err)
		for _, r := range regs {
			if r.CRN == crn {
				return r.VersionID
			}
		}
		return ""
	}

	// A rotation of the image-only key, handled from the feed.
	before := image("img-own")
	_, err = f.svc.RotateKey(ctx, imgKey.ID, nil)
	require.NoError(t, err)
	apply()
	after := image("img-own")
	assert.Equal(t, latestOf(imgKey.ID), after.KeyVersion)
	assert.NotEqual(t, before.KeyVersion, after.KeyVersion)
	assert.NotEqual(t, before.WDEK, after.WDEK, "a new WDEK")
	assert.Equal(t, after.KeyVersion, registered(imgKey.ID, after.CRN))
	assert.Contains(t, logs.String(), "images_rewrapped=1")

	// A rotation of the volumes' key the agent never hears of: the reconciliation brings the
	// volume and the image sharing the key.
	f.clock.Advance(2 * time.Hour)
	_, err = f.svc.RotateKey(ctx, f.key, nil)
	require.NoError(t, err)
	require.NoError(t, a.Reconcile(ctx))
	shared := image("img-shared")
	assert.Equal(t, latestOf(f.key), shared.KeyVersion)
	assert.Equal(t, shared.KeyVersion, registered(f.key, shared.CRN))
	assert.True(t, f.allOn(t, latestOf(f.key)), "and the volume")

	// A disable of the image's key: the lockout counts the image (nothing to stop).
	page, err := f.host.ks.KeyEvents(ctx, cursor, 0)
	require.NoError(t, err)
	cursor = page.Cursor
	_, err = f.svc.DisableKey(ctx, imgKey.ID)
	require.NoError(t, err)
	apply()
	lockouts, _, _ := f.host.snapshot()
	assert.Contains(t, lockouts, imgKey.ID+"/suspended")
	assert.Regexp(t, `key out of use.* volumes=0 stopped=0 images=1`, logs.String())

	// The image files were never written.
	for name, sum := range sums {
		assert.Equal(t, sum, image(name).SHA256)
		got, err := fileSum(image(name).Path)
		require.NoError(t, err)
		assert.Equal(t, sum, got, name)
	}
	assert.False(t, strings.Contains(logs.String(), "failed"), logs.String())
}

// fileSum is the hex SHA-256 of a file.
func fileSum(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}
