package sim

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunInterruptedWhileCreating: a run whose context is cancelled while the fleet is being
// created returns one error saying how far it got (not one line per unfinished volume), and
// the error wraps the context's.
func TestRunInterruptedWhileCreating(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sc := Scenario{Seed: 1, Months: 1, Keys: 1, Volumes: 40}
	_, err := Run(ctx, sc, Options{Dir: t.TempDir(), Progress: func(p Progress) {
		if p.Phase == PhaseCreate && p.Done >= 3 {
			cancel()
		}
	}})
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.Canceled), "%v", err)
	assert.Regexp(t, regexp.MustCompile(`^sim: creating the fleet: stopped after ([3-9]|[1-3][0-9]) of 40 volumes: context canceled$`), err.Error())
}
