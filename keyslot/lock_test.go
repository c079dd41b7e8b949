package keyslot

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestLockHonoursContext: while another open file holds the image's exclusive flock (as
// another process would), every context-taking entry point gives up when its context ends,
// with an error wrapping ctx.Err() and nothing written; once the lock is released, the same
// calls succeed.
func TestLockHonoursContext(t *testing.T) {
	path, _, _ := newFileImage(t, "ctx", smallFormat())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	img, err := Open(f, nil)
	require.NoError(t, err)
	id, err := img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[],"n":0}`))
	require.NoError(t, err)
	seq := img.SeqID()

	holder, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer holder.Close()
	require.NoError(t, unix.Flock(int(holder.Fd()), unix.LOCK_EX))

	bump := func(cur json.RawMessage) ([]byte, error) { return []byte(`{"type":"t","keyslots":[],"n":1}`), nil }
	calls := []struct {
		name string
		fn   func(ctx context.Context) error
	}{
		{"UpdateTokenContext", func(ctx context.Context) error { return img.UpdateTokenContext(ctx, id, bump) }},
		{"ReloadContext", func(ctx context.Context) error { return img.ReloadContext(ctx) }},
		{"OpenContext", func(ctx context.Context) error {
			g, err := os.Open(path)
			if err != nil {
				return err
			}
			defer g.Close()
			_, err = OpenContext(ctx, g, nil)
			return err
		}},
	}
	ends := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(30*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 30*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, c := range calls {
		for _, e := range ends {
			t.Run(c.name+"/"+e.name, func(t *testing.T) {
				ctx, cancel := e.ctx()
				defer cancel()
				start := time.Now()
				err := c.fn(ctx)
				require.ErrorIs(t, err, e.want)
				assert.Contains(t, err.Error(), "waiting for the image lock")
				assert.Less(t, time.Since(start), 20*time.Second, "gave up, not waited for the holder (a failure bound, not a speed target)")
			})
		}
	}
	assert.Equal(t, seq, img.SeqID(), "nothing written")

	require.NoError(t, unix.Flock(int(holder.Fd()), unix.LOCK_UN))
	for _, c := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		require.NoError(t, c.fn(ctx), c.name)
		cancel()
	}
	raw, err := img.Token(id)
	require.NoError(t, err)
	assert.JSONEq(t, `{"type":"t","keyslots":[],"n":1}`, string(raw))
}

// TestLockHonoursContextInProcess: an update of the same Image that another goroutine holds
// (its UpdateToken callback has not returned) also gives up when its context ends.
func TestLockHonoursContextInProcess(t *testing.T) {
	_, img, _ := newMemImage(t, "ctx")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"t","keyslots":[]}`))
	require.NoError(t, err)
	inside, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- img.UpdateToken(id, func(cur json.RawMessage) ([]byte, error) {
			close(inside)
			<-release
			return cur, nil
		})
	}()
	<-inside
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = img.UpdateTokenContext(ctx, id, func(cur json.RawMessage) ([]byte, error) {
		return nil, errors.New("must not run")
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	close(release)
	require.NoError(t, <-done)
}
