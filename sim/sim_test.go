package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// smallScenario is a small fleet with every kind of event and fault: six months of 40 volumes
// with CRKVOL_LONG_TESTS=1, two months of 16 otherwise.
func smallScenario() Scenario {
	return Scenario{
		Seed: 3, Months: tooltest.Scale(6, 2), Keys: 3, Volumes: tooltest.Scale(40, 16), PolicyMonths: 1, ManualRotationsPerMonth: 1,
		AttachesPerMonth: tooltest.Scale(30, 15), CreatesPerMonth: 3, DeletesPerMonth: 3,
		Faults: Faults{FailRate: 0.05, CrashRate: 0.02, Latency: Duration(5 * time.Millisecond), RandomOutages: 2},
	}
}

// TestRunWithFaults: a small fleet through months of rotations, attaches, creates,
// deletes, KMS errors, outages and crashes; the audit passes and the faults are counted.
func TestRunWithFaults(t *testing.T) {
	t.Parallel()
	rep, err := Run(context.Background(), smallScenario(), Options{Dir: t.TempDir()})
	require.NoError(t, err)
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	t.Log(sum.String())
	require.NoError(t, rep.Err())
	assert.True(t, rep.Audit.Passed)
	assert.Equal(t, rep.Audit.Volumes, rep.Audit.DataVerified)
	assert.Positive(t, rep.Rotations)
	assert.Positive(t, rep.Rewraps)
	assert.Positive(t, rep.FaultsInjected)
	assert.Positive(t, rep.Faults.KMSErrors)
	assert.Positive(t, sumCrashes(rep.Faults.Crashes), "crashes were injected")
	assert.Positive(t, rep.Restarts, "and the service restarted after them")
	assert.Positive(t, rep.Attaches.Total)
	assert.Positive(t, rep.Attaches.Detached, "attachments stayed open across events")
	for _, k := range rep.Keys {
		assert.Equal(t, 1, k.FinalVersionsOutstanding, "every volume of %s on its latest version", k.Name)
	}
	b, err := json.Marshal(rep)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	for _, f := range []string{"rotations", "rewraps", "rewrapFailures", "bytesWritten", "faultsInjected"} {
		assert.Contains(t, m, f)
	}
	audit := m["audit"].(map[string]any)
	assert.Contains(t, audit, "volumes")
	assert.Contains(t, audit, "failed")
	var svg bytes.Buffer
	require.NoError(t, rep.WriteChart(&svg))
	assert.Contains(t, svg.String(), "<svg")
	assert.Contains(t, svg.String(), "version 2")
}

// TestSameSeedSameRun: with one rewrap worker, two runs of a scenario with faults and crashes
// give the same counts, passes and samples.
func TestSameSeedSameRun(t *testing.T) {
	t.Parallel()
	sc := smallScenario()
	sc.Workers = 1
	// Half the fleet of smallScenario in a plain run, with five times the crash rate so that
	// crashes still land: the same code with half the events to compare (TestRunWithFaults
	// runs the whole of it).
	sc.Volumes = tooltest.Scale(sc.Volumes, sc.Volumes/2)
	sc.Faults.CrashRate *= float64(tooltest.Scale(1, 5))
	// The two runs share nothing but the scenario: run them side by side.
	var (
		a, b       *Report
		errA, errB error
		wg         sync.WaitGroup
	)
	dirA, dirB := t.TempDir(), t.TempDir()
	wg.Go(func() { a, errA = Run(context.Background(), sc, Options{Dir: dirA}) })
	wg.Go(func() { b, errB = Run(context.Background(), sc, Options{Dir: dirB}) })
	wg.Wait()
	require.NoError(t, errA)
	require.NoError(t, errB)
	type digest struct {
		Rotations, Rewraps, Failures, Retries, Faults, Restarts int
		Bytes                                                   int64
		Attaches                                                Attaches
		Fleet                                                   Fleet
		Crashes                                                 map[string]int
		Triggers, Keys                                          []string
		Samples                                                 []map[int]int
	}
	d := func(r *Report) digest {
		x := digest{r.Rotations, r.Rewraps, r.RewrapFailures, r.Retries, r.FaultsInjected, r.Restarts, r.BytesWritten, r.Attaches, r.Fleet, r.Faults.Crashes, nil, nil, nil}
		for _, p := range r.Passes {
			x.Triggers = append(x.Triggers, p.Trigger+"@"+p.At.Format(time.RFC3339))
			x.Keys = append(x.Keys, p.Key)
		}
		for _, s := range r.Samples {
			x.Samples = append(x.Samples, s.ByGeneration)
		}
		return x
	}
	assert.Equal(t, d(a), d(b))
	assert.Positive(t, a.FaultsInjected)
	assert.Positive(t, sumCrashes(a.Faults.Crashes))
}

// TestKMSFailuresAndCrashesConverge: 5% KMS failures and 1% crashes per rewrap on a small
// fleet: the audit passes, every volume ends on its key's latest version,
// and the faults are counted.
func TestKMSFailuresAndCrashesConverge(t *testing.T) {
	t.Parallel()
	// A year of 150 volumes rotated quarterly with CRKVOL_LONG_TESTS=1; otherwise three
	// months of 12 rotated monthly, with eight times the crash rate so that crashes still land.
	volumes := tooltest.Scale(150, 12)
	sc := Scenario{Seed: 1, Months: tooltest.Scale(12, 3), Keys: 3, Volumes: volumes, PolicyMonths: tooltest.Scale(3, 1), AttachesPerMonth: 40,
		Faults: Faults{FailRate: 0.05, CrashRate: float64(tooltest.Scale(10, 80)) / 1000}}
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	assert.Equal(t, volumes, rep.Audit.DataVerified)
	assert.Positive(t, rep.Faults.KMSErrors)
	assert.Positive(t, sumCrashes(rep.Faults.Crashes))
	assert.Equal(t, rep.Faults.KMSErrors+sumCrashes(rep.Faults.Crashes), rep.FaultsInjected)
	for _, k := range rep.Keys {
		assert.Equal(t, 1, k.FinalVersionsOutstanding, k.Name)
	}
	assert.Positive(t, rep.MaxOnOldVersions, "the crashes left volumes behind for a while")
}

// TestCrashPointsLeaveRecoverableState: with a high crash rate every crash point is hit,
// including torn header writes, and the fleet still audits clean: a tenth of the rewraps of
// six months of 40 volumes with CRKVOL_LONG_TESTS=1, a quarter of two months of 12 otherwise.
func TestCrashPointsLeaveRecoverableState(t *testing.T) {
	t.Parallel()
	sc := Scenario{Seed: 21, Months: tooltest.Scale(6, 2), Keys: 2, Volumes: tooltest.Scale(40, 12), PolicyMonths: 1, ManualRotationsPerMonth: 2,
		AttachesPerMonth: -1, Faults: Faults{CrashRate: float64(tooltest.Scale(10, 25)) / 100}}
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	for _, p := range crashPoints {
		assert.Positive(t, rep.Faults.Crashes[p], p)
	}
	assert.Positive(t, rep.RewrapsAborted)
}

// TestRotationCostIndependentOfSize: the same scenario on 1 MiB and 1 GiB (sparse) volumes
// writes the same header bytes per rewrap, and no data.
func TestRotationCostIndependentOfSize(t *testing.T) {
	t.Parallel()
	sizes := []string{"1MiB", "1GiB"}
	reps := make([]*Report, len(sizes))
	errs := make([]error, len(sizes))
	var wg sync.WaitGroup
	for i, size := range sizes { // independent runs: side by side
		sc := Scenario{Seed: 5, Months: tooltest.Scale(3, 2), Keys: 2, Volumes: tooltest.Scale(12, 6), PolicyMonths: 1, AttachesPerMonth: -1, VolumeSize: size}
		dir := t.TempDir()
		wg.Go(func() { reps[i], errs[i] = Run(context.Background(), sc, Options{Dir: dir}) })
	}
	wg.Wait()
	for i := range sizes {
		require.NoError(t, errs[i])
		require.NoError(t, reps[i].Err())
	}
	require.Positive(t, reps[0].Rewraps)
	assert.Equal(t, reps[0].Rewraps, reps[1].Rewraps)
	assert.Equal(t, reps[0].BytesWritten, reps[1].BytesWritten)
	assert.Equal(t, 40960.0, reps[0].BytesPerRewrap, "two 16 KiB header copies and their binary headers, per rewrap")
}

// TestCorruptionFailsAudit: data overwritten behind crkvol's back is found, and the run fails.
func TestCorruptionFailsAudit(t *testing.T) {
	t.Parallel()
	sc := Scenario{Seed: 9, Months: 2, Keys: 1, Volumes: 10, PolicyMonths: 1, AttachesPerMonth: -1, Faults: Faults{CorruptData: 2}}
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir()})
	require.NoError(t, err)
	require.Error(t, rep.Err())
	assert.False(t, rep.Audit.Passed)
	assert.GreaterOrEqual(t, rep.Audit.Failed, 1)
	assert.Equal(t, 2, rep.Faults.Corruptions)
	assert.Contains(t, strings.Join(rep.Audit.Failures, "\n"), "differs from what was written")
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	assert.Contains(t, sum.String(), "Audit FAILED")
}

func TestScenarioFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	yml := filepath.Join(dir, "s.yaml")
	require.NoError(t, os.WriteFile(yml, []byte(`seed: 7
months: 24
keys: 10
volumes: 100
mapping: skewed
volumeSize: 1GiB
policyMonths: 3
keyPolicyMonths: [1, 12]
manualRotationsPerMonth: 0.5
faults:
  failRate: 0.05
  crashRate: 0.01
  latency: 20ms
  outages:
    - after: 30d
      duration: 6h
syncEvery: 12h
`), 0o600))
	s, err := LoadScenario(yml)
	require.NoError(t, err)
	require.NoError(t, s.normalize())
	assert.Equal(t, uint64(7), s.Seed)
	assert.Equal(t, "skewed", s.Mapping)
	assert.Equal(t, 1, s.policyOf(0))
	assert.Equal(t, 12, s.policyOf(1))
	assert.Equal(t, 3, s.policyOf(2))
	assert.Equal(t, Duration(20*time.Millisecond), s.Faults.Latency)
	assert.Equal(t, Duration(30*24*time.Hour), s.Faults.Outages[0].After)
	assert.Equal(t, Duration(12*time.Hour), s.SyncEvery)
	assert.Equal(t, 100, s.AttachesPerMonth, "default min(volumes, 500)")

	js := filepath.Join(dir, "s.json")
	require.NoError(t, os.WriteFile(js, []byte(`{"seed": 1, "months": 3, "keys": 2, "volumes": 5, "faults": {"latency": "1s"}}`), 0o600))
	s, err = LoadScenario(js)
	require.NoError(t, err)
	require.NoError(t, s.normalize())
	assert.Equal(t, Duration(time.Second), s.Faults.Latency)

	for name, bad := range map[string]Scenario{
		"months":   {Months: 0, Keys: 1, Volumes: 1},
		"keys":     {Months: 1, Keys: 0, Volumes: 1},
		"policy":   {Months: 1, Keys: 1, Volumes: 1, PolicyMonths: 13},
		"failrate": {Months: 1, Keys: 1, Volumes: 1, Faults: Faults{FailRate: 1}},
		"mapping":  {Months: 1, Keys: 1, Volumes: 1, Mapping: "zipf"},
		"size":     {Months: 1, Keys: 1, Volumes: 1, VolumeSize: "1KiB"},
	} {
		err := bad.normalize()
		assert.ErrorIs(t, err, ErrScenario, name)
	}
	require.NoError(t, os.WriteFile(yml, []byte("months: [\n"), 0o600))
	_, err = LoadScenario(yml)
	assert.ErrorIs(t, err, ErrScenario)
	_, err = Run(context.Background(), Scenario{Months: 1, Keys: 1, Volumes: 1}, Options{})
	assert.Error(t, err, "Dir is required")
}
