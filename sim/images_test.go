package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// imagesScenario is a fleet with as many images as volumes, rotated often under KMS errors
// and crashes (one rewrap worker, so that every count repeats from run to run): two months
// of ten volumes with CRKVOL_LONG_TESTS=1, a month of two (at a higher crash rate, so that
// crashes still land) otherwise.
func imagesScenario() Scenario {
	n := tooltest.Scale(10, 2)
	return Scenario{Seed: 5, Months: tooltest.Scale(2, 1), Keys: 2, Volumes: n, Images: n, ManualRotationsPerMonth: 3,
		AttachesPerMonth: tooltest.Scale(10, -1), Workers: 1,
		Faults: Faults{FailRate: 0.05, CrashRate: float64(tooltest.Scale(3, 20)) / 100}}
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
// image file changed, and a volume created from each image reads back its content. With
// CRKVOL_LONG_TESTS=1, two runs of the same seed give the same counts (the images' catalog
// identities and fault draws come from the seed, as the volumes' do).
func TestImagesRotateWithVolumes(t *testing.T) {
	t.Parallel()
	sc := imagesScenario()
	runs := tooltest.Scale(2, 1)
	reps := make([]*Report, runs)
	errs := make([]error, runs)
	var wg sync.WaitGroup
	for i := range runs {
		dir := t.TempDir()
		wg.Go(func() { reps[i], errs[i] = Run(context.Background(), sc, Options{Dir: dir}) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	a := reps[0]
	var sum bytes.Buffer
	require.NoError(t, a.WriteSummary(&sum))
	t.Log(sum.String())
	n := sc.Images
	checkImages(t, a, n)
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
		assert.Equal(t, n/2, k.Volumes, k.Name)
		assert.Equal(t, n/2, k.Images, k.Name)
	}
	for _, s := range a.Samples {
		assert.Equal(t, n, s.Volumes)
		assert.Equal(t, n, s.Images)
	}
	assert.Contains(t, sum.String(), fmt.Sprintf("\nImages          %d encrypted qcow2 images in the catalog (%d exported into it, %d imported with their WDEK): ", n, n/2, n/2))
	assert.Contains(t, sum.String(), fmt.Sprintf("\nImage audit PASSED: %d images, %[1]d with their WDEK on their key's latest version, %[1]d unlock their LUKS1 header, %[1]d files unchanged, %d volumes created from them read back, 0 failed",
		n, min(n, imageVolumesChecked)))
	js, err := json.Marshal(a)
	require.NoError(t, err)
	assert.Contains(t, string(js), fmt.Sprintf(`"images":{"images":%d,`, n))

	// The same seed, the same run.
	digest := func(r *Report) []any {
		var passes []string
		for _, p := range r.Passes {
			passes = append(passes, p.Trigger+"@"+p.At.Format(time.RFC3339)+"/"+p.Key)
		}
		return []any{*r.Images, r.Rewraps, r.RewrapsAborted, r.Faults.Crashes, r.Restarts, passes}
	}
	for _, b := range reps[1:] {
		assert.Equal(t, digest(a), digest(b))
	}
}

// TestImageFileWrittenFailsAudit: an image file changed behind crkvol's back is found, and
// the run fails.
func TestImageFileWrittenFailsAudit(t *testing.T) {
	t.Parallel()
	sc := Scenario{Seed: 2, Months: 1, Keys: 1, Volumes: 1, Images: 1, AttachesPerMonth: -1}
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
// uses) are rewrapped by its agent from the lifecycle feed, under delivery faults, agent
// downtime and disables: a host of two volumes and three images in a plain run, two hosts of
// six with CRKVOL_LONG_TESTS=1.
func TestHostsImages(t *testing.T) {
	t.Parallel()
	hosts := tooltest.Scale(2, 1)
	sc := hostsScenario(hosts, 2*hosts, 1)
	sc.Keys, sc.Images, sc.ManualRotationsPerMonth, sc.AttachesPerMonth = 3, 3, 2, -1
	rep := runHosts(t, sc, Options{})
	checkImages(t, rep, 3*hosts)
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
	sc := Scenario{Seed: 11, Months: 4, Keys: 3, Volumes: 40, Images: 30, PolicyMonths: 1, ManualRotationsPerMonth: 1,
		AttachesPerMonth: 20, CreatesPerMonth: 2, DeletesPerMonth: 2,
		Faults: Faults{FailRate: 0.05, CrashRate: 0.03, Latency: Duration(5 * time.Millisecond), RandomOutages: 2}}
	rep, err := Run(context.Background(), sc, Options{Dir: t.TempDir()})
	require.NoError(t, err)
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	t.Log(sum.String())
	checkImages(t, rep, 30)
	assert.Positive(t, rep.Images.RewrapsAborted)
}

// TestImagesScenario: a scenario file sets the images; a negative or huge count is refused.
func TestImagesScenario(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/s.yaml"
	require.NoError(t, os.WriteFile(path, []byte("months: 1\nkeys: 1\nvolumes: 1\nimages: 3\n"), 0o600))
	s, err := LoadScenario(path)
	require.NoError(t, err)
	require.NoError(t, s.normalize())
	assert.Equal(t, 3, s.Images)
	for _, n := range []int{-1, maxImages + 1} {
		sc := Scenario{Months: 1, Keys: 1, Volumes: 1, Images: n}
		assert.ErrorIs(t, sc.normalize(), ErrScenario, "images %d", n)
	}
}
