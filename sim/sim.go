package sim

import (
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// Options tune a run.
type Options struct {
	// Dir holds the key store, the registry and the volume images; it is created if needed
	// and should be empty.
	Dir string
	// Progress, if set, is called as the run goes: while it creates the fleet, as virtual
	// time advances (every 12 hours or so of it) and while it audits. Calls are serialised
	// and hold the run up: keep them short.
	Progress func(Progress)
	// Logger receives progress messages (never key material); discarded if nil.
	Logger *slog.Logger

	// skipLockout, a test hook of a run on hosts, breaks the lockout of the hosts it
	// accepts: their attach processes and agents leave attached volumes serving.
	skipLockout func(host int) bool
	// beforeAudit, a test hook, runs just before the audit (after the final reconciliation).
	beforeAudit func(r *runner)
}

// The phases of a run, as [Progress] names them.
const (
	// PhaseCreate creates the initial fleet: Done and Total count volumes.
	PhaseCreate = "creating the fleet"
	// PhaseSimulate runs the months of virtual time: Done and Total count its seconds.
	PhaseSimulate = "simulating"
	// PhaseAudit reconciles, then opens and checks every volume: Done and Total count the
	// volumes checked.
	PhaseAudit = "auditing"
)

// Progress is how far a run has got (see Options.Progress).
type Progress struct {
	// Phase is PhaseCreate, PhaseSimulate or PhaseAudit; Done of Total steps of it are done.
	Phase       string
	Done, Total int64
	// Month is the month of virtual time being simulated, 1 to Months.
	Month, Months int
	// Volumes is the size of the fleet.
	Volumes int
}

// progress reports p (with the month and the run's months filled in) to Options.Progress,
// one call at a time.
func (r *runner) progress(p Progress) {
	r.progressMu.Lock()
	defer r.progressMu.Unlock()
	r.progressLocked(p)
}

// progressStep counts one more step done of total in phase (under the progress lock, so the
// counts reported only grow) and reports it; volumes, if not negative, is the fleet's size,
// else the steps done.
func (r *runner) progressStep(phase string, done *int64, total int64, volumes int) {
	r.progressMu.Lock()
	defer r.progressMu.Unlock()
	*done++
	if volumes < 0 {
		volumes = int(*done)
	}
	r.progressLocked(Progress{Phase: phase, Done: *done, Total: total, Volumes: volumes})
}

// progressLocked is progress with progressMu held.
func (r *runner) progressLocked(p Progress) {
	if r.opts.Progress == nil {
		return
	}
	p.Months, p.Month = r.sc.Months, r.month()
	r.opts.Progress(p)
}

// month is the month of virtual time being simulated, 1 to Months.
func (r *runner) month() int {
	m := 1
	now := r.clock.Now()
	for m < r.sc.Months && !now.Before(r.sc.Start.AddDate(0, m, 0)) {
		m++
	}
	return m
}

// extent is data written to a volume, to be read back.
const extentSize = 4096

// vol is one simulated volume.
type vol struct {
	idx       int
	path      string
	crn       string
	key       int            // index into keys
	extents   [2]int64       // offsets of the written data
	sum       [32]byte       // SHA-256 of the extents' contents
	written   bool           // false until the first data write succeeded
	deleting  bool           // a delete failed half way; retried
	corrupted bool           // its stored data was overwritten behind crkvol's back
	open      *volume.Volume // attached: open until its detach event
	host      *simHost       // with hosts: the host it lives on
	pinned    bool           // with hosts: kept attached through the run by an attach process
}

// simKey is one root key.
type simKey struct {
	name, id   string
	policy     int
	versions   []string // oldest first, as the sim saw them appear
	lastRotate time.Time
}

type event struct {
	at   time.Time
	seq  int
	kind int
	key  int
	crn  string // evDetach: the volume
	host int    // with hosts: the host of the event
	n    int    // evDeliver: the index in the feed of the event delivered
	dis  *disableTrack
}

const (
	evAttach = iota
	evCreate
	evDelete
	evManualRotate
	evSync
	evSample
	evRestart
	evCorrupt
	evDetach
	// With hosts only (hosts.go).
	evDeliver      // an answer of the feed reaches a host's agent
	evAgentDown    // a host's agent stops
	evAgentUp      // and restarts
	evReconcile    // a host's agent reconciles on its timer
	evDisable      // a key is disabled
	evEnable       // and enabled again
	evAttachLock   // an attach process learns of its key's disable and stops serving
	evAttachUnlock // an attach process learns of its key's enable and attaches again
	evIO           // an attached volume serves (or refuses) I/O
)

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// restartDelay is how long a crashed process takes to come back and run `key sync`.
const restartDelay = 2 * time.Minute

// runner is one run's state.
type runner struct {
	// progressMu serialises the calls of Options.Progress and guards the counts they report.
	progressMu sync.Mutex
	sc         Scenario
	opts       Options
	log        *slog.Logger
	rng        *rand.Rand
	size       int64
	clock      *crk.ManualClock
	svc        *crk.Service
	reg        *volume.Registry
	mgr        *volume.Manager
	kms        *faultyKMS
	keys       []*simKey
	vols       map[string]*vol // by CRN
	order      []string        // CRNs in creation order (for deterministic picks)
	next       int             // next volume index
	imgs       []*simImage     // the catalog images, in the order made
	imgByCRN   map[string]*simImage
	q          eventQueue
	seq        int

	mu      sync.Mutex
	reports []*volume.Report // delivered by the manager, drained after each operation
	passes  []*pass          // rotation-hook passes, in the same order

	rep            *Report
	restartPending bool
	wallStarted    time.Time

	hs *hostsRun // with hosts, else nil
}

// meanAttach is the mean time a volume stays attached.
const meanAttach = 48 * time.Hour

// Run carries out a scenario and returns its report; the report's Audit says whether every
// volume survived. An error means the run itself could not proceed (bad scenario, disk).
func Run(ctx context.Context, sc Scenario, opts Options) (*Report, error) {
	if err := sc.normalize(); err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		return nil, errors.New("sim: Options.Dir is required")
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "volumes"), 0o700); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	size, _ := volume.ParseSize(sc.VolumeSize)
	r := &runner{sc: sc, opts: opts, log: opts.Logger, rng: rand.New(rand.NewPCG(sc.Seed, sc.Seed^0x5eed)),
		size: size, clock: crk.NewManualClock(sc.Start), vols: map[string]*vol{}, imgByCRN: map[string]*simImage{}, wallStarted: time.Now()}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.rep = newReport(sc)
	mk := sha256.Sum256(fmt.Appendf(nil, "crkvol sim master key %d", sc.Seed))
	var kseed [32]byte
	binary.LittleEndian.PutUint64(kseed[:], sc.Seed)
	copy(kseed[8:], "crk")
	svc, err := crk.Open(filepath.Join(opts.Dir, "crk.db"), crk.Options{Clock: r.clock, MasterKey: mk[:], Initiator: "crkvol-sim", Logger: r.log,
		Rand: &lockedReader{r: rand.NewChaCha8(kseed)},
		// With hosts, every agent's reconciliations read the service (each read an audited,
		// committed event): a simulated machine never crashes, so the store skips fsync.
		NoSync: sc.Hosts > 0})
	if err != nil {
		return nil, err
	}
	defer svc.Close()
	r.svc = svc
	if sc.Hosts > 0 {
		// Hosts: each its own registry and manager, none subscribed to rotations.
		r.kms = newFaultyKMS(kms.NewLocal(svc), r.clock, &r.sc, r.rng)
		if err := r.openHosts(); err != nil {
			return nil, err
		}
		defer r.closeHosts()
		return r.runRest(ctx)
	}
	if r.reg, err = volume.OpenRegistry(filepath.Join(opts.Dir, "volumes.db")); err != nil {
		return nil, err
	}
	defer r.reg.Close()
	r.kms = newFaultyKMS(kms.NewLocal(svc), r.clock, &r.sc, r.rng)
	r.mgr = volume.NewManager(r.kms, r.reg, volume.Options{
		Workers:      sc.Workers,
		Backoff:      func(n int) time.Duration { return time.Duration(50<<min(n-1, 5)) * time.Millisecond },
		Sleep:        func(ctx context.Context, _ time.Duration) error { return ctx.Err() }, // virtual backoff
		Now:          r.clock.Now,
		Logger:       r.log,
		OnReport:     func(rep *volume.Report) { r.mu.Lock(); r.reports = append(r.reports, rep); r.mu.Unlock() },
		RewrapDevice: r.kms.device,
	})
	defer r.mgr.Close()
	r.kms.onPassDone = func(p *pass) { r.mu.Lock(); r.passes = append(r.passes, p); r.mu.Unlock() }
	return r.runRest(ctx)
}

// runRest sets the fleet up, runs the events and audits.
func (r *runner) runRest(ctx context.Context) (*Report, error) {
	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	if err := r.loop(ctx); err != nil {
		if ctx.Err() != nil {
			// One error saying how far the run got, whatever operation the end of ctx hit.
			return nil, fmt.Errorf("sim: simulating: stopped in month %d of %d (virtual time %s): %w",
				r.month(), r.sc.Months, r.clock.Now().UTC().Format(time.RFC3339), context.Cause(ctx))
		}
		return nil, err
	}
	if err := r.finish(ctx); err != nil {
		return nil, err
	}
	r.rep.WallSeconds = time.Since(r.wallStarted).Seconds()
	return r.rep, nil
}

// setup creates the keys, their policies and the initial fleet (without faults), and plans
// the run's events.
func (r *runner) setup(ctx context.Context) error {
	r.kms.setEnabled(false)
	defer r.kms.setEnabled(true)
	for i := range r.sc.Keys {
		name := fmt.Sprintf("key-%02d", i)
		k, err := r.svc.CreateRootKey(ctx, name)
		if err != nil {
			return fmt.Errorf("sim: creating %s: %w", name, err)
		}
		sk := &simKey{name: name, id: k.ID, policy: r.sc.policyOf(i), versions: []string{k.KeyVersion.ID}}
		if sk.policy > 0 {
			if _, err := r.svc.SetRotationPolicy(ctx, k.ID, sk.policy, true); err != nil {
				return fmt.Errorf("sim: policy of %s: %w", name, err)
			}
		}
		r.keys = append(r.keys, sk)
		r.rep.Keys = append(r.rep.Keys, KeyReport{Name: name, ID: k.ID, PolicyMonths: sk.policy})
	}
	// The initial fleet, created on a few goroutines: each volume's key and data come from
	// its index, so the order of completion does not matter.
	assign := r.assignments(0, r.sc.Volumes)
	vols := make([]*vol, r.sc.Volumes)
	errs := make([]error, r.sc.Volumes)
	var wg sync.WaitGroup
	var created int64 // guarded by progressMu
	total := int64(r.sc.Volumes)
	r.progress(Progress{Phase: PhaseCreate, Total: total})
	jobs := make(chan int)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				vols[i], errs[i] = r.createVolume(ctx, i, assign[i])
				r.progressStep(PhaseCreate, &created, total, -1)
			}
		}()
	}
feed:
	for i := range r.sc.Volumes {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	// One error for the fleet, not one per volume: stopped says how far it got (the volumes
	// under way when the context ended fail with its error too), otherwise the first failure.
	made, failed, first := 0, 0, -1
	for i, v := range vols {
		switch {
		case v != nil:
			made++
		case errs[i] != nil:
			failed++
			if first < 0 {
				first = i
			}
		}
	}
	if ctx.Err() != nil && made < r.sc.Volumes {
		return fmt.Errorf("sim: creating the fleet: stopped after %d of %d volumes: %w", made, r.sc.Volumes, context.Cause(ctx))
	}
	if failed > 0 {
		more := ""
		if failed > 1 {
			more = fmt.Sprintf(" (and %d more volumes failed)", failed-1)
		}
		return fmt.Errorf("sim: creating the fleet: volume %d of %d%s: %w", first, r.sc.Volumes, more, errs[first])
	}
	for _, v := range vols {
		r.addVol(v)
	}
	r.next = r.sc.Volumes
	if err := r.makeImages(ctx); err != nil {
		return err
	}
	r.drain("setup")
	r.plan()
	return nil
}

// assignments maps the n new volumes numbered from first to keys.
func (r *runner) assignments(first, n int) []int {
	out := make([]int, n)
	weights := make([]float64, r.sc.Keys)
	total := 0.0
	for i := range weights {
		weights[i] = 1 / float64(i+1)
		total += weights[i]
	}
	for i := range out {
		switch r.sc.Mapping {
		case "random":
			out[i] = r.rng.IntN(r.sc.Keys)
		case "skewed":
			x := r.rng.Float64() * total
			for k, w := range weights {
				if x < w || k == len(weights)-1 {
					out[i] = k
					break
				}
				x -= w
			}
		default:
			out[i] = (first + i) % r.sc.Keys
		}
	}
	return out
}

// extentData is the deterministic content of a volume's extent for a given generation.
func extentData(seed uint64, idx, gen, which int) []byte {
	rng := rand.New(rand.NewPCG(seed^uint64(idx)*0x9e3779b97f4a7c15, uint64(gen)<<8|uint64(which)))
	b := make([]byte, extentSize)
	for i := 0; i < len(b); i += 8 {
		x := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(x >> (8 * j))
		}
	}
	return b
}

func sumOf(a, b []byte) [32]byte { return sha256.Sum256(append(slices.Clone(a), b...)) }

// createVolume creates volume idx under key k and writes its first data; a failed first
// write is logged, not returned (a later attach writes it).
func (r *runner) createVolume(ctx context.Context, idx, k int) (*vol, error) {
	v, err := r.newVolume(ctx, idx, k)
	if err != nil {
		return nil, err
	}
	// The volume exists from here on. If the key service refuses the attach that writes its
	// first data, a later attach writes it.
	if err := r.writeData(ctx, v, 0); err != nil {
		r.log.Info("first write failed", "volume", v.path, "err", err)
	}
	return v, nil
}

// newVolume creates volume idx under key k, without data. It uses only r's sc, opts, keys,
// size, mgr and (if set) kms.
func (r *runner) newVolume(ctx context.Context, idx, k int) (*vol, error) {
	path := filepath.Join(r.opts.Dir, "volumes", fmt.Sprintf("vol-%06d.img", idx))
	// The volume's randomness (UUID, passphrase, master key) comes from the seed and its
	// index, so runs repeat. Simulated volumes are test fixtures, never for real data.
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], r.sc.Seed)
	binary.LittleEndian.PutUint64(seed[8:], uint64(idx))
	mgr, host := r.mgr, (*simHost)(nil)
	if r.hs != nil {
		host = r.hs.hostOf(idx, r.sc.Keys)
		mgr = host.mgr
		path = filepath.Join(host.dir, "volumes", fmt.Sprintf("vol-%06d.img", idx))
	}
	info, err := mgr.Create(ctx, path, volume.CreateOptions{KeyID: r.keys[k].id, Size: r.size, KeyslotsSize: 512 << 10, Rand: rand.NewChaCha8(seed)})
	if err != nil {
		return nil, err
	}
	v := &vol{idx: idx, path: info.Path, crn: info.CRN, key: k, host: host}
	if r.kms != nil {
		r.kms.name(info.CRN, idx)
	}
	blocks := r.size / extentSize
	v.extents = [2]int64{0, (1 + int64(idx*7919)%max(blocks-1, 1)) * extentSize}
	return v, nil
}

// writeData opens v, writes generation gen of its second extent (and, for gen 0, its
// first), and closes it.
func (r *runner) writeData(ctx context.Context, v *vol, gen int) error {
	h, err := r.mgrOf(v).Open(ctx, v.path)
	if err != nil {
		return err
	}
	defer h.Close()
	a := extentData(r.sc.Seed, v.idx, 0, 0)
	b := extentData(r.sc.Seed, v.idx, gen, 1)
	if gen == 0 {
		if _, err := h.WriteAt(a, v.extents[0]); err != nil {
			return err
		}
	}
	if _, err := h.WriteAt(b, v.extents[1]); err != nil {
		return err
	}
	if err := h.Sync(); err != nil {
		return err
	}
	v.sum = sumOf(a, b)
	v.written = true
	return nil
}

// verify reads v's extents through an open volume and compares them with what was written.
func verify(h *volume.Volume, v *vol) error {
	a := make([]byte, extentSize)
	b := make([]byte, extentSize)
	if _, err := h.ReadAt(a, v.extents[0]); err != nil {
		return err
	}
	if _, err := h.ReadAt(b, v.extents[1]); err != nil {
		return err
	}
	if sumOf(a, b) != v.sum {
		return fmt.Errorf("data of %s differs from what was written", v.path)
	}
	return nil
}

func (r *runner) addVol(v *vol) {
	r.vols[v.crn] = v
	r.order = append(r.order, v.crn)
}

func (r *runner) removeVol(crn string) {
	delete(r.vols, crn)
	r.order = slices.DeleteFunc(r.order, func(c string) bool { return c == crn })
}

// pick returns a random live volume (not being deleted) that ok accepts, or nil.
func (r *runner) pick(ok func(*vol) bool) *vol {
	for range 8 {
		if len(r.order) == 0 {
			return nil
		}
		v := r.vols[r.order[r.rng.IntN(len(r.order))]]
		if !v.deleting && ok(v) {
			return v
		}
	}
	return nil
}

func detached(v *vol) bool { return v.open == nil }

// push schedules an event; none is run at or after the end of the run.
func (r *runner) push(at time.Time, kind, key int) {
	r.pushEvent(event{at: at, kind: kind, key: key})
}

func (r *runner) pushEvent(e event) {
	if !e.at.Before(r.sc.end()) && !pastEnd(e.kind) {
		return
	}
	r.seq++
	e.seq = r.seq
	heap.Push(&r.q, e)
}

// poisson schedules a Poisson process of rate perMonth (per 30 days) over the run.
func (r *runner) poisson(perMonth float64, kind, key int) {
	if perMonth <= 0 {
		return
	}
	mean := float64(30*24*time.Hour) / perMonth
	t := r.sc.Start
	for {
		t = t.Add(time.Duration(r.rng.ExpFloat64() * mean))
		if !t.Before(r.sc.end()) {
			return
		}
		r.push(t, kind, key)
	}
}

// plan schedules the run's events.
func (r *runner) plan() {
	if r.sc.AttachesPerMonth > 0 {
		r.poisson(float64(r.sc.AttachesPerMonth), evAttach, -1)
	}
	r.poisson(float64(r.sc.CreatesPerMonth), evCreate, -1)
	r.poisson(float64(r.sc.DeletesPerMonth), evDelete, -1)
	for k := range r.keys {
		r.poisson(r.sc.ManualRotationsPerMonth, evManualRotate, k)
	}
	if r.hs != nil {
		r.planHosts() // the agents reconcile instead of the sync job
	} else {
		for t := r.sc.Start.Add(time.Duration(r.sc.SyncEvery)); t.Before(r.sc.end()); t = t.Add(time.Duration(r.sc.SyncEvery)) {
			r.push(t, evSync, -1)
		}
	}
	for t := r.sc.Start; t.Before(r.sc.end()); t = t.Add(time.Duration(r.sc.SampleEvery)) {
		r.push(t, evSample, -1)
	}
	for range r.sc.Faults.CorruptData {
		r.push(r.sc.Start.Add(time.Duration(r.rng.Int64N(int64(r.sc.end().Sub(r.sc.Start))))), evCorrupt, -1)
	}
}

// corrupt overwrites a random volume's first extent in the image file, bypassing crkvol.
func (r *runner) corrupt() error {
	v := r.pick(func(v *vol) bool { return v.written && !v.corrupted && v.open == nil })
	if v == nil {
		return nil
	}
	v.corrupted = true
	info, err := volume.Describe(v.path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(v.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	junk := extentData(r.sc.Seed^0xbad, v.idx, r.rng.IntN(1<<20), 2)[:512]
	if _, err := f.WriteAt(junk, info.DataOffset+v.extents[0]); err != nil {
		return err
	}
	r.rep.Faults.Corruptions++
	return nil
}

// loop runs events and due policy rotations in time order until the end of the run.
func (r *runner) loop(ctx context.Context) error {
	total := r.sc.end().Sub(r.sc.Start)
	lastProgress := time.Time{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var nextEv time.Time
		if len(r.q) > 0 {
			nextEv = r.q[0].at
		} else {
			nextEv = r.sc.end()
		}
		due, ok, err := r.svc.NextDue(ctx)
		if err != nil {
			return err
		}
		if ok && !due.After(nextEv) && due.Before(r.sc.end()) {
			r.clock.Set(due)
			res, err := r.svc.RunDue(ctx)
			if err != nil {
				return err
			}
			if len(res.Failed) > 0 {
				for id, ferr := range res.Failed {
					return fmt.Errorf("sim: policy rotation of key %s failed: %w", id, ferr)
				}
			}
			for _, id := range res.Rotated {
				r.rotated(r.keyIndex(id), "policy")
			}
			if err := r.pullFeed(ctx); err != nil {
				return err
			}
			r.drain("policy")
			r.afterPasses(ctx)
			continue
		}
		if len(r.q) == 0 {
			break
		}
		e := heap.Pop(&r.q).(event)
		r.clock.Set(e.at)
		if err := r.handle(ctx, e); err != nil {
			return err
		}
		r.scheduleRestart()
		if e.at.Sub(lastProgress) >= 12*time.Hour && e.at.Before(r.sc.end()) {
			lastProgress = e.at
			r.progress(Progress{Phase: PhaseSimulate, Done: int64(e.at.Sub(r.sc.Start) / time.Second), Total: int64(total / time.Second), Volumes: len(r.vols)})
		}
	}
	if r.clock.Now().Before(r.sc.end()) { // with hosts, the responses to the last events may run past it
		r.clock.Set(r.sc.end())
	}
	r.progress(Progress{Phase: PhaseSimulate, Done: int64(total / time.Second), Total: int64(total / time.Second), Volumes: len(r.vols)})
	return nil
}

func (r *runner) keyIndex(id string) int {
	for i, k := range r.keys {
		if k.id == id {
			return i
		}
	}
	return -1
}

// scheduleRestart plans the restart of a crashed volume service. At a crash every open
// attachment is lost with the process (its data was flushed when written).
func (r *runner) scheduleRestart() {
	if !r.kms.down.Load() || r.restartPending {
		return
	}
	r.restartPending = true
	for _, crn := range r.order {
		if v := r.vols[crn]; v.open != nil {
			v.open.Close()
			v.open = nil
			r.rep.Attaches.Dropped++
		}
	}
	r.pushEvent(event{at: r.clock.Now().Add(restartDelay), kind: evRestart, key: -1})
}

// afterPasses runs after rewrap passes: it schedules a restart if one crashed, and samples
// the fleet so that short-lived staleness shows in the report.
func (r *runner) afterPasses(ctx context.Context) {
	r.scheduleRestart()
	if err := r.sample(ctx); err != nil {
		r.log.Warn("sample failed", "err", err)
	}
}

// rotated records a rotation of key k (its hooks have run); drain then records its passes.
func (r *runner) rotated(k int, trigger string) {
	sk := r.keys[k]
	sk.lastRotate = r.clock.Now()
	if vs, err := r.svc.ListVersions(context.Background(), sk.id); err == nil && len(vs) > 0 {
		sk.versions = sk.versions[:0]
		for i := len(vs) - 1; i >= 0; i-- { // newest first -> oldest first
			sk.versions = append(sk.versions, vs[i].ID)
		}
	}
	if r.hs != nil {
		r.trackRotation(k, trigger)
	}
	r.rep.Rotations++
	r.rep.Keys[k].Rotations++
	if trigger == "manual" {
		r.rep.ManualRotations++
	} else {
		r.rep.PolicyRotations++
	}
}

// drain records the passes the manager reported since the last drain.
func (r *runner) drain(trigger string) {
	r.mu.Lock()
	reports, passes := r.reports, r.passes
	r.reports, r.passes = nil, nil
	r.mu.Unlock()
	for i, rep := range reports {
		var p *pass
		if i < len(passes) {
			p = passes[i]
		}
		r.record(rep, p, trigger)
	}
}

// record adds one rewrap pass to the report.
func (r *runner) record(rep *volume.Report, p *pass, trigger string) {
	k := r.keyIndex(rep.KeyID)
	pr := PassReport{
		At: r.clock.Now(), Trigger: trigger, Volumes: rep.Volumes, Rewrapped: rep.Rewrapped,
		AlreadyCurrent: rep.AlreadyCurrent, Retries: rep.Retries,
		BytesWritten: rep.BytesWritten, WallMs: ms(rep.Elapsed),
	}
	if err := rep.Err(); err != nil {
		pr.FirstFailure = firstFailure(rep)
	}
	if k >= 0 {
		pr.Key = r.keys[k].name
		pr.Generation = slices.Index(r.keys[k].versions, rep.NewVersion) + 1
	}
	// Those cut off by the crash are aborted: the restart picks them up.
	pr.Failed, pr.Aborted, pr.ImagesFailed, pr.ImagesAborted = r.splitFailed(rep)
	pr.Images, pr.ImagesRewrapped, pr.ImagesAlreadyCurrent = rep.Images, rep.ImagesRewrapped, rep.ImagesAlreadyCurrent
	lat := make([]time.Duration, 0, len(rep.VolumeLatency))
	var virtual time.Duration
	for crn, d := range rep.VolumeLatency {
		if _, failed := rep.Failed[crn]; failed || r.isImage(crn) {
			continue // percentiles describe the volumes rewrapped
		}
		if p != nil {
			p.mu.Lock()
			d += p.virtual[crn]
			virtual += p.virtual[crn]
			p.mu.Unlock()
		}
		lat = append(lat, d)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		pr.P50Ms = ms(lat[len(lat)/2])
		pr.P99Ms = ms(lat[min(len(lat)-1, int(math.Ceil(0.99*float64(len(lat))))-1)])
	}
	// Virtual latency spreads over the workers that ran the pass in parallel.
	pr.FleetMs = ms(rep.Elapsed + virtual/time.Duration(max(1, min(r.sc.Workers, len(lat)))))
	if p != nil {
		p.mu.Lock()
		pr.Crashed = p.crashed
		p.mu.Unlock()
	}
	r.rep.addPass(pr)
}

// handle runs one event.
func (r *runner) handle(ctx context.Context, e event) error {
	switch e.kind {
	case evAttach:
		r.attach(ctx)
	case evCreate:
		if r.kms.down.Load() {
			r.rep.Fleet.SkippedWhileDown++
			return nil
		}
		idx := r.next
		k := r.assignments(idx, 1)[0]
		r.next++
		v, err := r.createVolume(ctx, idx, k)
		if err != nil {
			r.rep.Fleet.CreateFailures++
			r.log.Info("create failed", "err", err)
			// A failed create leaves no registration; a half-made image is removed.
			os.Remove(filepath.Join(r.opts.Dir, "volumes", fmt.Sprintf("vol-%06d.img", idx)))
		} else {
			r.addVol(v)
			r.rep.Fleet.Created++
		}
		r.drain("lazy")
	case evDelete:
		if r.kms.down.Load() {
			r.rep.Fleet.SkippedWhileDown++
			return nil
		}
		v := r.pick(func(v *vol) bool { return v.open == nil && !v.corrupted })
		if v == nil {
			return nil
		}
		r.deleteVol(ctx, v)
	case evManualRotate:
		sk := r.keys[e.key]
		if r.hs != nil && r.hs.disabled[e.key] {
			r.push(r.clock.Now().Add(time.Duration(r.sc.DisableLength)), evManualRotate, e.key) // after its enable
			return nil
		}
		if next := sk.lastRotate.Add(crk.RotationInterval); !sk.lastRotate.IsZero() && r.clock.Now().Before(next) {
			r.push(next, evManualRotate, e.key) // the hourly limit: come back when allowed
			return nil
		}
		if _, err := r.svc.RotateKey(ctx, sk.id, nil); err != nil {
			if errors.Is(err, crk.ErrRotationTooSoon) {
				r.push(r.clock.Now().Add(crk.RotationInterval), evManualRotate, e.key)
				return nil
			}
			return fmt.Errorf("sim: manual rotation of %s: %w", sk.name, err)
		}
		r.rotated(e.key, "manual")
		r.drain("manual")
		r.afterPasses(ctx)
		return r.pullFeed(ctx)
	case evSync:
		if r.kms.down.Load() {
			return nil // the job runs in the volume service, which is down
		}
		if r.syncStale(ctx, "sync") {
			r.afterPasses(ctx)
		}
	case evRestart:
		r.restartPending = false
		r.kms.down.Store(false)
		r.rep.Restarts++
		r.syncStale(ctx, "restart")
		r.afterPasses(ctx)
	case evDetach:
		r.detach(e.crn)
	case evSample:
		return r.sample(ctx)
	case evCorrupt:
		return r.corrupt()
	default:
		return r.handleHosts(ctx, e)
	}
	return nil
}

// attach opens a random detached volume through the key service, checks its data, sometimes
// writes new data, and keeps it open (attached) until its detach event: rotations meanwhile
// rewrap the header of a volume in use.
func (r *runner) attach(ctx context.Context) {
	if r.kms.down.Load() {
		r.rep.Attaches.WhileDown++
		return
	}
	v := r.pick(detached)
	if v == nil {
		return
	}
	r.rep.Attaches.Total++
	if r.hs != nil && !r.usable(v) {
		r.hs.rep.AttachesRefused++ // the attach process refuses a volume of a key out of use
		return
	}
	if !v.written { // its first write never got through: this attach writes it
		err := r.writeData(ctx, v, 0)
		r.drain("lazy")
		if err != nil {
			r.attachFailed(v, err)
		}
		return
	}
	h, err := r.mgrOf(v).Open(ctx, v.path)
	r.drain("lazy")
	if err != nil {
		r.attachFailed(v, err)
		return
	}
	if r.hs != nil {
		r.openedAt(v) // a lazy rewrap on open brings it to the latest version
	}
	if err := verify(h, v); err != nil {
		r.rep.Attaches.DataMismatches++
		r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, err.Error())
		h.Close()
		return
	}
	if r.rng.IntN(2) == 0 {
		gen := 1 + r.rng.IntN(1<<20)
		b := extentData(r.sc.Seed, v.idx, gen, 1)
		if _, err := h.WriteAt(b, v.extents[1]); err == nil && h.Sync() == nil {
			v.sum = sumOf(extentData(r.sc.Seed, v.idx, 0, 0), b)
			r.rep.Attaches.Writes++
		} else {
			r.rep.Attaches.OtherFailures++
			r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, fmt.Sprint("write: ", err))
		}
	}
	if r.hs != nil {
		// With hosts, the volumes kept attached are the pinned ones, which their attach
		// processes stop at a disable; other attaches are short.
		if err := h.Close(); err != nil {
			r.rep.Attaches.OtherFailures++
			r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, fmt.Sprint("detach: ", err))
		}
		r.rep.Attaches.Detached++
		return
	}
	v.open = h
	r.pushEvent(event{at: r.clock.Now().Add(time.Duration(r.rng.ExpFloat64() * float64(meanAttach))), kind: evDetach, crn: v.crn})
}

// attachFailed counts an attach the key service refused (an injected fault: expected) or
// one that failed otherwise (a defect).
func (r *runner) attachFailed(v *vol, err error) {
	if errors.Is(err, ErrKMSUnavailable) || errors.Is(err, ErrInjectedFailure) || errors.Is(err, ErrServiceDown) {
		r.rep.Attaches.UnwrapFailures++
		return
	}
	r.rep.Attaches.OtherFailures++
	r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, fmt.Sprintf("%s: %v", filepath.Base(v.path), err))
}

// detach checks an attached volume's data once more and closes it.
func (r *runner) detach(crn string) {
	v := r.vols[crn]
	if v == nil || v.open == nil {
		return // lost in a crash, or already closed
	}
	if err := verify(v.open, v); err != nil {
		r.rep.Attaches.DataMismatches++
		r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, err.Error())
	}
	if err := v.open.Close(); err != nil {
		r.rep.Attaches.OtherFailures++
		r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, fmt.Sprint("detach: ", err))
	}
	v.open = nil
	r.rep.Attaches.Detached++
}

func (r *runner) deleteVol(ctx context.Context, v *vol) {
	err := r.mgr.Delete(ctx, v.path, volume.DeleteOptions{CryptoErase: true, RemoveImage: true})
	if err == nil {
		r.removeVol(v.crn)
		r.rep.Fleet.Deleted++
		return
	}
	if _, serr := os.Stat(v.path); errors.Is(serr, os.ErrNotExist) {
		r.removeVol(v.crn)
		r.rep.Fleet.Deleted++
		return
	}
	// The image may be erased already: the volume is going, whatever happens next; the
	// reconciliation retries the delete.
	v.deleting = true
	r.rep.Fleet.DeleteRetries++
}

// syncStale runs the rewrap half of `key sync` (a pass that faults and crashes can hit) on
// every key with registrations not on its latest version, and retries unfinished deletes. It
// reports whether any pass ran.
func (r *runner) syncStale(ctx context.Context, trigger string) bool {
	ran := false
	for _, crn := range slices.Clone(r.order) {
		if v := r.vols[crn]; v != nil && v.deleting {
			r.deleteVol(ctx, v)
		}
	}
	for _, sk := range r.keys {
		if r.kms.down.Load() {
			break // crashed during an earlier key's pass
		}
		stale, err := r.staleCount(ctx, sk.id)
		if err != nil || stale == 0 {
			continue
		}
		ran = true
		pctx, p := newPass(ctx)
		rep, err := r.mgr.Sync(pctx, sk.id)
		p.cancel(nil)
		r.mu.Lock()
		reports := r.reports
		r.reports = nil
		r.mu.Unlock()
		if err != nil || rep == nil {
			r.rep.SyncFailures++
			continue
		}
		for _, rp := range reports {
			r.record(rp, p, trigger)
		}
	}
	return ran
}

// staleCount counts a key's registrations (of volumes and images) not on its latest version
// (asking the service directly: this is the reconciliation job's own view, not a faulty
// client's).
func (r *runner) staleCount(ctx context.Context, keyID string) (int, error) {
	vols, imgs, err := r.staleSplit(ctx, keyID)
	return vols + imgs, err
}

// staleSplit counts a key's volumes and images whose registrations are not on its latest
// version.
func (r *runner) staleSplit(ctx context.Context, keyID string) (vols, imgs int, err error) {
	regs, err := r.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: keyID})
	if err != nil {
		return 0, 0, err
	}
	k, err := r.svc.GetKey(ctx, keyID)
	if err != nil {
		return 0, 0, err
	}
	for _, reg := range regs {
		switch {
		case reg.KeyVersion.ID == k.KeyVersion.ID:
		case r.isImage(reg.ResourceCRN):
			imgs++
		default:
			vols++
		}
	}
	return vols, imgs, nil
}

// countStaleAtEnd records the volumes and images left on older versions when the run ended.
func (r *runner) countStaleAtEnd(ctx context.Context) error {
	for _, sk := range r.keys {
		vols, imgs, err := r.staleSplit(ctx, sk.id)
		if err != nil {
			return err
		}
		r.rep.StaleAtEnd += vols
		if r.rep.Images != nil {
			r.rep.Images.StaleAtEnd += imgs
		}
	}
	return nil
}

// sample records the fleet's registrations by key version generation.
func (r *runner) sample(ctx context.Context) error {
	s := Sample{At: r.clock.Now(), ByGeneration: map[int]int{}}
	for i, sk := range r.keys {
		regs, err := r.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: sk.id})
		if err != nil {
			return err
		}
		latest := sk.versions[len(sk.versions)-1]
		outstanding := map[string]bool{}
		for _, reg := range regs {
			// An image's registration holds its key's version as a volume's does; the
			// counts of volumes leave it out.
			outstanding[reg.KeyVersion.ID] = true
			if r.isImage(reg.ResourceCRN) {
				s.Images++
				if reg.KeyVersion.ID != latest {
					s.ImagesOnOldVersions++
				}
				continue
			}
			g := slices.Index(sk.versions, reg.KeyVersion.ID) + 1
			s.ByGeneration[g]++
			if reg.KeyVersion.ID != latest {
				s.OnOldVersions++
			}
			s.Volumes++
		}
		r.rep.Keys[i].MaxVersionsOutstanding = max(r.rep.Keys[i].MaxVersionsOutstanding, len(outstanding))
	}
	r.rep.Samples = append(r.rep.Samples, s)
	r.rep.MaxOnOldVersions = max(r.rep.MaxOnOldVersions, s.OnOldVersions)
	if ir := r.rep.Images; ir != nil {
		ir.MaxOnOldVersions = max(ir.MaxOnOldVersions, s.ImagesOnOldVersions)
	}
	return nil
}

// finish reconciles without faults (as an operator would after the incident window), then
// audits every volume.
func (r *runner) finish(ctx context.Context) error {
	if r.hs != nil {
		return r.finishHosts(ctx)
	}
	corruptions := r.rep.Faults.Corruptions
	r.rep.Faults = r.kms.snapshot()
	r.rep.Faults.Corruptions = corruptions
	r.rep.FaultsInjected = r.rep.Faults.Total()
	r.kms.setEnabled(false)
	r.kms.down.Store(false) // the operator's reconciliation runs on a live service
	for _, crn := range r.order {
		r.detach(crn)
	}
	if err := r.countStaleAtEnd(ctx); err != nil {
		return err
	}
	for range 3 {
		r.syncStale(ctx, "final")
		stale := 0
		for _, sk := range r.keys {
			n, err := r.staleCount(ctx, sk.id)
			if err != nil {
				return err
			}
			stale += n
		}
		if stale == 0 {
			break
		}
	}
	if err := r.sample(ctx); err != nil {
		return err
	}
	if r.opts.beforeAudit != nil {
		r.opts.beforeAudit(r)
	}
	r.audit(ctx)
	r.summarizeKeys(ctx)
	return nil
}

// summarizeKeys fills the report's per-key lines at the end of a run: versions made, and the
// versions and volumes its registrations still name.
func (r *runner) summarizeKeys(ctx context.Context) {
	for i, sk := range r.keys {
		r.rep.Keys[i].Versions = len(sk.versions)
		regs, _ := r.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: sk.id})
		outstanding := map[string]bool{}
		for _, reg := range regs {
			outstanding[reg.KeyVersion.ID] = true
		}
		r.rep.Keys[i].FinalVersionsOutstanding = len(outstanding)
		r.rep.Keys[i].Volumes, r.rep.Keys[i].Images = 0, 0
		for _, reg := range regs {
			if r.isImage(reg.ResourceCRN) {
				r.rep.Keys[i].Images++
			} else {
				r.rep.Keys[i].Volumes++
			}
		}
	}
}

// audit opens every volume through the key service, checks its data, its token's version
// against its key's latest, and its registration against its token.
func (r *runner) audit(ctx context.Context) {
	a := &r.rep.Audit
	latest := map[string]string{}
	regVersion := map[string]string{}
	for _, sk := range r.keys {
		latest[sk.id] = sk.versions[len(sk.versions)-1]
		if k, err := r.svc.GetKey(ctx, sk.id); err == nil {
			latest[sk.id] = k.KeyVersion.ID
		}
		regs, _ := r.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: sk.id})
		for _, reg := range regs {
			regVersion[reg.ResourceCRN] = reg.KeyVersion.ID
		}
	}
	var mu sync.Mutex
	fail := func(v *vol, err error) {
		mu.Lock()
		a.Failed++
		a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s: %v", filepath.Base(v.path), err))
		mu.Unlock()
	}
	// check audits one volume.
	check := func(v *vol) {
		info, err := volume.Describe(v.path)
		if err != nil {
			fail(v, err)
			return
		}
		switch {
		case info.KeyVersion != latest[info.KeyID]:
			fail(v, fmt.Errorf("token on version %s, key's latest is %s", info.KeyVersion, latest[info.KeyID]))
			return
		case regVersion[info.CRN] != info.KeyVersion:
			fail(v, fmt.Errorf("registration on version %q, token on %s", regVersion[info.CRN], info.KeyVersion))
			return
		}
		if !v.written { // its first write never got through: write it now
			if err := r.writeData(ctx, v, 0); err != nil {
				fail(v, fmt.Errorf("does not attach: %w", err))
				return
			}
		}
		h, err := r.mgrOf(v).Open(ctx, v.path)
		if err != nil {
			fail(v, fmt.Errorf("does not attach: %w", err))
			return
		}
		err = verify(h, v)
		h.Close()
		if err != nil {
			fail(v, err)
			return
		}
		mu.Lock()
		a.Attached++
		a.DataVerified++
		mu.Unlock()
	}
	var audited int64 // guarded by progressMu
	total := int64(0)
	for _, crn := range r.order {
		if !r.vols[crn].deleting {
			total++
		}
	}
	fleet := len(r.vols)
	r.progress(Progress{Phase: PhaseAudit, Total: total, Volumes: fleet})
	jobs := make(chan *vol)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := range jobs {
				check(v)
				r.progressStep(PhaseAudit, &audited, total, fleet)
			}
		}()
	}
	for _, crn := range r.order {
		v := r.vols[crn]
		if v.deleting {
			fail(v, errors.New("delete never completed"))
			continue
		}
		a.Volumes++
		jobs <- v
	}
	close(jobs)
	wg.Wait()
	// The volume registry (CRN -> image) must list exactly the live volumes.
	if entries, err := r.registryEntries(); err != nil {
		a.Failed++
		a.Failures = appendCapped(a.Failures, fmt.Sprintf("volume registry: %v", err))
	} else {
		listed := map[string]bool{}
		for _, e := range entries {
			listed[e.CRN] = true
			if _, ok := r.vols[e.CRN]; !ok {
				a.Failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("volume registry lists %s, which is not a live volume", e.Path))
			}
		}
		for crn, v := range r.vols {
			if !listed[crn] {
				a.Failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s is missing from the volume registry", filepath.Base(v.path)))
			}
		}
	}
	// Registrations without a live volume (or image) would pin keys forever.
	for crn := range regVersion {
		if _, ok := r.vols[crn]; !ok && !r.isImage(crn) {
			a.Failed++
			a.StrayRegistrations++
			a.Failures = appendCapped(a.Failures, fmt.Sprintf("registration %s has no volume", crn))
		}
	}
	a.Passed = a.Failed == 0 && a.Volumes == a.DataVerified
	// Last: the volumes it creates from the images come and go after the checks above.
	r.auditImages(ctx, latest, regVersion)
}

// firstFailure is the error of the pass's first failed volume (by CRN), for the report.
func firstFailure(rep *volume.Report) string {
	crns := make([]string, 0, len(rep.Failed))
	for c := range rep.Failed {
		crns = append(crns, c)
	}
	if len(crns) == 0 {
		return ""
	}
	slices.Sort(crns)
	return rep.Failed[crns[0]].Error()
}

func appendCapped(list []string, s string) []string {
	if len(list) >= 20 {
		return list
	}
	return append(list, s)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// lockedReader makes a random source safe for concurrent use.
type lockedReader struct {
	mu sync.Mutex
	r  *rand.ChaCha8
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// hash01 maps its inputs to a uniform number in [0, 1).
func hash01(seed uint64, tag string, n uint64) float64 {
	h := fnv.New64a()
	h.Write([]byte(tag))
	x := seed ^ h.Sum64() ^ (n * 0x9e3779b97f4a7c15)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}
