package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// The attach process follows its volume's root key: a disable, delete or purge of the key
// (an event of the key service's lifecycle feed, or a state check that finds the key not
// usable) makes it stop serving. See runAttach for what stopping does.
const (
	// lockoutCheckEvery is the backstop: the key's state is checked this often whatever the
	// feed says (and at once on SIGUSR1).
	lockoutCheckEvery = 30 * time.Second
	// lockoutFeedWait is the wait of each long poll of the feed.
	lockoutFeedWait = 25 * time.Second
	// lockoutRetryMin and lockoutRetryMax bound the backoff between failed feed reads: once
	// the key service is back, an event is seen within lockoutRetryMax.
	lockoutRetryMin = 250 * time.Millisecond
	lockoutRetryMax = 4 * time.Second
	// lockoutPoll is the least time between two feed reads that found nothing new: a feed that
	// answers at once although asked to wait is not asked again sooner.
	lockoutPoll = 500 * time.Millisecond
	// lockoutShutdown bounds how long the NBD clients have to take their last replies once
	// the key is locked out, keeping the stop within 5 s of the event.
	lockoutShutdown = 3 * time.Second
	// lockoutOfflineGrace is the default of attach --offline-grace; lockoutMinGrace the
	// least it may be (the key service is asked twice per grace: no faster than every 5 s).
	lockoutOfflineGrace = 15 * time.Minute
	lockoutMinGrace     = 10 * time.Second
	// lockoutRefusedFor is how long a refusal of the host's credentials must last, through
	// the retries meanwhile (at least every lockoutRetryMax), before it stops the volume: a
	// revoked API key stops it within about a minute, a passing failure never does.
	lockoutRefusedFor = time.Minute
)

// keyLock says why an attached volume's key stopped it: the key's state and, when a feed
// event said so, the event's type; or that the key service refused this host's credentials
// (refused); or that it could not be reached for offline, the grace (cause is its last
// error).
type keyLock struct {
	keyID, state, event string
	refused             error
	offline             time.Duration
	cause               error
}

// err is the attach command's error for a lockout of the volume at path.
func (l *keyLock) err(path string) error {
	switch {
	case l.refused != nil:
		err := fmt.Errorf("the key service refused this host's credentials, so key %s cannot be checked any more: stopped serving %s: %w", l.keyID, path, l.refused)
		return withHint(err, "give this host a valid API key (CRKVOL_KMS_APIKEY; crkvol kms apikey create on the server) or token (CRKVOL_KMS_TOKEN), then attach again")
	case l.offline > 0:
		err := fmt.Errorf("the key service could not be reached for %s (--offline-grace), so key %s cannot be checked any more: stopped serving %s: %w", l.offline, l.keyID, path, l.cause)
		return withHint(err, "attach again once the key service can be reached; --offline-grace 0 keeps serving while it cannot")
	}
	// The same words whichever way the lockout was learnt, an event of the feed or a check of
	// the key's state (only a disable suspends a key, only a delete destroys one).
	how := ""
	switch {
	case l.event == volume.KeyPurged:
		how = " (purged)"
	case l.event == volume.KeyDisabled || l.state == volume.KeyStateSuspended:
		how = " (disabled)"
	case l.event == volume.KeyDeleted || l.state == volume.KeyStateDestroyed:
		how = " (deleted)"
	}
	err := fmt.Errorf("key %s is %s%s: stopped serving %s", l.keyID, l.state, how, path)
	return withHint(err, keyStateHint(l.keyID, l.state, l.event == volume.KeyPurged, "attach again"))
}

// keyStateHint says how to make a key that is not usable usable again, then do what.
func keyStateHint(keyID, state string, purged bool, then string) string {
	switch {
	case purged:
		return "the key's material is purged for good: no key service can unlock the volume again"
	case state == volume.KeyStateSuspended:
		return "enable the key (crkvol key enable " + keyID + ") and " + then
	case state == volume.KeyStateDestroyed:
		return "restore the key (crkvol key restore " + keyID + ", within 30 days of its deletion) and " + then
	}
	return "see crkvol key show " + keyID + "; once the key is active again, " + then
}

// keyWatch follows the lifecycle of one root key for an attach process.
type keyWatch struct {
	keyID string
	// feed is the key service's lifecycle feed.
	feed volume.KeyFeed
	// state returns the key's current state.
	state func(ctx context.Context, keyID string) (volume.KeyStatus, error)
	// checkNow asks for a state check at once (SIGUSR1).
	checkNow <-chan struct{}
	// every is the period of the backstop state check; wait the feed's long poll.
	every, wait time.Duration
	// retryMin and retryMax bound the backoff after a failed feed read.
	retryMin, retryMax time.Duration
	// poll is the least time between two feed reads that found nothing new.
	poll time.Duration
	// grace is the lease: after this long without a successful feed read or state check the
	// key is taken as locked. 0: no limit.
	grace time.Duration
	// refusedFor is how long a refusal of this host's credentials must last (through every
	// retry meanwhile) before it locks: a renewal that fails once (a server's hiccup, a
	// proxy's error) must not stop a healthy volume; a revoked API key stays refused.
	refusedFor time.Duration
	log        *slog.Logger

	mu sync.Mutex
	// lastOK is the time of the last successful feed read or state check (or of the start);
	// lastErr the last failure since then.
	lastOK  time.Time
	lastErr error
	// refusedSince is the first of the refusals of this host's credentials that followed the
	// last success (zero: none).
	refusedSince time.Time
}

// ok records a successful feed read or state check.
func (w *keyWatch) ok() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastOK, w.lastErr, w.refusedSince = time.Now(), nil, time.Time{}
}

// failed records a failed feed read or state check, and reports whether it locks: a
// refusal of this host's credentials that has lasted w.refusedFor with no success between,
// since the key's state can no longer be known.
func (w *keyWatch) failed(err error, report func(*keyLock)) bool {
	w.mu.Lock()
	w.lastErr = err
	refused := errors.Is(err, kms.ErrCredentialsRefused)
	first := refused && w.refusedSince.IsZero()
	if first {
		w.refusedSince = time.Now()
	}
	lasted := time.Duration(0)
	if refused {
		lasted = time.Since(w.refusedSince)
	}
	w.mu.Unlock()
	if !refused {
		return false
	}
	if lasted < w.refusedFor {
		if first {
			w.log.Warn("the key service refused this host's credentials; still serving, retrying; stopping if the refusal lasts", "key", w.keyID, "for", w.refusedFor, "err", err)
		}
		return false
	}
	w.log.Warn("the key service kept refusing this host's credentials; stopping", "key", w.keyID, "for", lasted.Round(time.Second), "err", err)
	report(&keyLock{keyID: w.keyID, refused: err})
	return true
}

// lease reports a lock once w.grace has passed without a successful feed read or state
// check; it returns when ctx ends. Without a grace it returns at once.
func (w *keyWatch) lease(ctx context.Context, report func(*keyLock)) {
	if w.grace <= 0 {
		return
	}
	for {
		w.mu.Lock()
		left, cause := w.grace-time.Since(w.lastOK), w.lastErr
		w.mu.Unlock()
		if left <= 0 {
			if cause == nil {
				cause = errors.New("no answer")
			}
			w.log.Warn("the key service could not be reached for the offline grace; stopping", "key", w.keyID, "grace", w.grace, "err", cause)
			report(&keyLock{keyID: w.keyID, offline: w.grace, cause: cause})
			return
		}
		if !sleepCtx(ctx, left) {
			return
		}
	}
}

// run follows the feed from cursor and checks the key's state at once, every w.every and on
// w.checkNow, until the key is found locked (its reason is returned) or ctx ends (nil).
// Failures to read the feed or the state are logged and retried, for w.grace at most; a
// refusal of this host's credentials locks at once.
func (w *keyWatch) run(ctx context.Context, cursor string) *keyLock {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	found := make(chan *keyLock, 2)
	report := func(l *keyLock) {
		select {
		case found <- l:
		default: // one reason is enough
		}
	}
	w.mu.Lock()
	w.lastOK = time.Now()
	w.mu.Unlock()
	go w.follow(ctx, cursor, report)
	go w.backstop(ctx, report)
	go w.lease(ctx, report)
	select {
	case l := <-found:
		return l
	case <-ctx.Done():
		return nil
	}
}

// follow reads the feed from cursor until ctx ends or an event locks the key. After a
// "resync needed" it follows from the head and checks the key's state. A page that does not
// move the cursor forward (no events, or a cursor that goes backwards or changes without
// events, which it keeps its own cursor over) is followed by the next read no sooner than
// w.poll after this one started, so that a feed that answers at once never makes it spin.
func (w *keyWatch) follow(ctx context.Context, cursor string, report func(*keyLock)) {
	delay := time.Duration(0)
	badCursorLogged := false
	for {
		start := time.Now()
		page, err := w.feed.KeyEvents(ctx, cursor, w.wait)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, volume.ErrResyncNeeded) {
			w.log.Warn("lifecycle feed cannot continue from its cursor; following from the head after a state check", "key", w.keyID, "cursor", cursor, "err", err)
			cursor, delay = "", 0
			if !sleepCtx(ctx, w.poll-time.Since(start)) {
				return
			}
			continue
		}
		if err != nil {
			if w.failed(err, report) {
				return
			}
			delay = min(max(2*delay, w.retryMin), w.retryMax)
			w.log.Warn("lifecycle feed unavailable; still serving, retrying", "key", w.keyID, "err", err, "in", delay)
			if !sleepCtx(ctx, delay) {
				return
			}
			continue
		}
		w.ok()
		if delay > 0 {
			w.log.Info("lifecycle feed available again", "key", w.keyID)
			delay = 0
		}
		for _, ev := range page.Events {
			if ev.KeyID == w.keyID && ev.Locks() {
				w.log.Warn("key taken out of use", "key", w.keyID, "event", ev.Type, "state", ev.State, "cursor", ev.Cursor, "at", ev.Time)
				report(&keyLock{keyID: w.keyID, state: ev.State, event: ev.Type})
				return
			}
		}
		if cursor == "" {
			// Following from the head after a resync: what happened before it is known from
			// the key's state only.
			w.check(ctx, report)
			cursor = page.Cursor
			continue
		}
		moved := len(page.Events) > 0 && volume.CursorAfter(page.Cursor, cursor)
		switch {
		case moved:
			cursor = page.Cursor
		case page.Cursor != cursor && !badCursorLogged:
			badCursorLogged = true
			w.log.Warn("the lifecycle feed answered a cursor that does not follow the one asked for; keeping it", "key", w.keyID,
				"cursor", cursor, "answered", page.Cursor, "events", len(page.Events))
		}
		if !moved && !sleepCtx(ctx, w.poll-time.Since(start)) {
			return
		}
	}
}

// backstop checks the key's state at once, then every w.every and on w.checkNow.
func (w *keyWatch) backstop(ctx context.Context, report func(*keyLock)) {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		w.check(ctx, report)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.checkNow:
			w.log.Info("checking the key's state now (SIGUSR1)", "key", w.keyID)
		}
	}
}

// check reports a lock if the key's state is not usable, or the key does not exist.
func (w *keyWatch) check(ctx context.Context, report func(*keyLock)) {
	st, err := w.state(ctx, w.keyID)
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, crk.ErrKeyNotFound):
		report(&keyLock{keyID: w.keyID, state: "not found"})
	case err != nil:
		if !w.failed(err, report) {
			w.log.Warn("key state check failed; still serving", "key", w.keyID, "err", err)
		}
	case !st.Usable():
		w.ok()
		w.log.Warn("key not usable", "key", w.keyID, "state", st.State)
		report(&keyLock{keyID: w.keyID, state: st.State})
	default:
		w.ok()
	}
}

// sleepCtx waits d (not at all when d <= 0); false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// storeKeyState returns a function that reads a key's state from the embedded key service's
// store, opening it read-only for the length of one read and without the service master key
// (an attach process never holds crk.db: other commands change the key meanwhile).
func (a *app) storeKeyState() (func(ctx context.Context, keyID string) (volume.KeyStatus, error), error) {
	dir, err := a.stateDirectory()
	if err != nil {
		return nil, err
	}
	clock, err := a.clock()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "crk.db")
	return func(ctx context.Context, keyID string) (volume.KeyStatus, error) {
		st, err := crk.ReadKeyState(path, keyID, clock.Now(), 5*time.Second)
		if err != nil {
			return volume.KeyStatus{}, err
		}
		return volume.KeyStatus{State: st.State.String(), LatestVersion: st.LatestVersion}, nil
	}, nil
}

// fencedDevice is the device an attach process serves: its volume until fence is called;
// from then on every read, write and flush fails (EIO for NBD clients), while those under
// way finish.
type fencedDevice struct {
	v      *volume.Volume
	fenced atomic.Bool
}

// errFenced is what the requests after a lockout fail with.
var errFenced = errors.New("the volume's key is no longer usable: not serving")

func (d *fencedDevice) fence() { d.fenced.Store(true) }

// ReadAt implements nbd.Device.
func (d *fencedDevice) ReadAt(p []byte, off int64) (int, error) {
	if d.fenced.Load() {
		return 0, errFenced
	}
	return d.v.ReadAt(p, off)
}

// WriteAt implements nbd.Device.
func (d *fencedDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.fenced.Load() {
		return 0, errFenced
	}
	return d.v.WriteAt(p, off)
}

// Size implements nbd.Device.
func (d *fencedDevice) Size() int64 { return d.v.Size() }

// Sync implements nbd.Device.
func (d *fencedDevice) Sync() error {
	if d.fenced.Load() {
		return errFenced
	}
	return d.v.Sync()
}
