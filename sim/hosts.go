package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"crkvol/agent"
	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// A run on hosts (Scenario.Hosts) spreads the fleet over simulated storage hosts, each with
// its own volume registry and volume.Manager over the one key service, none of them
// subscribed to the service's rotation hook: rotations, disables and enables reach the
// volumes only through the lifecycle feed, which each host's agent.Agent follows (the
// simulator hands it the pages of the real feed in virtual time, through Apply and
// Reconcile), and which each attach process follows itself to stop serving when its key is
// disabled, whether the agent runs or not. Delivery delay, lost answers and agent downtime
// delay what the feed says, never drop it.

// hostsRun is the state of a run on hosts.
type hostsRun struct {
	hosts []*simHost
	// feed is the key service's lifecycle feed; events are its events so far, in order,
	// index their positions by cursor, and cursor is where the next read starts.
	feed   volume.KeyFeed
	events []volume.KeyEvent
	index  map[string]int
	cursor string
	// disabled is, per key, whether the key is disabled now.
	disabled []bool
	// rots are the rotations not yet converged, per key; allRots every rotation.
	rots    map[int][]*rotTrack
	allRots []*rotTrack
	// openDis is the disable of each key in force; allDis every disable.
	openDis map[int]*disableTrack
	allDis  []*disableTrack
	rep     *HostsReport
}

// rotTrack follows one rotation to every volume of its key.
type rotTrack struct {
	key, gen int
	at       time.Time
	trigger  string
	volumes  int
	pending  map[string]bool
	lat      []time.Duration
}

// disableTrack follows one disable to the volumes of its key attached at the time.
type disableTrack struct {
	key    int
	at     time.Time
	down   int // agents down at the disable
	vols   []*vol
	locked map[*vol]time.Time
	late   map[*vol]int
	lateIO int
}

// simHost is one storage host: it implements agent.Host for its agent.
type simHost struct {
	r     *runner
	idx   int
	dir   string
	reg   *volume.Registry
	mgr   *volume.Manager
	agent *agent.Agent
	keys  []string            // the keys of its volumes and images
	vols  map[string][]string // key id -> CRNs of its volumes
	imgs  map[string][]string // key id -> CRNs of its images
	// cursor is the saved feed cursor; handled the number of feed events handled.
	cursor  string
	handled int
	down    bool
	locked  map[string]bool
	trigger string // the trigger the next rewrap passes are recorded under
}

// pastEnd reports whether events of kind may run after the end of the run: the responses
// to events made before it.
func pastEnd(kind int) bool {
	switch kind {
	case evDeliver, evAgentUp, evEnable, evAttachLock, evAttachUnlock, evIO:
		return true
	}
	return false
}

// ioStep is the time between the I/O of an attached volume after its key's disable.
const ioStep = 250 * time.Millisecond

// openHosts opens every host's registry and manager (unsubscribed) and makes its agent.
func (r *runner) openHosts() error {
	// The feed, and the acknowledgements of the agents, go to the key service without
	// faults: the faults are drawn for the volumes' calls, in the same order whatever the
	// agents acknowledge.
	local := kms.NewLocal(r.svc)
	hs := &hostsRun{feed: local, index: map[string]int{}, disabled: make([]bool, r.sc.Keys),
		rots: map[int][]*rotTrack{}, openDis: map[int]*disableTrack{},
		rep: &HostsReport{Hosts: r.sc.Hosts, LockoutBoundMs: ms(time.Duration(r.sc.LockoutBound))}}
	r.hs = hs
	r.rep.Hosts = hs.rep
	for i := range r.sc.Hosts {
		h := &simHost{r: r, idx: i, dir: filepath.Join(r.opts.Dir, fmt.Sprintf("host-%02d", i)), vols: map[string][]string{}, imgs: map[string][]string{}, locked: map[string]bool{}}
		if err := os.MkdirAll(filepath.Join(h.dir, "volumes"), 0o700); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		reg, err := volume.OpenRegistry(filepath.Join(h.dir, "volumes.db"))
		if err != nil {
			return err
		}
		h.reg = reg
		hs.hosts = append(hs.hosts, h) // closed by closeHosts from here on
		h.mgr = volume.NewManager(r.kms, reg, volume.Options{
			Workers: r.sc.Workers,
			Backoff: func(n int) time.Duration { return time.Duration(50<<min(n-1, 5)) * time.Millisecond },
			Sleep:   func(ctx context.Context, _ time.Duration) error { return ctx.Err() }, // virtual backoff
			Now:     r.clock.Now,
			Logger:  r.log,
		})
		// Not subscribed to the in-process rotation hook: the agent is the only path.
		h.mgr.Close()
		h.agent, err = agent.New(agent.Options{Feed: hs.feed, Host: h, Now: r.clock.Now, Logger: r.log,
			Acker: local, HostName: hostName(i)})
		if err != nil {
			return err
		}
	}
	return nil
}

// hostName is the name host i acknowledges under, the name of its directory.
func hostName(i int) string { return fmt.Sprintf("host-%02d", i) }

// closeHosts closes the hosts' registries.
func (r *runner) closeHosts() {
	for _, h := range r.hs.hosts {
		h.reg.Close()
	}
}

// hostOf is the host of volume idx: consecutive runs of Keys volumes go to the same host,
// so that every host has volumes of every key with the round-robin mapping.
func (hs *hostsRun) hostOf(idx, keys int) *simHost {
	return hs.hosts[(idx/max(keys, 1))%len(hs.hosts)]
}

// mgrOf is the manager of v's host.
func (r *runner) mgrOf(v *vol) *volume.Manager {
	if v.host != nil {
		return v.host.mgr
	}
	return r.mgr
}

// registryEntries lists the volume registry, or every host's.
func (r *runner) registryEntries() ([]volume.Entry, error) {
	if r.hs == nil {
		return r.reg.List()
	}
	var all []volume.Entry
	for _, h := range r.hs.hosts {
		e, err := h.reg.List()
		if err != nil {
			return nil, fmt.Errorf("host %d: %w", h.idx, err)
		}
		all = append(all, e...)
	}
	return all, nil
}

// usable reports whether v's key is usable now.
func (r *runner) usable(v *vol) bool { return !r.hs.disabled[v.key] }

// planHosts pins each host's attached volumes, starts following the feed from its head,
// and schedules the agents' reconciliations, the disables and the agent downtimes.
func (r *runner) planHosts() {
	hs := r.hs
	ctx := context.Background()
	for _, crn := range r.order {
		v := r.vols[crn]
		id := r.keys[v.key].id
		v.host.vols[id] = append(v.host.vols[id], crn)
	}
	for _, h := range hs.hosts {
		for id := range h.vols {
			h.keys = append(h.keys, id)
		}
		for id := range h.imgs {
			if _, ok := h.vols[id]; !ok {
				h.keys = append(h.keys, id)
			}
		}
		slices.Sort(h.keys)
		// Attached volumes on different keys across the hosts.
		for j := range r.sc.AttachedPerHost {
			want := (h.idx*r.sc.AttachedPerHost + j) % r.sc.Keys
			var pick *vol
			for _, crn := range r.order {
				v := r.vols[crn]
				if v.host != h || v.pinned || !v.written {
					continue
				}
				if pick == nil || (v.key == want && pick.key != want) {
					pick = v
				}
			}
			if pick == nil {
				break
			}
			r.rep.Attaches.Total++
			vh, err := h.mgr.Open(ctx, pick.path)
			if err != nil {
				r.log.Warn("attaching a pinned volume failed", "volume", pick.path, "err", err)
				r.attachFailed(pick, err)
				continue
			}
			pick.pinned, pick.open = true, vh
		}
	}
	if page, err := hs.feed.KeyEvents(ctx, "", 0); err == nil {
		hs.cursor = page.Cursor
	}
	for _, h := range hs.hosts {
		h.cursor = hs.cursor
		// Reconciliations on each agent's timer, the hosts' spread over the period.
		every := time.Duration(r.sc.SyncEvery)
		first := r.sc.Start.Add(every * time.Duration(h.idx+1) / time.Duration(len(hs.hosts)))
		for t := first; t.Before(r.sc.end()); t = t.Add(every) {
			r.pushEvent(event{at: t, kind: evReconcile, host: h.idx, key: -1})
		}
	}
	if r.sc.DisablesPerMonth > 0 {
		r.poisson(r.sc.DisablesPerMonth, evDisable, -1)
	}
	total := r.sc.end().Sub(r.sc.Start)
	for range r.sc.Faults.AgentDowntimes {
		at := r.sc.Start.Add(time.Duration(r.rng.Int64N(int64(total))))
		r.pushEvent(event{at: at, kind: evAgentDown, host: r.rng.IntN(len(hs.hosts)), key: -1})
	}
}

// pullFeed reads the feed's new events and schedules their delivery to every agent and to
// the attach processes of their keys' attached volumes.
func (r *runner) pullFeed(ctx context.Context) error {
	hs := r.hs
	if hs == nil {
		return nil
	}
	for {
		page, err := hs.feed.KeyEvents(ctx, hs.cursor, 0)
		if err != nil {
			return fmt.Errorf("sim: reading the lifecycle feed: %w", err)
		}
		if len(page.Events) == 0 {
			return nil
		}
		for _, ev := range page.Events {
			n := len(hs.events)
			hs.events = append(hs.events, ev)
			hs.index[ev.Cursor] = n
			r.deliver(n, ev)
		}
		hs.cursor = page.Cursor
	}
}

// deliver schedules the delivery of feed event n.
func (r *runner) deliver(n int, ev volume.KeyEvent) {
	hs := r.hs
	for _, h := range hs.hosts {
		d := r.deliveryDelay(fmt.Sprintf("agent %d", h.idx), n, time.Duration(r.sc.AgentPoll))
		r.pushEvent(event{at: ev.Time.Add(d), kind: evDeliver, host: h.idx, n: n, key: -1})
	}
	k := r.keyIndex(ev.KeyID)
	if k < 0 {
		return
	}
	poll := time.Duration(r.sc.AttachPoll)
	// The attach process of each attached volume of the key follows the feed itself: it
	// learns of the event at its next poll after the answer arrives.
	attachAt := func(v *vol) time.Time {
		tag := "attach " + v.crn
		phase := time.Duration(hash01(r.sc.Seed, "poll phase "+tag, uint64(n)) * float64(poll))
		return ev.Time.Add(r.deliveryDelay(tag, n, poll) + phase)
	}
	switch {
	case ev.Locks():
		d := &disableTrack{key: k, at: ev.Time, locked: map[*vol]time.Time{}, late: map[*vol]int{}}
		for _, h := range hs.hosts {
			if h.down {
				d.down++
			}
		}
		hs.openDis[k] = d
		hs.allDis = append(hs.allDis, d)
		for _, crn := range r.order {
			v := r.vols[crn]
			if v.key != k || !v.pinned || v.open == nil {
				continue
			}
			d.vols = append(d.vols, v)
			r.pushEvent(event{at: attachAt(v), kind: evAttachLock, crn: crn, dis: d, key: k})
			// The volume's I/O, until well past the lockout bound.
			for t := time.Duration(0); t <= time.Duration(r.sc.LockoutBound)+2*time.Second; t += ioStep {
				r.pushEvent(event{at: ev.Time.Add(t), kind: evIO, crn: crn, dis: d, key: k})
			}
		}
	case ev.Type == volume.KeyEnabled || ev.Type == volume.KeyRestored:
		hs.openDis[k] = nil
		for _, crn := range r.order {
			if v := r.vols[crn]; v.key == k && v.pinned && v.open == nil {
				r.pushEvent(event{at: attachAt(v), kind: evAttachUnlock, crn: crn, key: k})
			}
		}
	}
}

// deliveryDelay is the virtual time between the commit of feed event n and the follower
// tag receiving it: a delay uniform in [0, 2×DeliveryDelay), and for each lost answer, a poll
// interval and another delay. The draws depend only on the seed, the tag and n.
func (r *runner) deliveryDelay(tag string, n int, poll time.Duration) time.Duration {
	mean := float64(r.sc.Faults.DeliveryDelay)
	d := time.Duration(hash01(r.sc.Seed, "delay "+tag, uint64(n)*64) * 2 * mean)
	for i := uint64(1); i < 64 && hash01(r.sc.Seed, "loss "+tag, uint64(n)*64+i) < r.sc.Faults.NotificationLoss; i++ {
		r.hs.rep.Lost++
		d += poll + time.Duration(hash01(r.sc.Seed, "delay "+tag, uint64(n)*64+i)*2*mean)
	}
	return d
}

// trackRotation starts following a rotation of key k to every volume of the key.
func (r *runner) trackRotation(k int, trigger string) {
	t := &rotTrack{key: k, gen: len(r.keys[k].versions), at: r.clock.Now(), trigger: trigger, pending: map[string]bool{}}
	for _, crn := range r.order {
		if r.vols[crn].key == k {
			t.pending[crn] = true
		}
	}
	t.volumes = len(t.pending)
	r.hs.rots[k] = append(r.hs.rots[k], t)
	r.hs.allRots = append(r.hs.allRots, t)
}

// converged records that volume crn's token is on version ver now.
func (r *runner) converged(crn, ver string) {
	v := r.vols[crn]
	if v == nil {
		return
	}
	g := slices.Index(r.keys[v.key].versions, ver) + 1
	open := r.hs.rots[v.key][:0]
	for _, t := range r.hs.rots[v.key] {
		if t.gen <= g && t.pending[crn] {
			delete(t.pending, crn)
			t.lat = append(t.lat, r.clock.Now().Sub(t.at))
		}
		if len(t.pending) > 0 {
			open = append(open, t)
		}
	}
	r.hs.rots[v.key] = open
}

// openedAt records the version of v's token after an attach (which rewraps a lagging one).
func (r *runner) openedAt(v *vol) {
	if info, err := volume.Describe(v.path); err == nil {
		r.converged(v.crn, info.KeyVersion)
	}
}

// lockVol stops attached volume v (its master key wiped) and records when, for the disable
// in force. It reports whether v is stopped.
func (r *runner) lockVol(v *vol) bool {
	if r.opts.skipLockout != nil && r.opts.skipLockout(v.host.idx) {
		return false // the broken lockout of a test
	}
	if v.open != nil {
		if err := v.open.Close(); err != nil {
			r.rep.Attaches.OtherFailures++
			r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, fmt.Sprint("lockout: ", err))
		}
		v.open = nil
	}
	if d := r.hs.openDis[v.key]; d != nil && slices.Contains(d.vols, v) {
		if _, ok := d.locked[v]; !ok {
			d.locked[v] = r.clock.Now()
		}
	}
	return true
}

// handleHosts runs one event of a run on hosts.
func (r *runner) handleHosts(ctx context.Context, e event) error {
	hs := r.hs
	switch e.kind {
	case evDeliver:
		h := hs.hosts[e.host]
		if h.down || e.n < h.handled {
			return nil // handled already, or at the restart
		}
		hs.rep.Notifications++
		h.trigger = "agent"
		if err := h.applyUpTo(ctx, e.n); err != nil {
			if ctx.Err() != nil {
				return err
			}
			// The agent retries the page at its next poll.
			r.log.Info("agent could not handle a page", "host", h.idx, "err", err)
			hs.rep.PagesRetried++
			r.pushEvent(event{at: r.clock.Now().Add(time.Duration(r.sc.AgentPoll)), kind: evDeliver, host: h.idx, n: e.n, key: -1})
		}
	case evAgentDown:
		h := hs.hosts[e.host]
		if h.down {
			return nil
		}
		h.down = true
		hs.rep.AgentDowntimes++
		r.pushEvent(event{at: r.clock.Now().Add(time.Duration(r.sc.Faults.AgentDowntimeLength)), kind: evAgentUp, host: h.idx, key: -1})
	case evAgentUp:
		h := hs.hosts[e.host]
		h.down = false
		// As agent.Run starts: a reconciliation, then the events after the saved cursor.
		h.reconcile(ctx, "reconcile")
		if n := len(hs.events) - 1; n >= h.handled {
			h.trigger = "agent"
			if err := h.applyUpTo(ctx, n); err != nil {
				if ctx.Err() != nil {
					return err
				}
				hs.rep.PagesRetried++
				r.pushEvent(event{at: r.clock.Now().Add(time.Duration(r.sc.AgentPoll)), kind: evDeliver, host: h.idx, n: n, key: -1})
			}
		}
	case evReconcile:
		if h := hs.hosts[e.host]; !h.down {
			h.reconcile(ctx, "reconcile")
		}
	case evDisable:
		return r.disable(ctx)
	case evEnable:
		sk := r.keys[e.key]
		if _, err := r.svc.EnableKey(ctx, sk.id); err != nil {
			if errors.Is(err, crk.ErrTooEarly) {
				r.pushEvent(event{at: r.clock.Now().Add(crk.ActionCooldown), kind: evEnable, key: e.key})
				return nil
			}
			return fmt.Errorf("sim: enabling %s: %w", sk.name, err)
		}
		hs.disabled[e.key] = false
		hs.rep.Enables++
		return r.pullFeed(ctx)
	case evAttachLock:
		if v := r.vols[e.crn]; v != nil && e.dis == hs.openDis[v.key] {
			r.lockVol(v)
		}
	case evAttachUnlock:
		r.reattach(ctx, e)
	case evIO:
		r.io(e)
	}
	return nil
}

// disable disables a random key with attached volumes (any key if none has), and plans its
// enable.
func (r *runner) disable(ctx context.Context) error {
	hs := r.hs
	var with, all []int
	for k := range r.keys {
		if hs.disabled[k] {
			continue
		}
		all = append(all, k)
		for _, crn := range r.order {
			if v := r.vols[crn]; v.key == k && v.pinned && v.open != nil {
				with = append(with, k)
				break
			}
		}
	}
	if len(with) == 0 {
		with = all
	}
	if len(with) == 0 {
		return nil
	}
	k := with[r.rng.IntN(len(with))]
	if _, err := r.svc.DisableKey(ctx, r.keys[k].id); err != nil {
		return fmt.Errorf("sim: disabling %s: %w", r.keys[k].name, err)
	}
	hs.disabled[k] = true
	hs.rep.Disables++
	r.pushEvent(event{at: r.clock.Now().Add(time.Duration(r.sc.DisableLength)), kind: evEnable, key: k})
	return r.pullFeed(ctx)
}

// reattach attaches a pinned volume again after its key's enable (retrying at the attach
// process's poll interval while the key service fails).
func (r *runner) reattach(ctx context.Context, e event) {
	v := r.vols[e.crn]
	if v == nil || v.open != nil || r.hs.disabled[v.key] {
		return
	}
	h, err := v.host.mgr.Open(ctx, v.path)
	if err != nil {
		if e.n < 100 {
			e.n++
			e.at = r.clock.Now().Add(time.Duration(r.sc.AttachPoll))
			r.pushEvent(e)
			return
		}
		r.rep.Attaches.Total++
		r.attachFailed(v, err) // given up: counted, so the audit sees it
		return
	}
	r.rep.Attaches.Total++
	if err := verify(h, v); err != nil {
		r.rep.Attaches.DataMismatches++
		r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, err.Error())
	}
	v.open = h
	r.hs.rep.Reattaches++
	r.openedAt(v)
}

// io is one read of an attached volume after its key's disable: served (and checked) while
// the volume is attached, refused once it stopped. Served after the disable plus the lockout
// bound, it is a defect.
func (r *runner) io(e event) {
	v := r.vols[e.crn]
	if v == nil {
		return
	}
	if v.open == nil {
		r.hs.rep.IORefused++
		return
	}
	if err := verify(v.open, v); err != nil {
		r.rep.Attaches.DataMismatches++
		r.rep.Attaches.Errors = appendCapped(r.rep.Attaches.Errors, err.Error())
		return
	}
	r.hs.rep.IOServed++
	// Served after the bound while the disable is in force (not after the key's enable).
	if d := e.dis; d != nil && d == r.hs.openDis[v.key] && r.clock.Now().Sub(d.at) > time.Duration(r.sc.LockoutBound) {
		r.hs.rep.LateIO++
		d.lateIO++
		d.late[v]++
	}
}

// applyUpTo has the agent handle the feed's events after its saved cursor up to event n,
// as one page, and saves the cursor after them.
func (h *simHost) applyUpTo(ctx context.Context, n int) error {
	hs := h.r.hs
	page, err := hs.feed.KeyEvents(ctx, h.cursor, 0)
	if err != nil {
		return err
	}
	evs := page.Events
	for i, ev := range evs {
		if hs.index[ev.Cursor] > n {
			evs = evs[:i]
			break
		}
	}
	if len(evs) == 0 {
		return nil
	}
	if err := h.agent.Apply(ctx, evs); err != nil {
		return err
	}
	last := evs[len(evs)-1].Cursor
	if err := h.SaveCursor(last); err != nil {
		return err
	}
	h.handled = hs.index[last] + 1
	return nil
}

// reconcile has the agent reconcile; failures are left to the next one.
func (h *simHost) reconcile(ctx context.Context, trigger string) error {
	h.trigger = trigger
	h.r.hs.rep.Reconciles++
	err := h.agent.Reconcile(ctx)
	if err != nil {
		h.r.log.Info("reconciliation incomplete", "host", h.idx, "err", err)
	}
	return err
}

// Keys implements agent.Host.
func (h *simHost) Keys(context.Context) ([]string, error) { return slices.Clone(h.keys), nil }

// KeyState implements agent.Host, through the faulty key service.
func (h *simHost) KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	return h.r.kms.KeyState(ctx, keyID)
}

// Rewrap implements agent.Host: it rewraps the host's volumes and images of keyID whose
// registration lags the key's latest version.
func (h *simHost) Rewrap(ctx context.Context, keyID string) (*volume.Report, error) {
	regs, latest, err := h.r.kms.Registrations(ctx, keyID)
	if err != nil {
		return nil, err
	}
	at := map[string]string{}
	for _, reg := range regs {
		at[reg.CRN] = reg.VersionID
	}
	var stale []string
	for _, crn := range append(slices.Clone(h.vols[keyID]), h.imgs[keyID]...) {
		if at[crn] != latest {
			stale = append(stale, crn)
		}
	}
	rep := h.mgr.Rewrap(ctx, keyID, latest, stale)
	for crn := range rep.VolumeLatency {
		if _, failed := rep.Failed[crn]; !failed {
			h.r.converged(crn, latest)
		}
	}
	if rep.Rewrapped > 0 || rep.ImagesRewrapped > 0 || len(rep.Failed) > 0 {
		h.r.record(rep, nil, h.trigger)
	}
	return rep, nil
}

// Lockout implements agent.Host: the host's attached volumes of keyID stop serving (Stopped
// counts them), and every volume and image of keyID on the host is locked out (Volumes,
// Images).
func (h *simHost) Lockout(_ context.Context, keyID, _ string) (agent.LockoutResult, error) {
	h.locked[keyID] = true
	res := agent.LockoutResult{Volumes: len(h.vols[keyID]), Images: len(h.imgs[keyID])}
	for _, crn := range h.vols[keyID] {
		if v := h.r.vols[crn]; v != nil && v.pinned && v.open != nil && h.r.lockVol(v) {
			res.Stopped++
		}
	}
	return res, nil
}

// Unlock implements agent.Host.
func (h *simHost) Unlock(_ context.Context, keyID string) error {
	delete(h.locked, keyID)
	return nil
}

// LoadCursor implements agent.Host.
func (h *simHost) LoadCursor() (string, error) { return h.cursor, nil }

// SaveCursor implements agent.Host.
func (h *simHost) SaveCursor(c string) error {
	h.cursor = c
	return nil
}

// finishHosts ends a run on hosts: the agents' final reconciliation without faults, then the
// audit of every volume, of every rotation's convergence and of every disable's lockout.
func (r *runner) finishHosts(ctx context.Context) error {
	r.rep.Faults = r.kms.snapshot()
	r.rep.FaultsInjected = r.rep.Faults.Total()
	r.kms.setEnabled(false)
	if err := r.countStaleAtEnd(ctx); err != nil {
		return err
	}
	for _, h := range r.hs.hosts {
		if err := h.reconcile(ctx, "final"); err != nil {
			return fmt.Errorf("sim: final reconciliation of host %d: %w", h.idx, err)
		}
	}
	for _, rots := range r.hs.rots {
		for _, t := range rots {
			for crn := range t.pending {
				if v := r.vols[crn]; v != nil {
					r.openedAt(v)
				}
			}
		}
	}
	for _, crn := range r.order {
		r.detach(crn)
	}
	if err := r.sample(ctx); err != nil {
		return err
	}
	if r.opts.beforeAudit != nil {
		r.opts.beforeAudit(r)
	}
	r.audit(ctx)
	r.auditHosts()
	r.auditAcks(ctx)
	r.summarizeKeys(ctx)
	return nil
}

// auditAcks checks that after the final reconciliation every host has confirmed the state
// of every key of its volumes to the key service: its latest acknowledgement states the key's
// state and was recorded at or after the key's last state change. It fails the audit for a
// host that did not.
func (r *runner) auditAcks(ctx context.Context) {
	a := &r.rep.Audit
	hr := r.hs.rep
	failed := 0
	for _, h := range r.hs.hosts {
		st := h.agent.Status()
		hr.Acks += st.Acks
		hr.AckFailures += st.AckFailures
		hr.HostKeys += len(h.keys)
		for _, id := range h.keys {
			k, err := r.svc.GetKeyMetadata(ctx, id)
			if err != nil {
				failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s: key %s: %v", hostName(h.idx), id, err))
				continue
			}
			acks, err := r.svc.HostAcks(ctx, id)
			if err != nil {
				failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s: acknowledgements of key %s: %v", hostName(h.idx), k.Name, err))
				continue
			}
			i := slices.IndexFunc(acks, func(x crk.HostAck) bool { return x.Host == hostName(h.idx) })
			switch {
			case i < 0:
				failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s never acknowledged key %s", hostName(h.idx), k.Name))
			case !acks[i].Confirms(k):
				failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s did not confirm key %s %s since %s: its last acknowledgement says %s at %s",
					hostName(h.idx), k.Name, k.State, k.LastStateChange.UTC().Format(time.RFC3339), acks[i].State, acks[i].Time.UTC().Format(time.RFC3339)))
			case !k.State.Unwraps() && acks[i].Volumes != len(h.vols[id]):
				// A lockout covers every volume of the key on the host, attached or not.
				failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("%s confirmed key %s %s for %d volume(s), but has %d",
					hostName(h.idx), k.Name, k.State, acks[i].Volumes, len(h.vols[id])))
			default:
				hr.Confirmed++
			}
		}
	}
	a.Failed += failed
	a.Passed = a.Passed && failed == 0
}

// auditHosts reports every rotation's convergence and every disable's lockout, and fails
// the audit for a volume that never converged, an attached volume that never stopped, or
// I/O served after a disable plus the lockout bound.
func (r *runner) auditHosts() {
	a := &r.rep.Audit
	hr := r.hs.rep
	bound := time.Duration(r.sc.LockoutBound)
	failed := 0
	fail := func(format string, args ...any) {
		failed++
		a.Failures = appendCapped(a.Failures, fmt.Sprintf(format, args...))
	}
	hr.Convergence = []Convergence{}
	for _, t := range r.hs.allRots {
		c := Convergence{At: t.at, Key: r.keys[t.key].name, Generation: t.gen, Trigger: t.trigger, Volumes: t.volumes, Converged: len(t.lat)}
		c.P50Ms, c.P99Ms, c.MaxMs = percentiles(t.lat)
		hr.Convergence = append(hr.Convergence, c)
		if n := len(t.pending); n > 0 {
			fail("rotation of %s to version %d at %s: %d volumes never reached it", c.Key, t.gen, t.at.UTC().Format(time.RFC3339), n)
		}
	}
	hr.Lockouts = []Lockout{}
	for _, d := range r.hs.allDis {
		l := Lockout{At: d.at, Key: r.keys[d.key].name, Attached: len(d.vols), LockedOut: len(d.locked), LateIO: d.lateIO, AgentsDown: d.down}
		var lat []time.Duration
		for _, v := range d.vols {
			at, ok := d.locked[v]
			if ok {
				lat = append(lat, at.Sub(d.at))
				if at.Sub(d.at) > bound {
					fail("%s: stopped serving %s after %s was disabled at %s, later than the lockout bound %s",
						filepath.Base(v.path), at.Sub(d.at), l.Key, d.at.UTC().Format(time.RFC3339), bound)
				}
			} else {
				fail("%s: attached when %s was disabled at %s, never stopped serving", filepath.Base(v.path), l.Key, d.at.UTC().Format(time.RFC3339))
			}
			if n := d.late[v]; n > 0 {
				fail("%s: served I/O %d times more than the lockout bound %s after %s was disabled at %s",
					filepath.Base(v.path), n, bound, l.Key, d.at.UTC().Format(time.RFC3339))
			}
		}
		l.P50Ms, l.P99Ms, l.MaxMs = percentiles(lat)
		hr.Lockouts = append(hr.Lockouts, l)
	}
	a.Failed += failed
	a.Passed = a.Passed && failed == 0
}

// percentiles returns the p50, p99 and maximum of ds in milliseconds (zeros if empty).
func percentiles(ds []time.Duration) (p50, p99, maxMs float64) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return ms(s[len(s)/2]), ms(s[min(len(s)-1, int(math.Ceil(0.99*float64(len(s))))-1)]), ms(s[len(s)-1])
}
