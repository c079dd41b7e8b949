package sim

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunInterrupted: a run whose context is cancelled returns one error saying how far it
// got (not one line per unfinished volume), and the error wraps the context's.
func TestRunInterrupted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		volumes int // the fleet: stopping while simulating needs it made first
		stop    func(Progress) bool
		want    string
	}{
		{"while creating the fleet", 40, func(p Progress) bool { return p.Phase == PhaseCreate && p.Done >= 3 },
			`^sim: creating the fleet: stopped after ([3-9]|[1-3][0-9]) of 40 volumes: context canceled$`},
		{"while simulating", 8, func(p Progress) bool { return p.Phase == PhaseSimulate && p.Done > 0 },
			`^sim: simulating: stopped in month [12] of 2 \(virtual time 2026-0[1-3]-\d\dT\d\d:\d\d:\d\dZ\): context canceled$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sc := Scenario{Seed: 1, Months: 2, Keys: 1, Volumes: tc.volumes, AttachesPerMonth: 30}
			_, err := Run(ctx, sc, Options{Dir: t.TempDir(), Progress: func(p Progress) {
				if tc.stop(p) {
					cancel()
				}
			}})
			require.Error(t, err)
			assert.True(t, errors.Is(err, context.Canceled), "%v", err)
			assert.Regexp(t, tc.want, err.Error())
		})
	}
}
