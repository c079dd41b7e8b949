package main

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"

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
