package main

import (
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/schollz/progressbar/v3"

	"crkvol/sim"
	"crkvol/volume"
)

// minBarVolumes is the smallest rewrap pass that gets a progress bar: smaller ones are over
// before a bar would say anything.
const minBarVolumes = 32

// rewrapBars draws one progress bar per rewrap pass (key rotate, key sync, due rotations):
// volumes done of the pass, rewrapped and failed so far, and the rate. Its update method is
// a volume.Options.Progress (the Manager serialises the calls).
type rewrapBars struct {
	w   *gatedWriter
	min int
	// every is the least time between two frames (0: every update draws one).
	every time.Duration
	last  time.Time
	bar   *progressbar.ProgressBar
}

// gatedWriter passes writes to w unless muted. A bar's Describe renders a frame at once,
// with the old count; muting it makes the count's update draw the one frame, so that the
// description and the count of every frame agree.
type gatedWriter struct {
	w     io.Writer
	muted bool
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	if g.muted {
		return len(p), nil
	}
	return g.w.Write(p)
}

// setBar gives bar (writing to g) its description desc and count n in one frame.
func setBar(bar *progressbar.ProgressBar, g *gatedWriter, desc string, n int64) {
	g.muted = true
	bar.Describe(desc)
	g.muted = false
	_ = bar.Set64(n)
}

// byteBar is a progress bar of bytes on w, in binary units (MiB) like every size crkvol
// prints.
func byteBar(w io.Writer, total int64, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total, progressbar.OptionSetDescription(what), progressbar.OptionSetWriter(w),
		progressbar.OptionShowBytes(true), progressbar.OptionShowTotalBytes(true), progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(10), progressbar.OptionThrottle(65*time.Millisecond), progressbar.OptionShowCount(),
		progressbar.OptionOnCompletion(func() { fmt.Fprint(w, "\n") }), progressbar.OptionSpinnerType(14),
		progressbar.OptionFullWidth(), progressbar.OptionSetRenderBlankState(true))
}

// rewrapProgress returns the Manager's progress callback: bars on stderr if it is a terminal
// and the output is not JSON, else nil.
func (a *app) rewrapProgress() func(volume.RewrapProgress) {
	if seen := testOnlyPassProcs; seen != nil {
		return func(volume.RewrapProgress) { seen(runtime.GOMAXPROCS(0)) }
	}
	if a.asJSON || a.background || !isTerminal(a.stderr) {
		return nil
	}
	b := &rewrapBars{w: &gatedWriter{w: a.stderr}, min: minBarVolumes, every: 100 * time.Millisecond}
	return b.update
}

func (b *rewrapBars) update(p volume.RewrapProgress) {
	// A pass counts its volumes and its catalog images (their WDEKs) apart; the bar counts
	// both.
	total := p.Volumes + p.Images
	if total < b.min {
		return
	}
	desc := fmt.Sprintf("key %s: rewrapped %d, failed %d", p.KeyID, p.Rewrapped, p.Failed)
	its := "volumes"
	if p.Images > 0 {
		desc = fmt.Sprintf("key %s: rewrapped %d volumes, %d images, failed %d", p.KeyID, p.Rewrapped, p.ImagesRewrapped, p.Failed)
		its = "volumes+images"
	}
	if b.bar == nil || p.Done == 0 {
		b.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(b.w), progressbar.OptionSetDescription(desc), progressbar.OptionShowCount(),
			progressbar.OptionShowIts(), progressbar.OptionSetItsString(its),
			progressbar.OptionSetElapsedTime(true), progressbar.OptionSetRenderBlankState(true))
		b.last = time.Now()
	}
	// The bar itself does not throttle (a throttled Describe or Set would leave a frame
	// with a stale half): updates closer than every to the last frame are skipped.
	if p.Done < total && time.Since(b.last) < b.every {
		return
	}
	b.last = time.Now()
	setBar(b.bar, b.w, desc, int64(p.Done))
	if p.Done >= total {
		_ = b.bar.Finish()
		fmt.Fprintln(b.w)
		b.bar = nil
	}
}

// simBars draws `sim run`'s progress: a bar per phase (creating the fleet, simulating,
// auditing) with the month of virtual time simulated and the fleet's size. Its update
// method is a sim.Options.Progress.
type simBars struct {
	w     *gatedWriter
	phase string
	last  time.Time
	bar   *progressbar.ProgressBar
}

func (b *simBars) update(p sim.Progress) {
	desc := fmt.Sprintf("%s: month %d of %d, %d volumes", p.Phase, p.Month, p.Months, p.Volumes)
	if p.Phase != sim.PhaseSimulate {
		desc = fmt.Sprintf("%s: %d of %d volumes", p.Phase, p.Done, p.Total)
	}
	if b.bar == nil || p.Phase != b.phase {
		b.finish()
		b.phase = p.Phase
		b.bar = progressbar.NewOptions64(max(p.Total, 1), progressbar.OptionSetWriter(b.w), progressbar.OptionSetDescription(desc),
			progressbar.OptionSetElapsedTime(true), progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetRenderBlankState(true))
		b.last = time.Now()
	}
	if p.Done < p.Total && time.Since(b.last) < 100*time.Millisecond {
		return // as rewrapBars: one consistent frame at most every 100 ms
	}
	b.last = time.Now()
	setBar(b.bar, b.w, desc, p.Done)
}

// finish ends the current bar, if any (b may be nil).
func (b *simBars) finish() {
	if b == nil || b.bar == nil {
		return
	}
	_ = b.bar.Finish()
	fmt.Fprintln(b.w)
	b.bar = nil
}
