package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// imagesScenario is a small fleet with images, rotated often under KMS errors and crashes
// (one rewrap worker, so that every count repeats from run to run).
func imagesScenario() Scenario {
	return Scenario{Seed: 4, Months: 2, Keys: 2, Volumes: 6, Images: 4, PolicyMonths: 1, ManualRotationsPerMonth: 2,
		AttachesPerMonth: -1, Workers: 1, Faults: Faults{FailRate: 0.05, CrashRate: 0.1}}
}

// checkImages asserts that every image of a run passed every check of the audit.
func checkImages(t *testing.T, rep *Report, images int) {
	t.Helper()
	require.NoError(t, rep.Err())
	im := rep.Images
	require.NotNil(t, im)
	assert.Equal(t, images, im.Images)
	assert.Equal(t, im.Images, im.Exported+im.Imported)
	assert.Positive(t, im.Exported)
	assert.Positive(t, im.Imported)
	assert.Equal(t, im.Images, im.Current, "every WDEK on its key's latest version")
	assert.Equal(t, im.Images, im.Unlocked, "every WDEK unlocks its image's LUKS1 header")
	assert.Equal(t, im.Images, im.Unchanged, "no image file was written")
	assert.Equal(t, min(im.Images, imageVolumesChecked), im.VolumesCreated)
	assert.Zero(t, im.Failed)
	assert.Positive(t, im.Rewraps)
	for _, k := range rep.Keys {
		assert.Equal(t, 1, k.FinalVersionsOutstanding, k.Name)
	}
}

// TestImagesRotateWithVolumes: images made from the fleet's volumes (exported into the
// catalog, and imported with a WDEK) are rewrapped by the rotations that rewrap their keys'
// volumes, under KMS errors and crashes inside rewraps, which hit images as they hit
// volumes; at the end each WDEK is on its key's latest version and unlocks its image, no
// image file changed, and a volume created from each image reads back its content. Two runs
// of the same seed give the same counts.
func TestImagesRotateWithVolumes(t *testing.T) {
	t.Parallel()
	sc := imagesScenario()
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
	var sum bytes.Buffer
	require.NoError(t, a.WriteSummary(&sum))
	t.Log(sum.String())
	checkImages(t, a, 4)
	assert.Positive(t, a.Images.RewrapsAborted, "crashes cut image rewraps off")
	assert.Positive(t, a.Images.MaxOnOldVersions, "and left images behind for a while")
	imagePasses := 0
	for _, p := range a.Passes {
		imagePasses += p.Images
	}
	assert.Positive(t, imagePasses)
	// Images are counted apart: the volumes' counts are the volumes'.
	assert.Equal(t, sc.Volumes, a.Audit.Volumes)
	for _, k := range a.Keys {
		assert.Equal(t, 3, k.Volumes, k.Name)
		assert.Equal(t, 2, k.Images, k.Name)
	}
	for _, s := range a.Samples {
		assert.Equal(t, 6, s.Volumes)
		assert.Equal(t, 4, s.Images)
	}
	assert.Contains(t, sum.String(), "\nImages          4 encrypted qcow2 images in the catalog (2 exported with a WDEK, 2 imported): ")
	assert.Contains(t, sum.String(), "\nImage audit PASSED: 4 images, 4 with their WDEK on their key's latest version, 4 unlock their LUKS1 header, 4 files unchanged, 4 volumes created from them read back, 0 failed")
	js, err := json.Marshal(a)
	require.NoError(t, err)
	assert.Contains(t, string(js), `"images":{"images":4,`)

	// The same seed, the same run.
	digest := func(r *Report) []any {
		var passes []string
		for _, p := range r.Passes {
			passes = append(passes, p.Trigger+"@"+p.At.Format(time.RFC3339)+"/"+p.Key)
		}
		return []any{*r.Images, r.Rewraps, r.RewrapsAborted, r.Faults.Crashes, r.Restarts, passes}
	}
	assert.Equal(t, digest(a), digest(b))
}

// TestImageFileWrittenFailsAudit: an image file changed behind crkvol's back is found, and
// the run fails.
func TestImageFileWrittenFailsAudit(t *testing.T) {
	t.Parallel()
	sc := Scenario{Seed: 2, Months: 1, Keys: 1, Volumes: 2, Images: 1, PolicyMonths: 1, AttachesPerMonth: -1}
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir(), beforeAudit: func(r *runner) {
		f, err := os.OpenFile(r.imgs[0].path, os.O_WRONLY|os.O_APPEND, 0)
		require.NoError(t, err)
		_, err = f.Write([]byte("tail"))
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}})
	require.NoError(t, err)
	err = rep.Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "1 of 1 images failed")
	assert.Equal(t, 1, rep.Images.Failed)
	assert.Contains(t, strings.Join(rep.Audit.Failures, "\n"), "the image file was written")
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	assert.Contains(t, sum.String(), "Image audit FAILED: 1 images")
}

// TestHostsImages: with hosts, each host's images (one on a key none of the host's volumes
// uses) are rewrapped by its agent from the lifecycle feed; a long run also checks a larger
// fleet of images under crashes.
func TestHostsImages(t *testing.T) {
	t.Parallel()
	sc := hostsScenario(2, 4, 1)
	sc.Keys, sc.Images, sc.ManualRotationsPerMonth, sc.AttachesPerMonth = 3, 3, 2, -1
	rep := runHosts(t, sc, Options{})
	checkImages(t, rep, 6)
	for _, p := range rep.Passes {
		assert.Contains(t, []string{"agent", "reconcile", "final"}, p.Trigger)
	}
	assert.Equal(t, rep.Hosts.HostKeys, rep.Hosts.Confirmed)
}

// TestManyImages is a larger fleet of images under faults and crashes (long run only).
func TestManyImages(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set " + tooltest.LongEnv + "=1")
	}
	t.Parallel()
	sc := Scenario{Seed: 11, Months: 6, Keys: 3, Volumes: 60, Images: 40, PolicyMonths: 1, ManualRotationsPerMonth: 1,
		AttachesPerMonth: 30, CreatesPerMonth: 3, DeletesPerMonth: 3,
		Faults: Faults{FailRate: 0.05, CrashRate: 0.03, Latency: Duration(5 * time.Millisecond), RandomOutages: 2}}
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir()})
	require.NoError(t, err)
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	t.Log(sum.String())
	checkImages(t, rep, 40)
	assert.Positive(t, rep.Images.RewrapsAborted)
}
