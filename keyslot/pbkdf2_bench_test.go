package keyslot

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPBKDF2Iterations turns iteration times into counts: the count derives in about the CPU
// time asked (loosely: the machine is shared), and bad arguments are refused.
func TestPBKDF2Iterations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const d = 20 * time.Millisecond
	n, err := PBKDF2Iterations(ctx, "sha256", 64, d)
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, MinPBKDF2Iterations)
	// CPU time, as measured: the machine may be busy.
	since, stop := threadCPUTimer()
	h, err := hashByName("sha256")
	require.NoError(t, err)
	_, err = pbkdf2Derive(ctx, []byte("p"), make([]byte, 32), n, 64, h) // the path unlocking takes
	took := since()
	stop()
	require.NoError(t, err)
	assert.Greater(t, took, d/10, "%d iterations", n)
	assert.Less(t, took, 10*d, "%d iterations", n)

	n, err = PBKDF2Iterations(ctx, "sha1", 32, time.Nanosecond)
	require.NoError(t, err)
	assert.Equal(t, MinPBKDF2Iterations, n, "at least the minimum")

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		hash     string
		keyBytes int
		d        time.Duration
		target   error
	}{
		{"unknown hash", ctx, "md5", 32, d, ErrUnsupported},
		{"no key", ctx, "sha256", 0, d, nil},
		{"no time", ctx, "sha256", 32, 0, nil},
		{"negative time", ctx, "sha256", 32, -time.Second, nil},
		{"cancelled", cancelled, "sha512", 64, d, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PBKDF2Iterations(tt.ctx, tt.hash, tt.keyBytes, tt.d)
			require.Error(t, err)
			if tt.target != nil {
				assert.ErrorIs(t, err, tt.target)
			}
		})
	}
}
