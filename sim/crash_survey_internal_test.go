package sim

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
	"crkvol/volume/kms"
)

// killedWave is the key service as a rotation killed inside its first wave leaves it: the
// first rewrapped volumes of the wave got their new wrapping (and their headers were
// committed), the rest did not, and the wave's registration update never came.
type killedWave struct {
	volume.KeyService
	rewrapped int
}

// errKilled is what killedWave refuses with: a refusal, so the pass does not try again.
var errKilled = fmt.Errorf("the rotation was killed: %w", volume.ErrKeyRefused)

func (k killedWave) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	n := min(k.rewrapped, len(items))
	out, errs, err := k.KeyService.RewrapBatch(ctx, keyID, items[:n])
	if err != nil {
		return nil, nil, err
	}
	for range items[n:] {
		out = append(out, volume.Wrapped{})
		errs = append(errs, errKilled)
	}
	return out, errs, nil
}

func (killedWave) UpdateRegistrations(context.Context, string, []volume.RegistrationUpdate) ([]error, error) {
	return nil, errKilled
}

func (killedWave) UpdateRegistration(context.Context, string, string, string) error {
	return errKilled
}

// TestCrashSurveyFirstWave: a trial whose kill lands inside the first (and only) wave of the
// rewrap pass, with no more volumes than workers, is counted from the volumes' headers, not
// from their registrations (which that wave updates only after its headers are committed):
// the headers already rewritten are new, the rest old, and the trial is mid-rewrap when some
// of them are new. After `key sync` (in-process here) every volume passes the trial's check.
// The kill is made deterministic by a key service that stops the pass where a kill would.
func TestCrashSurveyFirstWave(t *testing.T) {
	t.Parallel()
	const volumes = 4 // fewer than the workers: one wave
	require.Less(t, volumes, volume.DefaultWorkers)
	for _, tc := range []struct {
		name string
		// rotate says the rotation made its new version; rewrapped is how many headers of
		// the wave were committed before the kill (-1: the pass finished, not killed).
		rotate    bool
		rewrapped int
		want      CrashTrial
	}{
		{"killed before the new version", false, 0, CrashTrial{Killed: true, OldHeaders: volumes}},
		{"killed before any header", true, 0, CrashTrial{Killed: true, Rotated: true, OldHeaders: volumes}},
		{"killed after one header", true, 1, CrashTrial{Killed: true, Rotated: true, NewHeaders: 1, OldHeaders: volumes - 1, RegistrationsBehind: 1, MidRewrap: true}},
		{"killed after three headers", true, 3, CrashTrial{Killed: true, Rotated: true, NewHeaders: 3, OldHeaders: volumes - 3, RegistrationsBehind: 3, MidRewrap: true}},
		{"killed before the registration update", true, volumes, CrashTrial{Killed: true, Rotated: true, NewHeaders: volumes, RegistrationsBehind: volumes, MidRewrap: true}},
		{"finished", true, -1, CrashTrial{Rotated: true, NewHeaders: volumes}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dir := t.TempDir()
			fx := &crashFixture{opts: CrashOptions{Dir: dir, Volumes: volumes, Seed: 3}, state: filepath.Join(dir, "state"), t0: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
			require.NoError(t, fx.setup(ctx))
			now := fx.t0.Add(2 * time.Hour)
			old, err := fx.latest(ctx, now)
			require.NoError(t, err)

			killed := tc.rewrapped >= 0
			if tc.rotate {
				svc, reg, mgr, err := fx.open(now)
				require.NoError(t, err)
				mgr.Close() // the rotation's pass is the one below
				k, err := svc.RotateKey(ctx, fx.keyID, nil)
				require.NoError(t, err)
				var ks volume.KeyService = kms.NewLocal(svc)
				if killed {
					ks = killedWave{KeyService: ks, rewrapped: tc.rewrapped}
				}
				pass := volume.NewManager(ks, reg, volume.Options{Now: func() time.Time { return now }})
				crns := make([]string, len(fx.vols))
				for i, v := range fx.vols {
					crns[i] = v.crn
				}
				rep := pass.Rewrap(ctx, fx.keyID, k.KeyVersion.ID, crns)
				assert.Equal(t, volumes, rep.Volumes)
				if killed {
					assert.Len(t, rep.Failed, volumes, "the kill leaves every registration of the wave behind")
				} else {
					assert.NoError(t, rep.Err())
				}
				closeAll(svc, reg, pass)
			}

			st, problems, err := fx.survey(ctx, now, old, killed)
			require.NoError(t, err)
			assert.Empty(t, problems)
			assert.Equal(t, tc.want, st.CrashTrial)
			assert.Equal(t, volumes, st.NewHeaders+st.OldHeaders, "every header holds the old or the new wrapping")
			assert.Equal(t, tc.rotate, st.latest != old)

			// What the trial does next: key sync, then the check of every volume.
			svc, reg, mgr, err := fx.open(now.Add(time.Minute))
			require.NoError(t, err)
			rep, err := mgr.Sync(ctx, fx.keyID)
			require.NoError(t, err)
			require.NoError(t, rep.Err())
			if tc.rotate {
				assert.Equal(t, st.OldHeaders, rep.Rewrapped, "key sync rewraps the headers left on the old version")
			}
			closeAll(svc, reg, mgr)
			assert.Empty(t, fx.check(ctx, now.Add(2*time.Minute)))
		})
	}
}
