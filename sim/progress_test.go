package sim

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProgress: a run reports its phases in order (creating the fleet, simulating, auditing),
// each with counts that only grow and end at its total, the month simulated and the fleet's
// size.
func TestProgress(t *testing.T) {
	t.Parallel()
	sc := Scenario{Seed: 5, Months: 2, Keys: 1, Volumes: 6, PolicyMonths: 1, AttachesPerMonth: 2, CreatesPerMonth: 1}
	var seen []Progress
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir(), Progress: func(p Progress) { seen = append(seen, p) }})
	require.NoError(t, err)
	require.NoError(t, rep.Err())

	phases := []string{PhaseCreate, PhaseSimulate, PhaseAudit}
	byPhase := map[string][]Progress{}
	last := -1
	for _, p := range seen {
		i := slices.Index(phases, p.Phase)
		require.GreaterOrEqual(t, i, last, "phase %s after %s", p.Phase, phases[max(last, 0)])
		last = i
		byPhase[p.Phase] = append(byPhase[p.Phase], p)
	}
	for _, ph := range phases {
		ps := byPhase[ph]
		require.NotEmpty(t, ps, ph)
		for i := 1; i < len(ps); i++ {
			assert.GreaterOrEqual(t, ps[i].Done, ps[i-1].Done, ph)
			assert.GreaterOrEqual(t, ps[i].Month, ps[i-1].Month, ph)
		}
		end := ps[len(ps)-1]
		assert.Equal(t, end.Total, end.Done, "%s ends at its total", ph)
		assert.Equal(t, 2, end.Months)
	}
	assert.Equal(t, int64(6), byPhase[PhaseCreate][len(byPhase[PhaseCreate])-1].Total)
	assert.Equal(t, 6, byPhase[PhaseCreate][len(byPhase[PhaseCreate])-1].Volumes)
	sim := byPhase[PhaseSimulate]
	assert.Equal(t, 2, sim[len(sim)-1].Month, "the last month")
	assert.Equal(t, int64(rep.Audit.Volumes), byPhase[PhaseAudit][len(byPhase[PhaseAudit])-1].Total)
}
