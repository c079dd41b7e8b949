// Package agent is the host agent: the long-running process on each storage host that follows
// a key service's lifecycle feed for the root keys of the host's volumes and responds to each
// event, as Key Protect's registered services respond to its notifications. A rotation or a
// sync rewraps the host's volumes of the key, and the WDEKs of its encrypted custom images in
// the host's image catalog; a disable, delete or purge stops every attached
// volume of the key from serving; an enable or restore lets them attach again. Missed events
// cannot stay missed for long: at start, after the feed asks for a resync, and on a timer, the
// agent reconciles every key of the host against its current state and latest version.
// With [Options].Acker, it acknowledges to the key service what it did (the state it now
// enforces for a key, the volumes acted on), so that the service shows which hosts confirmed
// a lockout.
//
// The agent acts through a [Host], which the CLI implements over a state directory and the
// simulator over its simulated hosts.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"crkvol/volume"
)

// Host is what the agent acts on: one storage host's registered volumes and its attach
// processes. Its methods are called from one goroutine at a time.
type Host interface {
	// Keys returns the ids of the root keys that protect the host's registered volumes and
	// its catalog images.
	Keys(ctx context.Context) ([]string, error)
	// KeyState returns a key's current state and latest version from the key service.
	KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error)
	// Rewrap brings every registered volume of keyID on the host to the key's latest
	// version, tokens and registrations, and every catalog image of keyID, WDEKs and
	// registrations (as volume.Manager.Sync does). An error means the
	// host could not act at all (its key service or registry was unreachable) and the event
	// is retried; volumes that failed are reported in the Report and left to the next
	// reconciliation.
	Rewrap(ctx context.Context, keyID string) (*volume.Report, error)
	// Lockout makes every attached volume of keyID on the host stop serving; state is the
	// key's state (for messages). It returns how many of the host's registered volumes of
	// keyID are now locked out and how many attach processes it told to stop.
	Lockout(ctx context.Context, keyID, state string) (LockoutResult, error)
	// Unlock tells the host that keyID is usable again: its volumes may attach.
	Unlock(ctx context.Context, keyID string) error
	// LoadCursor returns the feed cursor SaveCursor recorded last, or "" if none.
	LoadCursor() (string, error)
	// SaveCursor durably records that every event up to cursor was handled.
	SaveCursor(cursor string) error
}

// LockoutResult is what a Host's Lockout did.
type LockoutResult struct {
	// Volumes is the number of the host's registered volumes of the key: every one of them
	// is locked out, attached or not, and whether its attach process was told to stop or
	// stopped by itself (it follows the key's state too).
	Volumes int
	// Stopped is the number of attach processes of the key's volumes the host told to stop.
	Stopped int
	// Images is the number of the host's catalog images of the key: none can be used (no
	// volume can be created from one) while the key is out of use. Images are not attached,
	// so there is nothing of theirs to stop; the count is logged, not acknowledged (an
	// acknowledgement counts volumes only).
	Images int
}

// Options configure an Agent. Feed and Host are required.
type Options struct {
	// Feed is the key service's lifecycle feed.
	Feed volume.KeyFeed
	// Host is the storage host the agent acts on.
	Host Host
	// Wait is how long one poll of the feed waits for an event; default 30 s.
	Wait time.Duration
	// MinPoll is the least time between two polls of the feed when the first answered
	// without events before the wait it asked for had passed (a feed that does not wait);
	// default 1 s.
	MinPoll time.Duration
	// ReconcileEvery is the time between reconciliations; default 10 minutes.
	ReconcileEvery time.Duration
	// Backoff returns the wait before retry n (1-based) after a failure; default 1 s
	// doubling, at most 30 s.
	Backoff func(n int) time.Duration
	// RunDue, if set, runs the key service's due policy rotations and returns when the next
	// is due (ok false if none): set for an embedded key service, which has no server of its
	// own to run them. It is called at start, then when the time it returned comes, and at
	// least every DueEvery.
	RunDue func(ctx context.Context) (next time.Time, ok bool, err error)
	// DueEvery bounds the time between RunDue calls (policies may change meanwhile);
	// default 1 minute.
	DueEvery time.Duration
	// Now is the service clock: it stamps the status and reads RunDue's answer; time.Now if
	// nil. Run schedules its polls, reconciliations and due runs on the wall clock whatever
	// Now says (a service clock set in the past or the future never makes it spin or stall).
	Now func() time.Time
	// Logger receives what the agent does (never secrets); discarded if nil.
	Logger *slog.Logger
	// Acker, if set, is told what the agent did for each key, under HostName: after it locks
	// out a key's volumes (for an event or a reconciliation), after an unlock and its rewrap
	// pass, and after a rewrap pass that brought every volume of a key to its latest
	// version. A reconciliation acknowledges only what changed since the last
	// acknowledgement recorded (all of it after a start or a resync). An acknowledgement that
	// fails is logged and made again, with the key's state then, at the next reconciliation;
	// one the service refuses (volume.ErrKeyRefused: a purged key...) is logged and not made
	// again until the key's state changes. Acknowledgements are sent after the lockouts of a
	// page or a reconciliation, so they never delay one.
	Acker volume.KeyAcker
	// HostName is the name the agent acknowledges under (crkvol agent --host); required
	// with Acker.
	HostName string
}

// Status is what an agent reports about itself.
type Status struct {
	// Cursor is the feed cursor up to which every event was handled.
	Cursor string `json:"cursor"`
	// Started is when Run started.
	Started time.Time `json:"started,omitzero"`
	// Keys is the number of keys of the host's volumes at the last look.
	Keys int `json:"keys"`
	// Events counts the events handled (those of other hosts' keys included), each once
	// however often its page was retried. RewrapPasses counts the rewrap passes over a key's
	// volumes (for events and reconciliations); Lockouts the lockouts of a key's volumes that
	// were new (the key newly out of use, or attach processes told to stop); Unlocks the
	// keys usable again.
	Events       int `json:"events"`
	RewrapPasses int `json:"rewrapPasses"`
	Lockouts     int `json:"lockouts"`
	Unlocks      int `json:"unlocks"`
	// LastEvent is the service time of the last event handled; Lag is how long after it the
	// agent finished handling it.
	LastEvent time.Time     `json:"lastEvent,omitzero"`
	Lag       time.Duration `json:"lagNanos"`
	// LastPoll is when the feed last answered; FeedError is the last failure to read it
	// (or the last answer not followed), cleared by the next answer followed. FeedSilence
	// is, while FeedError is set, how long ago the feed last answered (or the agent started,
	// if it never did).
	LastPoll    time.Time     `json:"lastPoll,omitzero"`
	FeedError   string        `json:"feedError,omitempty"`
	FeedSilence time.Duration `json:"feedSilenceNanos,omitempty"`
	// LastReconcile is when the last reconciliation ended; ReconcileError its failure, if
	// any; NextReconcile when the next is due. Reconciles counts them.
	LastReconcile  time.Time `json:"lastReconcile,omitzero"`
	ReconcileError string    `json:"reconcileError,omitempty"`
	NextReconcile  time.Time `json:"nextReconcile,omitzero"`
	Reconciles     int       `json:"reconciles"`
	// FailedVolumes is the number of volumes (and catalog images) whose last rewrap failed.
	FailedVolumes int `json:"failedVolumes"`
	// Acks counts the acknowledgements the key service recorded (Options.Acker), AckFailures
	// those that failed or were refused; AckError is the last failure, cleared by the next
	// acknowledgement recorded.
	Acks        int    `json:"acks"`
	AckFailures int    `json:"ackFailures"`
	AckError    string `json:"ackError,omitempty"`
}

// Agent follows the feed for one host. Its Status may be read from any goroutine.
type Agent struct {
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	status Status
	failed map[string]int // key id -> volumes whose last rewrap failed
	// lockedOut is the state of each key the agent last locked out the volumes of; a key is
	// removed when it is seen usable again.
	lockedOut map[string]string
	// lastAnswer is the wall-clock time of the feed's last answer followed (or of the start).
	lastAnswer time.Time
	// acked is, per key, the last acknowledgement the service recorded or refused (Cursor
	// cleared); a reconciliation acknowledges a key again when what it would say differs, or
	// when the key is in pending (its last acknowledgement failed).
	acked   map[string]volume.KeyAck
	pending map[string]bool
}

// New returns an agent.
func New(opts Options) (*Agent, error) {
	if opts.Feed == nil || opts.Host == nil {
		return nil, errors.New("agent: a feed and a host are required")
	}
	if opts.Acker != nil && opts.HostName == "" {
		return nil, errors.New("agent: a host name is required to acknowledge events")
	}
	if opts.Wait <= 0 {
		opts.Wait = 30 * time.Second
	}
	if opts.ReconcileEvery <= 0 {
		opts.ReconcileEvery = 10 * time.Minute
	}
	if opts.Backoff == nil {
		opts.Backoff = func(n int) time.Duration { return min(time.Second<<min(n-1, 5), 30*time.Second) }
	}
	if opts.MinPoll <= 0 {
		opts.MinPoll = time.Second
	}
	if opts.DueEvery <= 0 {
		opts.DueEvery = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{opts: opts, log: opts.Logger, failed: map[string]int{}, lockedOut: map[string]string{},
		acked: map[string]volume.KeyAck{}, pending: map[string]bool{}}, nil
}

// Status returns a copy of the agent's status.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.status
	if st.FeedError != "" && !a.lastAnswer.IsZero() {
		st.FeedSilence = time.Since(a.lastAnswer)
	}
	return st
}

func (a *Agent) update(fn func(*Status)) {
	a.mu.Lock()
	fn(&a.status)
	a.mu.Unlock()
}

// Run follows the feed until ctx ends, then returns nil. It loads the saved cursor (or starts
// from the feed's head), reconciles, and then handles every event after the cursor in order,
// saving the cursor after each page: an event is handled at least once, whatever crashes. A
// failure to read the feed or to act is logged and retried with backoff; a resync answer
// reconciles and follows on from the head. It never polls in a loop: an empty answer that
// came before the wait asked for is followed by a pause of MinPoll, and a page that does not
// move the feed on from the cursor (a cursor that went backwards, events out of order) is
// neither handled nor saved: it is logged once and asked again after MinPoll. An empty
// answer with another cursor leaves the cursor as it is.
func (a *Agent) Run(ctx context.Context) error {
	a.update(func(s *Status) { s.Started = a.opts.Now() })
	a.mu.Lock()
	a.lastAnswer = time.Now()
	a.mu.Unlock()
	cursor, err := a.opts.Host.LoadCursor()
	if err != nil {
		return fmt.Errorf("agent: loading the feed cursor: %w", err)
	}
	failures := 0
	retry := func(what string, err error) bool {
		failures++
		d := a.opts.Backoff(failures)
		a.log.Warn("agent: "+what+" failed; retrying", "err", err, "retry_in", d)
		return sleep(ctx, d) == nil
	}
	// Start: a head to follow from, then a reconciliation (events after a saved cursor are
	// handled after it, in order).
	for cursor == "" {
		page, err := a.opts.Feed.KeyEvents(ctx, "", 0)
		if err == nil {
			err = a.opts.Host.SaveCursor(page.Cursor)
		}
		if err == nil {
			cursor = page.Cursor
			break
		}
		a.feedFailed(err)
		if ctx.Err() != nil || !retry("starting from the feed's head", err) {
			return nil
		}
	}
	a.update(func(s *Status) { s.Cursor = cursor })
	// Every deadline of the loop is on the wall clock (time.Now), the one timers run on; the
	// service clock (Options.Now) only stamps the status and converts RunDue's answer.
	nextReconcile := time.Now() // at once
	var nextDue time.Time
	if a.opts.RunDue != nil {
		nextDue = time.Now()
	}
	odd := false // an odd answer of the feed was logged; cleared by a page handled
	for ctx.Err() == nil {
		if a.opts.RunDue != nil && !time.Now().Before(nextDue) {
			next, ok, err := a.opts.RunDue(ctx)
			now, svcNow := time.Now(), a.opts.Now()
			nextDue = now.Add(a.opts.DueEvery)
			if err != nil {
				a.log.Warn("agent: running due policy rotations failed", "err", err)
			} else if ok {
				// The next due time is on the service clock: as far ahead on the wall clock,
				// but not sooner than MinPoll (a rotation due and not done must not spin).
				at := now.Add(max(next.Sub(svcNow), a.opts.MinPoll))
				if at.Before(nextDue) {
					nextDue = at
				}
			}
		}
		if !time.Now().Before(nextReconcile) {
			if err := a.Reconcile(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				a.log.Warn("agent: reconciliation incomplete; events keep being handled", "err", err)
			}
			// Whether it failed or not: failed keys are retried at the next one, and events
			// keep coming meanwhile.
			nextReconcile = time.Now().Add(a.opts.ReconcileEvery)
			a.update(func(s *Status) { s.NextReconcile = a.opts.Now().Add(a.opts.ReconcileEvery) })
		}
		wait := min(a.opts.Wait, time.Until(nextReconcile))
		if a.opts.RunDue != nil {
			wait = min(wait, time.Until(nextDue))
		}
		wait = max(wait, 0)
		asked := time.Now()
		page, err := a.opts.Feed.KeyEvents(ctx, cursor, wait)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, volume.ErrResyncNeeded):
			a.log.Warn("agent: the feed asks for a resync; reconciling every key", "cursor", cursor, "err", err)
			head, herr := a.opts.Feed.KeyEvents(ctx, "", 0)
			if herr != nil {
				a.feedFailed(herr)
				retry("reading the feed's head", herr)
				continue
			}
			cursor = head.Cursor
			if err := a.opts.Host.SaveCursor(cursor); err != nil {
				retry("saving the feed cursor", err)
				continue
			}
			nextReconcile = time.Now() // with the new cursor saved: events after it follow
			a.mu.Lock()
			clear(a.acked) // events were missed: the reconciliation acknowledges every key
			a.mu.Unlock()
			a.update(func(s *Status) { s.Cursor = cursor })
			continue
		case err != nil:
			a.feedFailed(err)
			retry("reading the feed", err)
			continue
		}
		if err := pageFollows(cursor, page); err != nil {
			// Not saved and not handled: the feed is not ours to follow from this answer.
			// Logged once until a page is handled; asked again after MinPoll.
			a.feedFailed(err)
			if !odd {
				a.log.Warn("agent: ignoring the feed's answer; keeping the cursor", "cursor", cursor, "err", err)
				odd = true
			}
			if sleep(ctx, a.opts.MinPoll) != nil {
				return nil
			}
			continue
		}
		a.answered()
		if len(page.Events) == 0 {
			failures = 0
			if page.Cursor != cursor && !odd {
				a.log.Warn("agent: the feed moved its cursor without events; keeping the cursor",
					"cursor", cursor, "answered", page.Cursor)
				odd = true
			}
			// A feed that answers at once although a wait was asked for is not polled
			// again before MinPoll.
			if d := min(wait, a.opts.MinPoll) - time.Since(asked); d > 0 && sleep(ctx, d) != nil {
				return nil
			}
			continue
		}
		if err := a.Apply(ctx, page.Events); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			retry("handling events", err)
			continue
		}
		if err := a.opts.Host.SaveCursor(page.Cursor); err != nil {
			retry("saving the feed cursor", err)
			continue
		}
		cursor = page.Cursor
		failures = 0
		odd = false
		last := page.Events[len(page.Events)-1]
		a.update(func(s *Status) {
			s.Cursor, s.LastEvent, s.Lag = cursor, last.Time, a.opts.Now().Sub(last.Time)
		})
	}
	return nil
}

// errOddPage is the failure of a feed answer the agent does not follow.
var errOddPage = errors.New("agent: the feed's answer cannot be followed")

// pageFollows checks that a page with events moves the feed on from cursor: its cursor and
// each event's are after cursor, in order, and the page's cursor is its last event's.
// Cursors that read as decimal numbers (a crkvol service's) are compared as numbers; others
// only need to differ from cursor.
func pageFollows(cursor string, p volume.KeyEventPage) error {
	if len(p.Events) == 0 {
		return nil
	}
	prev := cursor
	for _, e := range p.Events {
		if !volume.CursorAfter(e.Cursor, prev) {
			return fmt.Errorf("%w: event cursor %q is not after %q", errOddPage, e.Cursor, prev)
		}
		prev = e.Cursor
	}
	if p.Cursor != prev {
		return fmt.Errorf("%w: the page's cursor %q is not its last event's %q", errOddPage, p.Cursor, prev)
	}
	return nil
}

func (a *Agent) feedFailed(err error) {
	a.update(func(s *Status) { s.FeedError = err.Error() })
}

// answered records an answer of the feed that the agent follows.
func (a *Agent) answered() {
	a.mu.Lock()
	a.status.LastPoll, a.status.FeedError = a.opts.Now(), ""
	a.lastAnswer = time.Now()
	a.mu.Unlock()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// keyWork is what a page of events asks of the host for one key.
type keyWork struct {
	lock   *volume.KeyEvent // the last event that changed whether the key is usable
	rewrap *volume.KeyEvent // the last rotation or sync
}

// Apply handles a page of events, in order per key: for each key of the host's volumes, a
// lockout if the last usability change in the page took the key out of use (disable, delete,
// purge), an unlock if it brought it back (enable, restore), and a rewrap pass if the page
// rotated or synced the key or brought it back. Lockouts are done first, for every key, so
// that a rewrap of another key never delays them. Events of keys the host has no volume of are
// skipped. An error means the host could not act; the caller retries the page. What was done
// is acknowledged (Options.Acker) after the lockouts, a failed acknowledgement never failing
// the page.
func (a *Agent) Apply(ctx context.Context, events []volume.KeyEvent) error {
	keys, err := a.opts.Host.Keys(ctx)
	if err != nil {
		return fmt.Errorf("agent: listing the host's keys: %w", err)
	}
	mine := map[string]bool{}
	for _, k := range keys {
		mine[k] = true
	}
	work := map[string]*keyWork{}
	var order []string
	for i := range events {
		ev := &events[i]
		if !mine[ev.KeyID] {
			continue
		}
		w := work[ev.KeyID]
		if w == nil {
			w = &keyWork{}
			work[ev.KeyID] = w
			order = append(order, ev.KeyID)
		}
		switch ev.Type {
		case volume.KeyRotated, volume.KeySynced:
			w.rewrap = ev
		case volume.KeyDisabled, volume.KeyDeleted, volume.KeyPurged, volume.KeyEnabled, volume.KeyRestored:
			w.lock = ev
		}
	}
	var errs []error
	var acks []volume.KeyAck
	for _, id := range order {
		if w := work[id]; w.lock != nil && w.lock.Locks() {
			lo, err := a.lockout(ctx, id, w.lock.State)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			acks = append(acks, volume.KeyAck{KeyID: id, Type: w.lock.Type, State: w.lock.State, Volumes: lo.Volumes, Stopped: lo.Stopped, Cursor: w.lock.Cursor})
		}
	}
	// The lockouts are done: their acknowledgements go first, before any rewrap.
	a.acknowledge(ctx, acks)
	acks = acks[:0]
	for _, id := range order {
		w := work[id]
		// ack is the event the key's rewrap pass answers: the unlock, or the last rotation.
		ack := w.rewrap
		if w.lock != nil && !w.lock.Locks() {
			if err := a.opts.Host.Unlock(ctx, id); err != nil {
				errs = append(errs, fmt.Errorf("agent: unlocking key %s: %w", id, err))
				continue
			}
			a.mu.Lock()
			a.status.Unlocks++
			delete(a.lockedOut, id)
			a.mu.Unlock()
			a.log.Info("agent: key usable again; its volumes may attach", "key", id, "event", w.lock.Type)
			ack = w.lock // and rewrap anything that lagged while it was out of use
		}
		if ack != nil && (w.lock == nil || !w.lock.Locks()) {
			rep, err := a.rewrap(ctx, id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if ka, ok := rewrapAck(id, ack.Type, ack.State, rep); ok {
				ka.Cursor = ack.Cursor
				acks = append(acks, ka)
			}
		}
	}
	a.acknowledge(ctx, acks)
	err = errors.Join(errs...)
	a.update(func(s *Status) {
		s.Keys = len(keys)
		if err == nil {
			s.Events += len(events) // a page that failed is retried: counted when handled
		}
	})
	return err
}

// rewrapAck is the acknowledgement of a rewrap pass over the volumes of keyID for an event of
// type typ that left the key in state, or ok false when some volumes failed (the next
// reconciliation rewraps them again, and acknowledges then).
func rewrapAck(keyID, typ, state string, rep *volume.Report) (volume.KeyAck, bool) {
	if len(rep.Failed) > 0 {
		return volume.KeyAck{}, false
	}
	return volume.KeyAck{KeyID: keyID, Type: typ, State: state, Version: rep.NewVersion, Volumes: rep.Volumes}, true
}

// lockout locks out the volumes of keyID and returns what the host did.
func (a *Agent) lockout(ctx context.Context, keyID, state string) (LockoutResult, error) {
	lo, err := a.opts.Host.Lockout(ctx, keyID, state)
	if err != nil {
		return LockoutResult{}, fmt.Errorf("agent: locking out the volumes of key %s: %w", keyID, err)
	}
	n := lo.Stopped
	// New: the key newly out of use (or in another state), or attach processes told to
	// stop. A key that stays out of use is seen again at every reconciliation: not news.
	a.mu.Lock()
	prev, known := a.lockedOut[keyID]
	isNew := !known || prev != state || n > 0
	a.lockedOut[keyID] = state
	if isNew {
		a.status.Lockouts++
	}
	a.mu.Unlock()
	if isNew {
		a.log.Warn("agent: key out of use; its volumes stop serving", "key", keyID, "state", state, "volumes", lo.Volumes, "stopped", n, "images", lo.Images)
	} else {
		a.log.Debug("agent: key still out of use; no attached volume of it serves", "key", keyID, "state", state)
	}
	return lo, nil
}

func (a *Agent) rewrap(ctx context.Context, keyID string) (*volume.Report, error) {
	rep, err := a.opts.Host.Rewrap(ctx, keyID)
	if err != nil {
		return nil, fmt.Errorf("agent: rewrapping the volumes of key %s: %w", keyID, err)
	}
	a.mu.Lock()
	a.status.RewrapPasses++
	a.failed[keyID] = len(rep.Failed)
	a.status.FailedVolumes = 0
	for _, n := range a.failed {
		a.status.FailedVolumes += n
	}
	a.mu.Unlock()
	if len(rep.Failed) > 0 {
		a.log.Warn("agent: some volumes were not rewrapped; the next reconciliation retries them",
			"key", keyID, "version", rep.NewVersion, "failed", len(rep.Failed), "err", rep.Err())
	} else if rep.Rewrapped > 0 || rep.ImagesRewrapped > 0 {
		a.log.Info("agent: volumes rewrapped", "key", keyID, "version", rep.NewVersion, "rewrapped", rep.Rewrapped,
			"images_rewrapped", rep.ImagesRewrapped)
	}
	return rep, nil
}

// acknowledge sends acks (Options.Acker), in order, under the agent's host name. A failure
// is logged and leaves the key pending, acknowledged again at the next reconciliation; a
// refusal is logged and settles the key until what the agent would say of it changes.
func (a *Agent) acknowledge(ctx context.Context, acks []volume.KeyAck) {
	if a.opts.Acker == nil {
		return
	}
	for _, ka := range acks {
		if ctx.Err() != nil {
			return
		}
		ka.Host = a.opts.HostName
		err := a.opts.Acker.AckKeyEvent(ctx, ka)
		refused := errors.Is(err, volume.ErrKeyRefused)
		a.mu.Lock()
		if err == nil || refused {
			settled := ka
			settled.Cursor = ""
			a.acked[ka.KeyID] = settled
			delete(a.pending, ka.KeyID)
		} else {
			a.pending[ka.KeyID] = true
		}
		if err == nil {
			a.status.Acks++
			a.status.AckError = ""
		} else {
			a.status.AckFailures++
			a.status.AckError = err.Error()
		}
		a.mu.Unlock()
		switch {
		case err == nil:
			a.log.Debug("agent: acknowledged", "key", ka.KeyID, "type", ka.Type, "state", ka.State, "volumes", ka.Volumes)
		case refused:
			a.log.Warn("agent: the key service refused an acknowledgement; not made again until the key changes",
				"key", ka.KeyID, "type", ka.Type, "state", ka.State, "err", err)
		case ctx.Err() == nil:
			a.log.Warn("agent: acknowledging failed; made again at the next reconciliation",
				"key", ka.KeyID, "type", ka.Type, "state", ka.State, "err", err)
		}
	}
}

// reconcileAck returns ka and true when a reconciliation should acknowledge it: the key is
// pending, or ka says something else than the last acknowledgement settled (another state,
// version or number of volumes), or force.
func (a *Agent) reconcileAck(ka volume.KeyAck, force bool) (volume.KeyAck, bool) {
	if a.opts.Acker == nil {
		return ka, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	last, known := a.acked[ka.KeyID]
	return ka, force || a.pending[ka.KeyID] || !known || last.State != ka.State || last.Version != ka.Version || last.Volumes != ka.Volumes
}

// stateType is the lifecycle event type that leads to a key state, for an acknowledgement
// of what a reconciliation found.
func stateType(state string) string {
	switch state {
	case volume.KeyStateDestroyed:
		return volume.KeyDeleted
	case volume.KeyStateActive, volume.KeyStateDeactivated:
		return volume.KeyEnabled
	}
	return volume.KeyDisabled
}

// Reconcile compares every key of the host's volumes with its current state: the volumes of a
// key out of use are locked out, and those of a usable key are brought to its latest version
// (tokens and registrations that lag are rewrapped). It goes on past a key that fails and
// returns the failures joined. What changed since the last acknowledgements (and what
// failed to be acknowledged) is acknowledged at the end (Options.Acker).
func (a *Agent) Reconcile(ctx context.Context) error {
	keys, keysErr := a.opts.Host.Keys(ctx)
	if keysErr == nil {
		slices.Sort(keys)
	}
	var errs []error
	if keysErr != nil {
		errs = append(errs, fmt.Errorf("agent: listing the host's keys: %w", keysErr))
	}
	var acks []volume.KeyAck
	for _, id := range keys {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		st, err := a.opts.Host.KeyState(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("agent: reading the state of key %s: %w", id, err))
			continue
		}
		if !st.Usable() {
			lo, err := a.lockout(ctx, id, st.State)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ka := volume.KeyAck{KeyID: id, Type: stateType(st.State), State: st.State, Volumes: lo.Volumes, Stopped: lo.Stopped}
			if ka, ok := a.reconcileAck(ka, lo.Stopped > 0); ok {
				acks = append(acks, ka)
			}
			continue
		}
		a.mu.Lock()
		delete(a.lockedOut, id)
		last, known := a.acked[id]
		a.mu.Unlock()
		rep, err := a.rewrap(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// A key found usable after a lockout was acknowledged: its enable (or restore) was
		// not seen; otherwise the pass is what a sync asks for.
		typ := volume.KeySynced
		if known && !(volume.KeyStatus{State: last.State}).Usable() {
			typ = stateType(st.State)
		}
		if ka, ok := rewrapAck(id, typ, st.State, rep); ok {
			if ka, ok = a.reconcileAck(ka, rep.Rewrapped > 0); ok {
				acks = append(acks, ka)
			}
		}
	}
	// Keys no longer on the host have nothing left to acknowledge.
	if keysErr == nil {
		a.mu.Lock()
		for id := range a.pending {
			if !slices.Contains(keys, id) {
				delete(a.pending, id)
			}
		}
		a.mu.Unlock()
	}
	a.acknowledge(ctx, acks)
	err := errors.Join(errs...)
	a.update(func(s *Status) {
		s.LastReconcile, s.Reconciles, s.Keys = a.opts.Now(), s.Reconciles+1, len(keys)
		s.ReconcileError = ""
		if err != nil {
			s.ReconcileError = err.Error()
		}
	})
	return err
}
