package volume

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"crkvol/keyslot"
)

// Report describes one rewrap pass over the volumes of a key: after a rotation, a sync, or a
// lazy-rewrap catch-up.
type Report struct {
	KeyID string
	// NewVersion is the key version the volumes were brought to.
	NewVersion string
	// Volumes is the number of volumes the pass looked at.
	Volumes int
	// Rewrapped volumes got a new ciphertext; AlreadyCurrent ones had it already.
	Rewrapped, AlreadyCurrent int
	// Images is the number of catalog images (see [ImageEntry]) the pass looked at, counted
	// apart from the volumes: ImagesRewrapped got a new WDEK, ImagesAlreadyCurrent had it
	// already. Failed images are in Failed with the volumes, by CRN.
	Images, ImagesRewrapped, ImagesAlreadyCurrent int
	// ImagesReregistered counts the catalog images of the key the pass found with no
	// registration at the key service and registered again (with preventKeyDeletion, on the
	// version of their WDEK) before rewrapping them; they are among Images too.
	ImagesReregistered int
	// Retries counts attempts beyond the first.
	Retries int
	// KMSCalls counts the calls the pass made to the key service: two batch calls per wave
	// of volumes (rewraps, then registration updates; see Options.RewrapBatch), the single
	// calls of retries and of images, and the unwraps of the full checks (see
	// [Manager.Rewrap]).
	KMSCalls int
	// HeaderFlushes counts the flushes (fsync) the pass made on volume images: two per header
	// commit, one after each of the two copies.
	HeaderFlushes int64
	// Failed maps CRNs to the error of their last attempt. A failed volume keeps its old,
	// still valid wrapping.
	Failed map[string]error
	// NotStarted counts the volumes (and images) the pass did not get to because its context
	// ended first (the CLI's SIGINT or SIGTERM): nothing was written to them or to their
	// registrations, they keep their old, still valid wrapping, and a later pass (Sync)
	// takes them. They are not in Failed. Stopped is the context's error then.
	NotStarted int
	Stopped    error
	// Elsewhere counts the volumes (and images) asked for that this Manager's registry does
	// not have:
	// registered with the key from other hosts, whose own Manager (their agent, or a sync
	// there) rewraps them. They are not among Volumes.
	Elsewhere int
	// BytesWritten is the total written to images, all header metadata.
	BytesWritten int64
	// Elapsed is the wall time of the pass; Latencies the per-volume (and per-image) times,
	// sorted.
	Elapsed   time.Duration
	Latencies []time.Duration
	// VolumeLatency is each volume's (and image's) time (with retries), by CRN.
	VolumeLatency map[string]time.Duration
}

// RewrapProgress is how far a rewrap pass has got (see Options.Progress).
type RewrapProgress struct {
	KeyID string
	// Volumes is the number of volumes the pass looks at and Images the number of catalog
	// images; Done of the Volumes+Images are finished: Rewrapped, AlreadyCurrent (volumes),
	// ImagesRewrapped, ImagesAlreadyCurrent (images) or Failed (either).
	Volumes, Images, Done                 int
	Rewrapped, AlreadyCurrent, Failed     int
	ImagesRewrapped, ImagesAlreadyCurrent int
	// Elapsed is the wall time since the pass started.
	Elapsed time.Duration
}

// Percentile returns the q-th (0-1) per-volume latency.
func (r *Report) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// Err summarises the failures, or returns nil.
func (r *Report) Err() error {
	if len(r.Failed) == 0 && r.NotStarted == 0 {
		return nil
	}
	crns := make([]string, 0, len(r.Failed))
	for c := range r.Failed {
		crns = append(crns, c)
	}
	slices.Sort(crns)
	errs := make([]error, 0, len(crns))
	for _, c := range crns {
		errs = append(errs, fmt.Errorf("%s: %w", c, r.Failed[c]))
	}
	what := "volumes"
	if r.Images > 0 {
		what = "volumes and images"
	}
	if r.NotStarted > 0 {
		errs = append(errs, fmt.Errorf("%d not started: the pass was stopped: %w", r.NotStarted, r.Stopped))
	}
	return fmt.Errorf("volume: %d of %d %s of key %s not rewrapped: %w", len(r.Failed)+r.NotStarted, r.Volumes+r.Images, what, r.KeyID, errors.Join(errs...))
}

// onRotate is the rotation hook: it rewraps the stale volumes of the rotated key. Catalog
// images of the key that the notice does not name (their registration is missing) are
// registered again and rewrapped too.
func (m *Manager) onRotate(ctx context.Context, n RotationNotice) error {
	stale := n.Stale
	var made []Registration
	var failed map[string]error
	if m.unregisteredImages(n.KeyID, n.Stale) {
		if regs, _, err := m.kms.Registrations(ctx, n.KeyID); err != nil {
			m.opts.Logger.Warn("rotation: listing the key's registrations to find unregistered images failed", "key", n.KeyID, "err", err)
		} else {
			made, failed = m.repairImageRegistrations(ctx, n.KeyID, regs)
			for _, r := range made {
				if !slices.Contains(stale, r.CRN) {
					stale = append(slices.Clip(stale), r.CRN)
				}
			}
		}
	}
	rep := m.Rewrap(ctx, n.KeyID, n.NewVersion, stale)
	addRepairs(rep, made, failed)
	if m.opts.OnReport != nil {
		m.opts.OnReport(rep)
	}
	return rep.Err()
}

// Sync rewraps every volume and catalog image of keyID whose registration is not on the
// key's latest version: what a crash, a failure or an unreachable volume left behind. Its
// report counts the volumes of the key registered on this machine that were current already
// among Volumes and AlreadyCurrent, and the current images among Images and
// ImagesAlreadyCurrent.
func (m *Manager) Sync(ctx context.Context, keyID string) (*Report, error) {
	regs, latest, err := m.kms.Registrations(ctx, keyID)
	if err != nil {
		return nil, fmt.Errorf("volume: sync key %s: %w", keyID, err)
	}
	made, failed := m.repairImageRegistrations(ctx, keyID, regs)
	regs = append(slices.Clip(regs), made...)
	var stale []string
	for _, r := range regs {
		if r.VersionID != latest {
			stale = append(stale, r.CRN)
		}
	}
	// Registrations may be current while a token is not (a crash between the two writes
	// is repaired by rewrapping every volume whose token lags; reading tokens is cheap).
	current := 0 // volumes of this machine already on latest, registration and token
	currentImages := 0
	for _, r := range regs {
		if r.VersionID == latest {
			if img, err := m.reg.ImageByCRN(r.CRN); err == nil {
				// An image is current when its catalog entry is (the catalog is written before
				// the registration, so this only lags after a hand edit or a restore).
				if img.KeyVersion != latest || img.KeyID != keyID {
					stale = append(stale, r.CRN)
				} else {
					currentImages++
				}
				continue
			}
			if e, err := m.reg.Get(r.CRN); err == nil {
				if info, err := describe(ctx, e.Path); err != nil || info.UUID != e.UUID || info.KeyVersion != latest {
					// Lagging, or unreadable: let the rewrap report what is wrong.
					stale = append(stale, r.CRN)
				} else {
					current++
				}
			}
		}
	}
	rep := m.Rewrap(ctx, keyID, latest, stale)
	// The report counts every volume of the key on this machine: the current ones were
	// looked at too.
	rep.Volumes += current
	rep.AlreadyCurrent += current
	rep.Images += currentImages
	rep.ImagesAlreadyCurrent += currentImages
	addRepairs(rep, made, failed)
	if m.opts.OnReport != nil {
		m.opts.OnReport(rep)
	}
	return rep, nil
}

// addRepairs adds to rep the images repairImageRegistrations registered again (made; the
// rewrap counted them already) and those it could not (failed).
func addRepairs(rep *Report, made []Registration, failed map[string]error) {
	rep.ImagesReregistered += len(made)
	for crn, err := range failed {
		rep.Images++
		rep.Failed[crn] = err
	}
}

// RewrapVolume brings one volume to its key's latest version.
func (m *Manager) RewrapVolume(ctx context.Context, path string) (*Report, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	info, err := describe(ctx, path)
	if err != nil {
		return nil, err
	}
	// Only the registered image is rewrapped: a copy's token is not its registration's.
	if err := m.checkRegisteredFile(path, info.CRN); err != nil {
		return nil, fmt.Errorf("volume: rewrap %s: %w", path, err)
	}
	_, latest, err := m.kms.Registrations(ctx, info.KeyID)
	if err != nil {
		return nil, fmt.Errorf("volume: rewrap %s: %w", path, err)
	}
	if _, err := m.reg.Get(info.CRN); err != nil {
		return nil, fmt.Errorf("volume: rewrap %s: %w", path, err)
	}
	rep := m.Rewrap(ctx, info.KeyID, latest, []string{info.CRN})
	return rep, rep.Err()
}

// Rewrap brings the passphrase ciphertexts of the given volumes and catalog images (by CRN)
// of key keyID to version latest, retrying failures with backoff. Each volume is one atomic
// LUKS2 token update (its two header copies, each flushed) followed by its registration
// update; the data is never touched. Each image is a rewrap of its WDEK (no AAD), one catalog
// update and its registration update; the image file is never read nor written.
//
// Volumes go through in waves of Options.RewrapBatch (see there): the wave's headers are read
// and checked, its ciphertexts rewrapped by one batch call to the key service, its token
// commits run at once (Options.Workers at a time), and its registrations are updated by one
// batch call and its registry entries in one registry commit. The next wave is read and
// rewrapped while one commits, so the device's flush queue stays full; the key service's and
// the registry's commits are shared by the volumes of a wave. A volume that fails in a wave
// (a transient key service error, a header commit that lost a race) is retried on its own,
// with backoff, as before.
func (m *Manager) Rewrap(ctx context.Context, keyID, latest string, crns []string) *Report {
	p := m.newPass(ctx, keyID, latest)
	rep := p.rep
	// Volumes of other hosts (registered with the key, not in this registry) are theirs to
	// rewrap; any other registry error is the volume's failure, reported by its rewrap.
	var volumes, images []string
	// Which are this registry's volumes, in one read (a registry that cannot be read:
	// every volume's rewrap reports it).
	known, err := m.reg.registered(crns)
	for i, crn := range crns {
		if err == nil && !known[i] {
			if _, ierr := m.reg.ImageByCRN(crn); ierr == nil {
				images = append(images, crn)
				continue
			}
			rep.Elsewhere++
			continue
		}
		volumes = append(volumes, crn)
	}
	rep.Images = len(images)
	rep.Volumes = len(volumes)
	p.progress()
	p.rewrapImages(images)
	p.rewrapVolumes(volumes)
	p.retries.Wait()
	sort.Slice(rep.Latencies, func(i, j int) bool { return rep.Latencies[i] < rep.Latencies[j] })
	rep.KMSCalls = int(p.kmsCalls.Load())
	rep.Elapsed = time.Since(p.start)
	m.opts.Logger.Info("rewrap pass done", "key", keyID, "version", latest, "volumes", rep.Volumes,
		"rewrapped", rep.Rewrapped, "current", rep.AlreadyCurrent, "images", rep.Images, "images_rewrapped", rep.ImagesRewrapped,
		"images_current", rep.ImagesAlreadyCurrent, "failed", len(rep.Failed), "retries", rep.Retries, "elsewhere", rep.Elsewhere,
		"kms_calls", rep.KMSCalls, "header_flushes", rep.HeaderFlushes)
	return rep
}

// rewrapPass is the state one Rewrap call shares between its stages and retries.
type rewrapPass struct {
	m             *Manager
	ctx           context.Context
	keyID, latest string
	start         time.Time

	// kmsCalls counts the calls the pass made to the key service.
	kmsCalls atomic.Int64
	// retries runs the volumes that fell out of their wave (see retry); sem bounds the
	// attempts they make at once to Workers.
	retries sync.WaitGroup
	sem     chan struct{}

	mu  sync.Mutex // guards rep, and serialises progress calls
	rep *Report
}

// newPass starts a rewrap pass bringing volumes of keyID to version latest.
func (m *Manager) newPass(ctx context.Context, keyID, latest string) *rewrapPass {
	return &rewrapPass{m: m, ctx: ctx, keyID: keyID, latest: latest, start: time.Now(), sem: make(chan struct{}, m.opts.Workers),
		rep: &Report{KeyID: keyID, NewVersion: latest, Failed: map[string]error{}, VolumeLatency: map[string]time.Duration{}}}
}

// kms returns the key service, counting a call.
func (p *rewrapPass) kms() KeyService {
	p.kmsCalls.Add(1)
	return p.m.kms
}

// progress reports the counts so far; the caller holds p.mu (or runs alone).
func (p *rewrapPass) progress() {
	if p.m.opts.Progress == nil {
		return
	}
	rep := p.rep
	p.m.opts.Progress(RewrapProgress{KeyID: p.keyID, Volumes: rep.Volumes, Images: rep.Images,
		Done:      rep.Rewrapped + rep.AlreadyCurrent + rep.ImagesRewrapped + rep.ImagesAlreadyCurrent + len(rep.Failed) + rep.NotStarted,
		Rewrapped: rep.Rewrapped, AlreadyCurrent: rep.AlreadyCurrent, Failed: len(rep.Failed),
		ImagesRewrapped: rep.ImagesRewrapped, ImagesAlreadyCurrent: rep.ImagesAlreadyCurrent, Elapsed: time.Since(p.start)})
}

// notStarted records n volumes or images the pass did not get to: its context ended first.
func (p *rewrapPass) notStarted(n int) {
	if n == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rep.NotStarted += n
	p.rep.Stopped = context.Cause(p.ctx)
	p.progress()
}

// stopped reports whether the pass's context ended: a volume not started yet is not.
func (p *rewrapPass) stopped() bool { return p.ctx.Err() != nil }

// done records the outcome of one volume or image: d is its time, attempts how many times it
// was tried, res what it did.
func (p *rewrapPass) done(crn string, image bool, d time.Duration, attempts int, res rewrapResult, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rep := p.rep
	rep.Retries += max(attempts-1, 0)
	rep.Latencies = append(rep.Latencies, d)
	rep.VolumeLatency[crn] = d
	rep.BytesWritten += res.bytes
	rep.HeaderFlushes += res.flushes
	switch {
	case err != nil:
		rep.Failed[crn] = err
	case image && res.changed:
		rep.ImagesRewrapped++
	case image:
		rep.ImagesAlreadyCurrent++
	case res.changed:
		rep.Rewrapped++
	default:
		rep.AlreadyCurrent++
	}
	p.progress()
}

// rewrapImages rewraps the catalog images of the pass one by one, Workers at a time.
func (p *rewrapPass) rewrapImages(crns []string) {
	forEach(len(crns), p.m.opts.Workers, func(i int) {
		if p.stopped() {
			p.notStarted(1)
			return
		}
		t0 := time.Now()
		res, attempts, err := p.withRetry(crns[i], true, retryFrom{})
		p.done(crns[i], true, time.Since(t0), attempts, res, err)
	})
}

// forEach runs fn(0..n-1) on at most workers goroutines and waits for them.
func forEach(n, workers int, fn func(i int)) {
	workers = min(workers, n)
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

type rewrapResult struct {
	changed bool
	bytes   int64
	// flushes counts the Sync calls on the image (two per header commit).
	flushes int64
}

// add accumulates the work of another attempt.
func (r *rewrapResult) add(o rewrapResult) {
	r.changed = r.changed || o.changed
	r.bytes += o.bytes
	r.flushes += o.flushes
}

// permanent marks errors not worth retrying.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// giveUp reports whether a volume whose attempt number attempt failed with err is not tried
// again: permanent errors and refusals of the key service (suspended, destroyed or unknown
// key, failed authentication, ...) cannot change by trying again; nor can anything once the
// attempts are spent or the pass is cancelled.
func (m *Manager) giveUp(ctx context.Context, err error, attempt int) bool {
	var p permanent
	return errors.As(err, &p) || errors.Is(err, ErrKeyRefused) || attempt >= m.opts.Attempts || ctx.Err() != nil
}

// casState carries a volume's rewrap over a lost compare and swap: the round it is in, and the
// key version of the rewrap whose commit lost.
type casState struct {
	round int
	lost  string
}

// retryFrom is where withRetry takes a volume up: after attempts already made (their work in
// res, the last one's error in err), or within an attempt whose commit lost a race (cas).
type retryFrom struct {
	attempts int
	res      rewrapResult
	err      error
	cas      casState
}

// withRetry rewraps one volume (or image) on its own, retrying with backoff, from where from
// says. It returns the work done, the attempts made in all and the last error.
func (p *rewrapPass) withRetry(crn string, image bool, from retryFrom) (rewrapResult, int, error) {
	m, ctx := p.m, p.ctx
	total, attempt, cas := from.res, from.attempts, from.cas
	if err := from.err; err != nil {
		if m.giveUp(ctx, err, attempt) {
			m.opts.Logger.Warn("rewrap failed", "crn", crn, "attempts", attempt, "err", err)
			return total, attempt, err
		}
		if err := m.opts.Sleep(ctx, m.opts.Backoff(attempt)); err != nil {
			return total, attempt, err
		}
	}
	for {
		if cas.round == 0 {
			attempt++ // a lost race goes on within its attempt
		}
		var res rewrapResult
		var err error
		p.sem <- struct{}{}
		if image {
			res, err = p.rewrapImage(crn)
		} else {
			res, err = p.rewrapOne(crn, cas)
		}
		<-p.sem
		cas = casState{}
		total.add(res)
		if err == nil {
			return total, attempt, nil
		}
		if m.giveUp(ctx, err, attempt) {
			m.opts.Logger.Warn("rewrap failed", "crn", crn, "attempts", attempt, "err", err)
			return total, attempt, err
		}
		if err := m.opts.Sleep(ctx, m.opts.Backoff(attempt)); err != nil {
			return total, attempt, err
		}
	}
}

// maxCASRounds bounds how many times in a row a volume's rewrap starts over because another
// writer changed the token between its read and its commit.
const maxCASRounds = 3

// volumeTask is one volume on its way through a rewrap: what its read found, and what the
// steps after did.
type volumeTask struct {
	crn   string
	start time.Time
	// attempts counts the attempts made; res their work. left says the task left its wave
	// (done, failed, or handed to a retry on its own).
	attempts int
	res      rewrapResult
	left     bool

	// e is the volume's registry entry; hasEntry says prepare takes it (and entryErr) as
	// read for the wave rather than reading it.
	e        Entry
	hasEntry bool
	entryErr error
	f        *os.File
	cf       *countingFile
	img      *keyslot.Image
	reg      registration
	uuid     string
	tokID    int
	tok      *token
	// tokRaw is the token's JSON as read, which tok was parsed from.
	tokRaw []byte
	ct     []byte
	// state is the keyslot state the check proved or matched (hasState), the base of the
	// fingerprint recorded after the rewrap; proved says the check ran in full, so the
	// fingerprint of the current ciphertext is worth recording even without a rewrap.
	state    keyslotState
	hasState bool
	proved   bool

	// current says the token is on the version wanted (no rewrap); w is the rewrap's answer,
	// member its ciphertext as the token holds it.
	current bool
	w       Wrapped
	member  string
	// version is the token's version after the commit (or as found, when current).
	version string
	// verified is the fingerprint to record; "" for none.
	verified string
}

// close closes the task's image file and adds what was done through it to res.
func (t *volumeTask) close() {
	if t.cf != nil {
		t.res.bytes += t.cf.written
		t.res.flushes += t.cf.syncs
		t.cf = nil
	}
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

// prepare opens a volume's image and reads its token (under the image's shared lock,
// briefly), and checks that the volume opens (checkForRewrap). It sets t.current when the
// token is on latest (or, after a lost race, on the version the other writer got, cas.lost),
// else t.ct, the ciphertext to rewrap. Its errors are the attempt's failure; the file stays
// open for the commit (t.close closes it).
func (p *rewrapPass) prepare(t *volumeTask, cas casState) error {
	m, ctx := p.m, p.ctx
	e, err := t.e, t.entryErr
	if !t.hasEntry {
		e, err = m.reg.Get(t.crn)
	}
	t.hasEntry, t.entryErr = false, nil // a retry reads the entry again
	if err != nil {
		return permanent{err}
	}
	t.e = e
	f, err := os.OpenFile(e.Path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", e.Path, err)
	}
	t.f = f
	// The file at the registered path must be the registered file: one put there since
	// (a restored backup, another copy) is not rewrapped in its place.
	if t.reg, err = m.registeredFile(e, f); err != nil {
		return permanent{err}
	}
	t.cf = &countingFile{File: f, dev: f}
	if m.opts.RewrapDevice != nil {
		t.cf.dev = m.opts.RewrapDevice(ctx, t.crn, f)
	}
	if t.img, err = keyslot.OpenContext(ctx, t.cf, &keyslot.Options{Buffers: &m.hdrBufs}); err != nil {
		return err
	}
	t.uuid = t.img.UUID()
	if t.uuid != e.UUID || CRN(t.uuid) != t.crn {
		return permanent{fmt.Errorf("%w: %s holds volume %s, not the registered %s (moved or replaced?)", ErrNotRegisteredImage, e.Path, t.uuid, e.UUID)}
	}
	if err := p.readToken(t); err != nil {
		return err
	}
	// A volume that cannot be opened is not rewrapped, nor reported current: that would
	// report a success for a volume that is lost. The check needs the key service (an
	// unwrap, to open the keyslot) unless the registry's fingerprint shows the keyslot was
	// proved to open in this very state; its failures are retried as a rewrap's are.
	if err := p.checkForRewrap(t); err != nil {
		return err
	}
	return p.classify(t, cas)
}

// readToken finds the volume's token in t.img and checks it is of the pass's key.
func (p *rewrapPass) readToken(t *volumeTask) error {
	id, tok, raw, err := findTokenRaw(t.img)
	if err != nil {
		return permanent{err}
	}
	if tok.KeyID != p.keyID {
		return permanent{fmt.Errorf("volume %s is protected by key %s, not %s", t.crn, tok.KeyID, p.keyID)}
	}
	t.tokID, t.tok, t.tokRaw = id, tok, raw
	return nil
}

// classify sets t.current and t.version, or t.ct (see prepare).
func (p *rewrapPass) classify(t *volumeTask, cas casState) error {
	t.version = t.tok.KeyVersion
	if (t.version == p.latest && p.latest != "") || (t.version == cas.lost && cas.lost != "") {
		t.current = true // current, or the other writer's ciphertext is as new as ours was
		return nil
	}
	ct, err := t.tok.ciphertext()
	if err != nil {
		return permanent{err}
	}
	t.ct = ct
	return nil
}

// take sets t.w, the key service's rewrap of t.ct, after checking it is complete.
func (t *volumeTask) take(w Wrapped, keyID string) error {
	if err := checkWrapped("rewrap", w); err != nil {
		return fmt.Errorf("rewrapping with key %s: %w", keyID, err)
	}
	member, err := ciphertextMember(w.Ciphertext)
	if err != nil {
		return fmt.Errorf("rewrapping with key %s: %w", keyID, err)
	}
	t.w, t.member = w, member
	return nil
}

// commit stores t.w in the token under the image's exclusive lock, if the token still holds
// the ciphertext that was rewrapped (compare and swap): if another writer (a rewrap
// elsewhere, a lazy rewrap on open) changed it meanwhile, theirs is never overwritten with
// ours, and commit returns errTokenChanged. The update is LUKS2's two-copy atomic commit, with
// a flush after each copy. After it, the fingerprint (t.verified) moves to the new ciphertext
// when the old one was the one checked.
func (p *rewrapPass) commit(t *volumeTask) error {
	uuid, old, member := t.uuid, t.tok.Ciphertext, t.member
	now := p.m.opts.Now().UTC().Truncate(time.Second)
	w, read, readRaw := t.w, t.tok, t.tokRaw
	// The key service has rewrapped this volume: its commit goes on when the pass is stopped
	// meanwhile, so that a stop leaves each volume rewrapped or untouched (the image lock's
	// wait still ends, after finishTimeout).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), finishTimeout)
	defer cancel()
	err := t.img.UpdateTokenContext(ctx, t.tokID, func(cur json.RawMessage) ([]byte, error) {
		// Runs under the image's lock: no Image methods here. The token as it was read, when
		// it has not changed since, needs no parsing again.
		var tok *token
		if bytes.Equal(cur, readRaw) {
			cp := *read
			tok = &cp
		} else {
			var err error
			if tok, err = parseToken(cur, uuid); err != nil {
				return nil, err
			}
		}
		if tok.Ciphertext != old {
			return nil, errTokenChanged // someone else rewrapped first: never overwrite theirs
		}
		tok.Ciphertext = member
		tok.KeyVersion = w.VersionID
		tok.WrappedAt = now
		return tok.marshalChecked(uuid)
	})
	if err != nil {
		return err
	}
	t.version, t.res.changed = w.VersionID, true
	if t.hasState {
		t.verified = t.state.fingerprint(uuid, p.keyID, member)
	}
	return nil
}

// verifiedUpdate returns the registry update the task's rewrap calls for (a fingerprint to
// record, the file identity to fill in), and whether there is one.
func (t *volumeTask) verifiedUpdate() (verifiedUpdate, bool) {
	u := verifiedUpdate{entry: t.e, fill: t.reg.fill, path: t.reg.path, fi: t.reg.fi}
	if t.verified != "" && t.verified != t.e.Verified {
		u.verified = t.verified
	}
	return u, u.verified != "" || u.fill
}

// rewrapOne rewraps one volume on its own (a retry, or a volume that left its wave): it
// reads and checks the volume (prepare), has the key service rewrap the ciphertext with no
// lock held, commits the new token (commit, a compare and swap), updates the registration and
// records the fingerprint. If another writer changed the ciphertext meanwhile, the volume is
// looked at again from what they wrote, which is normally on latest (or on the version ours
// had) already, and otherwise rewrapped from theirs. A failure at any point leaves the old,
// still valid ciphertext in place: an incomplete answer of the key service
// (ErrIncompleteAnswer) is never committed, nor any token that would not read back.
func (p *rewrapPass) rewrapOne(crn string, cas casState) (rewrapResult, error) {
	t := &volumeTask{crn: crn}
	defer t.close()
	err := p.rewrapTask(t, cas)
	t.close()
	return t.res, err
}

func (p *rewrapPass) rewrapTask(t *volumeTask, cas casState) error {
	if cas.round == 0 {
		cas.round = 1
	}
	if err := p.prepare(t, cas); err != nil {
		return err
	}
	for !t.current {
		// The network round trip, with no lock held.
		w, err := p.kms().Rewrap(p.ctx, p.keyID, t.ct, []string{t.uuid})
		if err != nil {
			return fmt.Errorf("rewrapping with key %s: %w", p.keyID, err)
		}
		if err := t.take(w, p.keyID); err != nil {
			return err
		}
		err = p.commit(t)
		if err == nil {
			break
		}
		if !errors.Is(err, errTokenChanged) {
			return err
		}
		if cas.round >= maxCASRounds {
			return fmt.Errorf("volume %s: %w %d times during a rewrap", t.crn, errTokenChanged, cas.round)
		}
		// What the other writer stored was not checked: no fingerprint moves to it.
		cas = casState{round: cas.round + 1, lost: w.VersionID}
		t.hasState, t.verified = false, ""
		if err := t.img.ReloadContext(p.ctx); err != nil {
			return err
		}
		if err := p.readToken(t); err != nil {
			return err
		}
		if err := p.classify(t, cas); err != nil {
			return err
		}
	}
	if err := p.kms().UpdateRegistration(p.ctx, p.keyID, t.crn, t.version); err != nil {
		return fmt.Errorf("updating the registration: %w", err)
	}
	if u, ok := t.verifiedUpdate(); ok {
		if err := p.m.reg.setVerified([]verifiedUpdate{u}); err != nil {
			p.m.opts.Logger.Warn("recording a volume's verification in the registry failed", "crn", t.crn, "err", err)
		}
	}
	return nil
}

// countingFile counts the bytes written through it to dev, and the flushes; it keeps
// *os.File's Fd so the keyslot package still locks, and syncs the file itself.
type countingFile struct {
	*os.File
	dev     keyslot.Device
	written int64
	syncs   int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) { return c.dev.ReadAt(p, off) }

func (c *countingFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.dev.WriteAt(p, off)
	c.written += int64(n)
	return n, err
}

// Sync flushes the file, counted.
func (c *countingFile) Sync() error {
	c.syncs++
	return c.File.Sync()
}
