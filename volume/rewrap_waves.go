package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// rewrapDepth is how many waves of a rewrap pass are in flight at once: while one commits its
// headers, the next is read, checked and rewrapped, so that the device always has commits
// queued. Two suffice: the commits of a wave take longer than the reading and the key
// service's batch of the next.
const rewrapDepth = 2

// wave is one batch of volumes going through a rewrap pass together.
type wave struct {
	tasks []*volumeTask
	// retried runs the tasks of the wave that fell out of it (see rewrapPass.retry); a wave
	// of a sequential pass waits for them.
	retried sync.WaitGroup
}

// rewrapVolumes rewraps the volumes crns in waves of Options.RewrapBatch: read and check
// (Workers at a time), one RewrapBatch call for the wave's ciphertexts, the token commits
// (Workers at a time), then one UpdateRegistrations call and one registry commit. The stages
// run as a pipeline: up to rewrapDepth waves are in flight, each stage taking them in order.
// With Workers 1 the waves (of one volume each) run one after the other, each with its
// retries, so a pass repeats exactly (the simulator relies on it).
func (p *rewrapPass) rewrapVolumes(crns []string) {
	if len(crns) == 0 {
		return
	}
	size := p.m.opts.RewrapBatch
	depth := rewrapDepth
	if p.m.opts.Workers == 1 {
		depth = 1
	}
	slots := make(chan struct{}, depth)
	prepared := make(chan *wave)
	rewrapped := make(chan *wave)
	committed := make(chan *wave)
	var stages sync.WaitGroup
	stage := func(in <-chan *wave, out chan<- *wave, fn func(*wave)) {
		stages.Add(1)
		go func() {
			defer stages.Done()
			if out != nil {
				defer close(out)
			}
			for w := range in {
				fn(w)
				if out != nil {
					out <- w
				}
			}
		}()
	}
	stage(prepared, rewrapped, p.rewrapWave)
	stage(rewrapped, committed, p.commitWave)
	stage(committed, nil, func(w *wave) {
		p.finishWave(w)
		if depth == 1 {
			w.retried.Wait()
		}
		<-slots
	})
	for start := 0; start < len(crns); start += size {
		slots <- struct{}{}
		if p.stopped() {
			// Stopped (the CLI's SIGINT or SIGTERM): no new wave. The rest keep their old,
			// valid wrapping for a later pass.
			<-slots
			p.notStarted(len(crns) - start)
			break
		}
		w := &wave{}
		for _, crn := range crns[start:min(start+size, len(crns))] {
			w.tasks = append(w.tasks, &volumeTask{crn: crn})
		}
		p.prepareWave(w)
		prepared <- w
	}
	close(prepared)
	stages.Wait()
}

// pending reports whether the task is still going through its wave (not failed, not handed
// to a retry, not done).
func (t *volumeTask) pending() bool { return !t.left }

// prepareWave reads and checks the wave's volumes, Workers at a time, after reading their
// registry entries in one transaction.
func (p *rewrapPass) prepareWave(w *wave) {
	crns := make([]string, len(w.tasks))
	for i, t := range w.tasks {
		crns[i] = t.crn
	}
	entries, errs := p.m.reg.getAll(crns)
	for i, t := range w.tasks {
		t.e, t.entryErr, t.hasEntry = entries[i], errs[i], true
	}
	forEach(len(w.tasks), p.m.opts.Workers, func(i int) {
		t := w.tasks[i]
		t.start = time.Now()
		t.attempts = 1
		if p.stopped() {
			p.leave(t)
			return
		}
		if err := p.prepare(t, casState{round: 1}); err != nil {
			if p.stopped() && errors.Is(err, p.ctx.Err()) {
				p.leave(t) // only read: not started
				return
			}
			p.fail(w, t, err)
		}
	})
}

// rewrapWave has the key service rewrap the ciphertexts of the wave's volumes that need it,
// in one call.
func (p *rewrapPass) rewrapWave(w *wave) {
	var tasks []*volumeTask
	var items []RewrapItem
	for _, t := range w.tasks {
		if t.pending() && !t.current {
			tasks = append(tasks, t)
			items = append(items, RewrapItem{Ciphertext: t.ct, AAD: []string{t.uuid}})
		}
	}
	if len(items) == 0 {
		return
	}
	var out []Wrapped
	var errs []error
	err := p.ctx.Err() // a stopped pass does not ask
	if err == nil {
		out, errs, err = p.kms().RewrapBatch(p.ctx, p.keyID, items)
	}
	if err == nil && (len(out) != len(items) || len(errs) != len(items)) {
		err = fmt.Errorf("%w: %d results and %d errors for a batch of %d rewraps", ErrIncompleteAnswer, len(out), len(errs), len(items))
	}
	if err != nil && p.stopped() && errors.Is(err, p.ctx.Err()) {
		// Not asked, or abandoned with the pass: nothing was written to these volumes.
		for _, t := range tasks {
			p.leave(t)
		}
		return
	}
	for i, t := range tasks {
		switch {
		case err != nil:
			p.fail(w, t, fmt.Errorf("rewrapping with key %s: %w", p.keyID, err))
		case errs[i] != nil:
			p.fail(w, t, fmt.Errorf("rewrapping with key %s: %w", p.keyID, errs[i]))
		default:
			if err := t.take(out[i], p.keyID); err != nil {
				p.fail(w, t, err)
			}
		}
	}
}

// commitWave commits the new tokens of the wave, Workers at a time, and closes its files. A
// commit that lost its race to another writer goes on, on its own, from what that writer
// stored.
func (p *rewrapPass) commitWave(w *wave) {
	forEach(len(w.tasks), p.m.opts.Workers, func(i int) {
		t := w.tasks[i]
		if !t.pending() || t.current {
			t.close()
			return
		}
		err := p.commit(t)
		t.close()
		if err != nil {
			if errors.Is(err, errTokenChanged) {
				// What the other writer stored is looked at again, within this attempt.
				p.retry(w, t, retryFrom{attempts: t.attempts, res: t.res, cas: casState{round: 2, lost: t.w.VersionID}})
				return
			}
			p.fail(w, t, err)
		}
	})
}

// finishWave updates the registrations of the wave's rewrapped and current volumes in one
// call, and their registry entries (fingerprints, file identities) in one commit, at once;
// then reports them.
func (p *rewrapPass) finishWave(w *wave) {
	var tasks []*volumeTask
	var updates []RegistrationUpdate
	var entries []verifiedUpdate
	for _, t := range w.tasks {
		if !t.pending() {
			continue
		}
		tasks = append(tasks, t)
		updates = append(updates, RegistrationUpdate{CRN: t.crn, VersionID: t.version})
		if u, ok := t.verifiedUpdate(); ok {
			entries = append(entries, u)
		}
	}
	if len(tasks) == 0 {
		return
	}
	// The tokens are durable: the registry may name their ciphertexts now, beside the
	// registrations.
	regDone := make(chan struct{})
	go func() {
		defer close(regDone)
		if err := p.m.reg.setVerified(entries); err != nil {
			p.m.opts.Logger.Warn("recording the verification of rewrapped volumes in the registry failed", "volumes", len(entries), "err", err)
		}
	}()
	// The headers are committed: their registrations are brought along even when the pass
	// was stopped meanwhile, so that a stop leaves each volume rewrapped or untouched.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), finishTimeout)
	defer cancel()
	errs, err := p.kms().UpdateRegistrations(ctx, p.keyID, updates)
	if err == nil && len(errs) != len(updates) {
		err = fmt.Errorf("%w: %d errors for a batch of %d registration updates", ErrIncompleteAnswer, len(errs), len(updates))
	}
	<-regDone
	for i, t := range tasks {
		switch {
		case err != nil:
			p.fail(w, t, fmt.Errorf("updating the registration: %w", err))
		case errs[i] != nil:
			p.fail(w, t, fmt.Errorf("updating the registration: %w", errs[i]))
		default:
			t.left = true
			p.done(t.crn, false, time.Since(t.start), 1, t.res, nil)
		}
	}
}

// finishTimeout bounds the work that does not end with the pass's context: the token commit
// of a volume the key service has rewrapped, and the registration update of a wave whose
// headers are committed.
const finishTimeout = time.Minute

// leave takes a task the pass's stop leaves untouched out of its wave: not started.
func (p *rewrapPass) leave(t *volumeTask) {
	t.close()
	t.left = true
	p.notStarted(1)
}

// fail ends the task's first attempt with err: a failure when it is not worth another,
// otherwise a retry on its own after the backoff.
func (p *rewrapPass) fail(w *wave, t *volumeTask, err error) {
	t.close()
	p.retry(w, t, retryFrom{attempts: t.attempts, res: t.res, err: err})
}

// retry takes the task out of its wave and carries it on, on its own (withRetry), from where
// from says.
func (p *rewrapPass) retry(w *wave, t *volumeTask, from retryFrom) {
	t.left = true
	if from.err != nil && p.m.giveUp(p.ctx, from.err, from.attempts) {
		p.m.opts.Logger.Warn("rewrap failed", "crn", t.crn, "attempts", from.attempts, "err", from.err)
		p.done(t.crn, false, time.Since(t.start), from.attempts, from.res, from.err)
		return
	}
	w.retried.Add(1)
	p.retries.Add(1)
	go func() {
		defer p.retries.Done()
		defer w.retried.Done()
		res, attempts, err := p.withRetry(t.crn, false, from)
		p.done(t.crn, false, time.Since(t.start), attempts, res, err)
	}()
}
