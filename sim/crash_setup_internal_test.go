package sim

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCrashSetupCancelled: the crash test's fixture set up under a cancelled context returns
// an error wrapping the context's (it once panicked on the runner's nil logger).
func TestCrashSetupCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	fx := &crashFixture{opts: CrashOptions{Dir: dir, Volumes: 2}, state: filepath.Join(dir, "state"), t0: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	err := fx.setup(ctx)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.Canceled), "%v", err)
}
