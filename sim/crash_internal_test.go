package sim

import (
	"context"
	"errors"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestChildError: a failed child command is described by what it was doing; one stopped by
// the test's end says so (and wraps the context's error) instead of showing its exit signal
// and an empty output.
func TestChildError(t *testing.T) {
	t.Parallel()
	exitErr := &exec.ExitError{}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		out  string
		want string
	}{
		{"stopped", cancelled, "", "the calibration rotation was stopped: context canceled"},
		{"failed with output", context.Background(), "crkvol: key rotate: boom\n", "the calibration rotation: " + exitErr.Error() + ": crkvol: key rotate: boom"},
		{"failed silently", context.Background(), " \n", "the calibration rotation: " + exitErr.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := childError(tc.ctx, "the calibration rotation", exitErr, []byte(tc.out))
			assert.Equal(t, tc.want, err.Error())
			if tc.ctx.Err() != nil {
				assert.True(t, errors.Is(err, context.Canceled))
			}
		})
	}
}
