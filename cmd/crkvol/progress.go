package main

import (
	"fmt"
	"io"
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
	w   io.Writer
	min int
	bar *progressbar.ProgressBar
}

// rewrapProgress returns the Manager's progress callback: bars on stderr if it is a terminal
// and the output is not JSON, else nil.
func (a *app) rewrapProgress() func(volume.RewrapProgress) {
	if a.asJSON || !isTerminal(a.stderr) {
		return nil
	}
	b := &rewrapBars{w: a.stderr, min: minBarVolumes}
	return b.update
}

func (b *rewrapBars) update(p volume.RewrapProgress) {
	if p.Volumes < b.min {
		return
	}
	desc := fmt.Sprintf("key %s: rewrapped %d, failed %d", p.KeyID, p.Rewrapped, p.Failed)
	if b.bar == nil || p.Done == 0 {
		b.bar = progressbar.NewOptions(p.Volumes, progressbar.OptionSetWriter(b.w), progressbar.OptionSetDescription(desc), progressbar.OptionShowCount(),
			progressbar.OptionShowIts(), progressbar.OptionSetItsString("volumes"), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetElapsedTime(true), progressbar.OptionSetRenderBlankState(true))
	}
	b.bar.Describe(desc)
	_ = b.bar.Set(p.Done)
	if p.Done >= p.Volumes {
		_ = b.bar.Finish()
		fmt.Fprintln(b.w)
		b.bar = nil
	}
}

// simBars draws `sim run`'s progress: a bar per phase (creating the fleet, simulating,
// auditing) with the month of virtual time simulated and the fleet's size. Its update
// method is a sim.Options.Progress.
type simBars struct {
	w     io.Writer
	phase string
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
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetElapsedTime(true), progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetRenderBlankState(true))
	}
	b.bar.Describe(desc)
	_ = b.bar.Set64(p.Done)
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
