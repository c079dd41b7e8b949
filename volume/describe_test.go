package volume_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"crkvol/volume"
)

// TestDescribeContextHeldFile: a file whose lock another open holds for good (a database
// held by a server, say) does not block DescribeContext or InUseContext past their context.
func TestDescribeContextHeldFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "held.db")
	require.NoError(t, os.WriteFile(path, make([]byte, 1<<20), 0o600))
	holder, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer holder.Close()
	require.NoError(t, unix.Flock(int(holder.Fd()), unix.LOCK_EX))

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 2)
	go func() { _, err := volume.DescribeContext(ctx, path); done <- err }()
	go func() { _, err := volume.InUseContext(ctx, path); done <- err }()
	for range 2 {
		select {
		case err := <-done:
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		case <-time.After(20 * time.Second): // a hang guard, not a timing check
			t.Fatal("DescribeContext/InUseContext ignored their context while the file was locked")
		}
	}
}
