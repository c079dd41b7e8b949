package sim

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crkvol/crk"
	"crkvol/keyslot"
	"crkvol/volume"
)

// Injected faults. They are retryable errors for the volume manager, except a crash, which
// cancels the whole rewrap pass it happens in.
var (
	ErrInjectedFailure = errors.New("sim: injected key-service failure")
	ErrKMSUnavailable  = errors.New("sim: key service unavailable (injected outage)")
	ErrCrash           = errors.New("sim: injected process crash")
	// ErrServiceDown is what the crashed volume service "does" until its restart: nothing.
	ErrServiceDown = errors.New("sim: volume service down (crashed, not yet restarted)")
)

// Crash points inside a volume's rewrap.
const (
	CrashBeforeRewrap = "before-kms-rewrap"
	CrashAfterRewrap  = "after-kms-rewrap"
	CrashTornWrite    = "torn-header-write"
	CrashBeforeRegUpd = "after-commit-before-registration"
	crashPointsCount  = 4
)

var crashPoints = [crashPointsCount]string{CrashBeforeRewrap, CrashAfterRewrap, CrashTornWrite, CrashBeforeRegUpd}

// FaultCounts are the faults a run injected.
type FaultCounts struct {
	KMSErrors   int            `json:"kmsErrors"`   // calls failed at random
	Unavailable int            `json:"unavailable"` // calls refused during outages
	Crashes     map[string]int `json:"crashes"`     // by crash point
	// LatencyAdded is the virtual latency added to key-service calls.
	LatencyAdded time.Duration `json:"latencyAddedNs"`
	// Corruptions counts volumes whose stored data was overwritten behind crkvol's back.
	Corruptions int `json:"corruptions"`
}

// Total is the number of injected faults.
func (f FaultCounts) Total() int {
	n := f.KMSErrors + f.Unavailable + f.Corruptions
	for _, c := range f.Crashes {
		n += c
	}
	return n
}

// passKey carries a rewrap pass's crash switch in its context.
type passKey struct{}

// pass is one rewrap pass (a rotation hook or a sync) that a crash can abort.
type pass struct {
	cancel  context.CancelCauseFunc
	mu      sync.Mutex
	crashed string                   // the crash point, once crashed
	virtual map[string]time.Duration // injected latency per volume CRN
	pending map[string]tornPlan      // CRN -> crash planned for a later step of its rewrap
}

// tornPlan is a crash planned after the key-service rewrap: at the header commit's write
// number write (cut after n bytes), or, if the commit has fewer writes, at the registration
// update. An image's rewrap writes no header (its WDEK goes into the catalog, one atomic
// transaction): its torn write crashes at the registration update.
type tornPlan struct {
	point  string
	write  int
	cutMax float64 // fraction of the first 512 bytes of the write that reach the disk
}

// faultyKMS is the key service as the volume manager sees it, with faults injected between
// the two. It decides every fault from its own seeded generator.
type faultyKMS struct {
	inner volume.KeyService
	clock *crk.ManualClock
	sc    *Scenario
	out   []Outage // absolute windows, as offsets from sc.Start

	// onPassDone, if set, receives every rotation-hook pass when it ends.
	onPassDone func(*pass)

	// down is set by a crash and cleared by the runner at the simulated restart: while it is
	// set every call fails, as the process making them is dead.
	down atomic.Bool

	mu    sync.Mutex
	names map[string]string // volume or image CRN -> "vol-<index>" or "img-<index>", the tag of its fault draws
	// wdeks maps the SHA-256 of every WDEK an image of the catalog had to the image's CRN: a
	// WDEK is wrapped without AAD, so its ciphertext is what tells which image a call is for.
	wdeks   map[[32]byte]string
	seed    uint64
	draws   map[string]uint64 // per-tag draw counters: decisions do not depend on goroutine order
	enabled bool
	counts  FaultCounts
}

func newFaultyKMS(inner volume.KeyService, clock *crk.ManualClock, sc *Scenario, rng *rand.Rand) *faultyKMS {
	// rng only places random outages (at setup, in order); per-call decisions use draw.
	f := &faultyKMS{inner: inner, clock: clock, sc: sc, seed: sc.Seed, draws: map[string]uint64{}, names: map[string]string{}, wdeks: map[[32]byte]string{}, enabled: true, counts: FaultCounts{Crashes: map[string]int{}}}
	f.out = append(f.out, sc.Faults.Outages...)
	total := sc.end().Sub(sc.Start)
	for range sc.Faults.RandomOutages {
		at := time.Duration(rng.Int64N(int64(total)))
		f.out = append(f.out, Outage{After: Duration(at), Duration: sc.Faults.OutageLength})
	}
	return f
}

// setEnabled turns fault injection on or off (the final reconciliation and the audit run
// without faults).
func (f *faultyKMS) setEnabled(on bool) {
	f.mu.Lock()
	f.enabled = on
	f.mu.Unlock()
}

func (f *faultyKMS) snapshot() FaultCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts
	c.Crashes = map[string]int{}
	for k, v := range f.counts.Crashes {
		c.Crashes[k] = v
	}
	return c
}

// name records the index of a volume, so that the faults drawn for it repeat from run to
// run.
func (f *faultyKMS) name(crn string, idx int) {
	f.mu.Lock()
	f.names[crn] = fmt.Sprintf("vol-%d", idx)
	f.mu.Unlock()
}

// nameImage records catalog image idx (its CRN and its WDEK), so that the faults drawn for it
// repeat from run to run and the calls about its WDEK are known to be its own.
func (f *faultyKMS) nameImage(crn string, wdek []byte, idx int) {
	f.mu.Lock()
	f.names[crn] = fmt.Sprintf("img-%d", idx)
	f.wdeks[sha256.Sum256(wdek)] = crn
	f.mu.Unlock()
}

// resource is the CRN a call is about: a volume's, from the AAD of its passphrase's
// wrapping (its UUID), or an image's, from its WDEK (wrapped without AAD); "" if neither.
func (f *faultyKMS) resource(aad []string, ct []byte) string {
	if len(aad) > 0 {
		return volume.CRN(aad[0])
	}
	if ct == nil {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wdeks[sha256.Sum256(ct)]
}

// rewrapped records the WDEK an image's rewrap (or lazy rewrap) made, for the image's later
// calls.
func (f *faultyKMS) rewrapped(crn string, w *volume.Wrapped) {
	if crn == "" || w == nil {
		return
	}
	f.mu.Lock()
	if _, ok := f.names[crn]; ok && strings.HasPrefix(f.names[crn], "img-") {
		f.wdeks[sha256.Sum256(w.Ciphertext)] = crn
	}
	f.mu.Unlock()
}

// tag is the draw sequence of a call about crn (f.mu held): the volume's, or the main
// goroutine's for calls about no known volume (those are made one at a time, in order).
func (f *faultyKMS) tag(crn string) string {
	if n, ok := f.names[crn]; ok {
		return n
	}
	return "main"
}

// draw returns the next uniform number in [0, 1) of a tag's sequence (f.mu held). A volume's
// calls are made in order by one goroutine, so tagging by CRN keeps every decision the same
// from run to run whatever the scheduling of the others.
func (f *faultyKMS) draw(tag string) float64 {
	n := f.draws[tag]
	f.draws[tag] = n + 1
	return hash01(f.seed, tag, n)
}

// inOutage reports whether the virtual clock is inside an outage window.
func (f *faultyKMS) inOutage() bool {
	off := f.clock.Now().Sub(f.sc.Start)
	for _, o := range f.out {
		if off >= time.Duration(o.After) && off < time.Duration(o.After)+time.Duration(o.Duration) {
			return true
		}
	}
	return false
}

// call decides the fate of one key-service call made for volume crn ("" if none): it adds
// latency, and returns an injected error or nil.
func (f *faultyKMS) call(ctx context.Context, op, crn string) error {
	if ctx.Err() != nil {
		// The pass crashed: a dead process makes no more calls.
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	if f.down.Load() {
		return fmt.Errorf("%s: %w", op, ErrServiceDown)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.enabled {
		return nil
	}
	if lat := time.Duration(f.sc.Faults.Latency); lat > 0 {
		d := lat + time.Duration(f.draw("latency "+f.tag(crn))*float64(lat))
		f.counts.LatencyAdded += d
		if p, ok := ctx.Value(passKey{}).(*pass); ok && crn != "" {
			p.mu.Lock()
			p.virtual[crn] += d
			p.mu.Unlock()
		}
	}
	if f.inOutage() {
		f.counts.Unavailable++
		return fmt.Errorf("%s: %w", op, ErrKMSUnavailable)
	}
	if f.sc.Faults.FailRate > 0 && f.draw(op+" "+f.tag(crn)) < f.sc.Faults.FailRate {
		f.counts.KMSErrors++
		return fmt.Errorf("%s: %w", op, ErrInjectedFailure)
	}
	return nil
}

// crashAt decides whether the rewrap of one volume crashes, and where ("" for no crash).
// Only rewraps inside a pass can crash.
func (f *faultyKMS) crashAt(ctx context.Context, crn string) string {
	if _, ok := ctx.Value(passKey{}).(*pass); !ok {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.enabled || f.sc.Faults.CrashRate == 0 {
		return ""
	}
	if x := f.draw("crash " + f.tag(crn)); x >= f.sc.Faults.CrashRate {
		return ""
	} else {
		return crashPoints[int(x/f.sc.Faults.CrashRate*crashPointsCount)%crashPointsCount]
	}
}

// crash aborts the pass of ctx at point and returns the error to fail the call with.
func (f *faultyKMS) crash(ctx context.Context, point string) error {
	p := ctx.Value(passKey{}).(*pass)
	p.mu.Lock()
	first := p.crashed == ""
	if first {
		p.crashed = point
	}
	p.mu.Unlock()
	if first {
		f.mu.Lock()
		f.counts.Crashes[point]++
		f.mu.Unlock()
	}
	err := fmt.Errorf("%w at %s", ErrCrash, point)
	f.down.Store(true)
	p.cancel(err)
	return err
}

func (f *faultyKMS) Wrap(ctx context.Context, keyID string, pt []byte, aad []string) (volume.Wrapped, error) {
	if err := f.call(ctx, "wrap", f.resource(aad, nil)); err != nil {
		return volume.Wrapped{}, err
	}
	return f.inner.Wrap(ctx, keyID, pt, aad)
}

func (f *faultyKMS) Unwrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Unwrapped, error) {
	crn := f.resource(aad, ct)
	if err := f.call(ctx, "unwrap", crn); err != nil {
		return volume.Unwrapped{}, err
	}
	u, err := f.inner.Unwrap(ctx, keyID, ct, aad)
	if err == nil {
		f.rewrapped(crn, u.Rewrapped)
	}
	return u, err
}

func (f *faultyKMS) Rewrap(ctx context.Context, keyID string, ct []byte, aad []string) (volume.Wrapped, error) {
	crn := f.resource(aad, ct)
	point := f.crashAt(ctx, crn)
	if point == CrashBeforeRewrap {
		return volume.Wrapped{}, f.crash(ctx, point)
	}
	if err := f.call(ctx, "rewrap", crn); err != nil {
		return volume.Wrapped{}, err
	}
	w, err := f.inner.Rewrap(ctx, keyID, ct, aad)
	if err != nil {
		return w, err
	}
	f.rewrapped(crn, &w)
	if point == CrashAfterRewrap {
		return volume.Wrapped{}, f.crash(ctx, point)
	}
	f.plan(ctx, crn, point)
	return w, nil
}

// plan records a crash planned for a later step of crn's rewrap (a torn header write, or
// the registration update), once the key service rewrapped it.
func (f *faultyKMS) plan(ctx context.Context, crn, point string) {
	if point != CrashTornWrite && point != CrashBeforeRegUpd {
		return
	}
	plan := tornPlan{point: point}
	if point == CrashTornWrite {
		f.mu.Lock()
		plan.write = int(f.draw("tear "+f.tag(crn)) * headerCommitWrites)
		plan.cutMax = f.draw("tear " + f.tag(crn))
		f.mu.Unlock()
	}
	if p, ok := ctx.Value(passKey{}).(*pass); ok {
		p.mu.Lock()
		if p.pending == nil {
			p.pending = map[string]tornPlan{}
		}
		p.pending[crn] = plan
		p.mu.Unlock()
	}
}

// RewrapBatch applies Rewrap's faults to each item, in item order, drawn from each volume's
// own sequence as its single calls draw them: a crash planned before an item's rewrap kills
// the process before the batch is sent (no item is rewrapped: the whole call fails); an
// injected failure or an outage fails its item alone; the other items go to the inner
// service in one call. Then a crash planned after an item's rewrap kills the process with
// the answers lost (the whole call fails), and the crashes planned for later steps (a torn
// header write, the registration update) are recorded per item as Rewrap records them.
func (f *faultyKMS) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := make([]volume.Wrapped, len(items)), make([]error, len(items))
	crns, points := make([]string, len(items)), make([]string, len(items))
	var send []int
	for i, it := range items {
		crns[i] = f.resource(it.AAD, it.Ciphertext)
		points[i] = f.crashAt(ctx, crns[i])
		if points[i] == CrashBeforeRewrap {
			return nil, nil, f.crash(ctx, points[i])
		}
		if err := f.call(ctx, "rewrap", crns[i]); err != nil {
			errs[i] = err
			continue
		}
		send = append(send, i)
	}
	if len(send) == 0 {
		return out, errs, nil
	}
	sub := make([]volume.RewrapItem, len(send))
	for j, i := range send {
		sub[j] = items[i]
	}
	res, serrs, err := f.inner.RewrapBatch(ctx, keyID, sub)
	if err != nil {
		return nil, nil, err
	}
	for j, i := range send {
		if out[i], errs[i] = res[j], serrs[j]; errs[i] == nil {
			f.rewrapped(crns[i], &out[i])
		}
	}
	for _, i := range send {
		if errs[i] == nil && points[i] == CrashAfterRewrap {
			return nil, nil, f.crash(ctx, points[i])
		}
	}
	for _, i := range send {
		if errs[i] == nil {
			f.plan(ctx, crns[i], points[i])
		}
	}
	return out, errs, nil
}

func (f *faultyKMS) KeyCRN(ctx context.Context, keyID string) (string, error) {
	if err := f.call(ctx, "key", ""); err != nil {
		return "", err
	}
	return f.inner.KeyCRN(ctx, keyID)
}

func (f *faultyKMS) Register(ctx context.Context, keyID, crn, versionID string, prevent bool) error {
	if err := f.call(ctx, "register", crn); err != nil {
		return err
	}
	return f.inner.Register(ctx, keyID, crn, versionID, prevent)
}

func (f *faultyKMS) UpdateRegistration(ctx context.Context, keyID, crn, versionID string) error {
	if p, ok := ctx.Value(passKey{}).(*pass); ok && p.take(crn).point != "" {
		// A planned crash the header commit did not reach (or one planned for here).
		return f.crash(ctx, CrashBeforeRegUpd)
	}
	if err := f.call(ctx, "update registration", crn); err != nil {
		return err
	}
	return f.inner.UpdateRegistration(ctx, keyID, crn, versionID)
}

// UpdateRegistrations applies UpdateRegistration's faults to each update, in order: a crash
// planned for a volume's registration update (or one its header commit did not reach) kills
// the process before the batch is sent (the whole call fails, nothing is stored); an injected
// failure or an outage fails its update alone; the others go to the inner service in one
// call.
func (f *faultyKMS) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	errs := make([]error, len(updates))
	var send []int
	for i, u := range updates {
		if p, ok := ctx.Value(passKey{}).(*pass); ok && p.take(u.CRN).point != "" {
			return nil, f.crash(ctx, CrashBeforeRegUpd)
		}
		if err := f.call(ctx, "update registration", u.CRN); err != nil {
			errs[i] = err
			continue
		}
		send = append(send, i)
	}
	if len(send) == 0 {
		return errs, nil
	}
	sub := make([]volume.RegistrationUpdate, len(send))
	for j, i := range send {
		sub[j] = updates[i]
	}
	serrs, err := f.inner.UpdateRegistrations(ctx, keyID, sub)
	if err != nil {
		return nil, err
	}
	for j, i := range send {
		errs[i] = serrs[j]
	}
	return errs, nil
}

func (f *faultyKMS) DeleteRegistration(ctx context.Context, keyID, crn string) error {
	if err := f.call(ctx, "delete registration", crn); err != nil {
		return err
	}
	return f.inner.DeleteRegistration(ctx, keyID, crn)
}

func (f *faultyKMS) Registrations(ctx context.Context, keyID string) ([]volume.Registration, string, error) {
	if err := f.call(ctx, "registrations", ""); err != nil {
		return nil, "", err
	}
	return f.inner.Registrations(ctx, keyID)
}

func (f *faultyKMS) KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	if err := f.call(ctx, "keystate", ""); err != nil {
		return volume.KeyStatus{}, err
	}
	return f.inner.KeyState(ctx, keyID)
}

// OnRotate runs every rotation hook inside a pass, so a crash can abort it.
func (f *faultyKMS) OnRotate(hook func(ctx context.Context, n volume.RotationNotice) error) func() {
	return f.inner.OnRotate(func(ctx context.Context, n volume.RotationNotice) error {
		if f.down.Load() {
			return ErrServiceDown // the notice reaches a dead process: lost; the restart syncs
		}
		ctx, p := newPass(ctx)
		err := hook(ctx, n)
		p.cancel(nil)
		if f.onPassDone != nil {
			f.onPassDone(p)
		}
		return err
	})
}

// newPass starts a rewrap pass that a crash can abort.
func newPass(ctx context.Context) (context.Context, *pass) {
	ctx, cancel := context.WithCancelCause(ctx)
	p := &pass{cancel: cancel, virtual: map[string]time.Duration{}}
	return context.WithValue(ctx, passKey{}, p), p
}

// take removes and returns the crash planned for crn's later steps.
func (p *pass) take(crn string) tornPlan {
	p.mu.Lock()
	defer p.mu.Unlock()
	plan := p.pending[crn]
	delete(p.pending, crn)
	return plan
}

// device returns the header device of a rewrap: for a planned torn write, it keeps half of the
// first write and then fails, as a process killed in the middle of a header commit would.
func (f *faultyKMS) device(ctx context.Context, crn string, dev keyslot.Device) keyslot.Device {
	p, ok := ctx.Value(passKey{}).(*pass)
	if !ok {
		return dev
	}
	return &tornDevice{Device: dev, f: f, ctx: ctx, p: p, crn: crn}
}

// headerCommitWrites is how many writes a LUKS2 metadata commit makes: for each of the two
// header copies, the binary header, the JSON area and the checksum.
const headerCommitWrites = 6

// tornDevice cuts the planned write of a header commit short and crashes the pass.
type tornDevice struct {
	keyslot.Device
	f      *faultyKMS
	ctx    context.Context
	p      *pass
	crn    string
	writes int
}

func (t *tornDevice) WriteAt(b []byte, off int64) (int, error) {
	if t.ctx.Err() != nil {
		return 0, context.Cause(t.ctx) // the process is dead: nothing more reaches the disk
	}
	n := t.writes
	t.writes++
	plan := t.p.peek(t.crn)
	if plan.point != CrashTornWrite || plan.write != n || len(b) < 2 {
		return t.Device.WriteAt(b, off)
	}
	t.p.take(t.crn)
	// The bytes that matter sit at the start of each write (the rest is padding): cut
	// somewhere in the first 512.
	cut := 1 + int(plan.cutMax*float64(min(len(b)-1, 511)))
	w, _ := t.Device.WriteAt(b[:cut], off)
	return w, t.f.crash(t.ctx, CrashTornWrite)
}

func (p *pass) peek(crn string) tornPlan {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pending[crn]
}
