package crk

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ActionEventAck is the audit action of a host's acknowledgement of a lifecycle event
// ([Service.Acknowledge]).
const ActionEventAck = "kms.secrets.eventack"

// ActionForgetAck is the audit action of forgetting a host's acknowledgement of a key
// ([Service.ForgetHostAck]).
const ActionForgetAck = "kms.secrets.forgeteventack"

// MaxHostAcksPerKey is the most hosts whose acknowledgements a key keeps. A host beyond it is
// refused with [ErrInvalidArgument]; hosts already known keep updating theirs. Any holder of
// one of the instance's API keys can fill a key's places with made-up hosts:
// [Service.ForgetHostAck] frees them one by one, and purging the key frees them all.
const MaxHostAcksPerKey = 10000

// Bounds of the fields of a [HostAck].
const (
	// MaxHostNameLen is the longest host name, as in DNS.
	MaxHostNameLen = 253
	// maxAckVersionLen bounds a version id (the service's are 36-byte UUIDs).
	maxAckVersionLen = 128
)

// HostAck is a host's acknowledgement of what it did for a key's lifecycle: the state it now
// enforces for the key's volumes, how many it acted on, and at which key version they are.
// A service keeps the latest one per key and host. It never holds key material.
type HostAck struct {
	// Host is the host's name (crkvol agent --host, by default the machine's host name):
	// 1 to 253 bytes of ASCII letters, digits and . _ - :.
	Host string `json:"host"`
	// KeyID is the root key acted on.
	KeyID string `json:"keyId"`
	// Type is the lifecycle type acted on: one of the Lifecycle* constants. A host that
	// found the key's state by a reconciliation rather than by an event gives the type of
	// the event that leads to that state (disable for suspended, enable for active, …).
	Type string `json:"type"`
	// State is the key state the host now enforces: "active", "suspended", "deactivated",
	// "destroyed" or "pre-activation" (the names of [State.String]).
	State string `json:"state"`
	// Version is the key version the host's volumes are on after a rotate or sync; it may be
	// empty.
	Version string `json:"version,omitempty"`
	// Volumes is the number of the host's registered volumes of the key that State now
	// applies to: after a lockout, every one of them (attached or not, stopped by the agent or
	// by itself); after an unlock or a rewrap pass, those the pass looked at. A service bounds
	// it by the key's current number of registrations.
	Volumes int `json:"volumes"`
	// Stopped is how many attach processes of the key's volumes the host's agent itself
	// told to stop for a lockout (an attach process that saw the event first and stopped by
	// itself is not counted); 0 for an unlock or a rewrap pass.
	Stopped int `json:"stopped"`
	// Cursor is the lifecycle feed cursor of the event acted on, or "" for a
	// reconciliation.
	Cursor string `json:"cursor,omitempty"`
	// Reporter is who posted the acknowledgement: the initiator of the context
	// [Service.Acknowledge] was called with ("kpapi:<API key id>" for the HTTP API, or the
	// service's own initiator for an embedded service).
	// Acknowledge sets it; a caller's value is ignored. A confirmation is the word of its
	// reporter: any holder of one of the instance's API keys may post one.
	Reporter string `json:"reporter"`
	// Time is the service clock when the acknowledgement was recorded; Acknowledge sets it.
	Time time.Time `json:"time"`
}

// ParseState returns the state named name ("active", "suspended", … as [State.String]
// gives them); any other name is refused with [ErrInvalidArgument].
func ParseState(name string) (State, error) {
	for _, s := range []State{StatePreActivation, StateActive, StateSuspended, StateDeactivated, StateDestroyed} {
		if s.String() == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: key state %q: want active, suspended, deactivated, destroyed or pre-activation", ErrInvalidArgument, shorten(name))
}

// CheckHostName checks the host name of an acknowledgement: 1 to [MaxHostNameLen] bytes of
// ASCII letters, digits and . _ - :. Another name is refused with [ErrInvalidArgument],
// saying what is wrong with it.
func CheckHostName(h string) error {
	if h == "" || len(h) > MaxHostNameLen {
		return fmt.Errorf("%w: host name must be 1 to %d bytes, got %d", ErrInvalidArgument, MaxHostNameLen, len(h))
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("._-:", c) >= 0) {
			return fmt.Errorf("%w: host name %q: byte %d is not a letter, digit, '.', '_', '-' or ':'", ErrInvalidArgument, shorten(h), i)
		}
	}
	return nil
}

// check validates the fields of an acknowledgement a caller gives (all but Time).
func (a *HostAck) check() error {
	if err := CheckHostName(a.Host); err != nil {
		return err
	}
	if a.KeyID == "" {
		return fmt.Errorf("%w: acknowledgement: key id is empty", ErrInvalidArgument)
	}
	known := false
	for _, t := range lifecycleTypes {
		known = known || t == a.Type
	}
	if !known {
		return fmt.Errorf("%w: acknowledgement type %q: want one of rotate, disable, enable, delete, restore, purge, sync", ErrInvalidArgument, shorten(a.Type))
	}
	st, err := ParseState(a.State)
	if err != nil {
		return fmt.Errorf("acknowledgement: %w", err)
	}
	if st == StatePreActivation {
		return fmt.Errorf("%w: acknowledgement state pre-activation: a host never enforces it (a key is never in use before it is active)", ErrInvalidArgument)
	}
	if len(a.Version) > maxAckVersionLen || !printableASCII(a.Version) {
		return fmt.Errorf("%w: acknowledgement version %q: want a key version id", ErrInvalidArgument, shorten(a.Version))
	}
	if a.Volumes < 0 {
		return fmt.Errorf("%w: acknowledgement volumes %d: must not be negative", ErrInvalidArgument, a.Volumes)
	}
	if a.Stopped < 0 || a.Stopped > a.Volumes {
		return fmt.Errorf("%w: acknowledgement stopped %d: must be 0 to volumes (%d): an attach process serves one volume", ErrInvalidArgument, a.Stopped, a.Volumes)
	}
	if _, err := ParseFeedCursor(a.Cursor); err != nil {
		return fmt.Errorf("acknowledgement: %w", err)
	}
	return nil
}

// checkAgainst checks an acknowledgement against its key r at now: its state must be one its
// type leads to (disable: suspended; delete, purge: destroyed; enable, restore: active, or
// deactivated once the key has expired; rotate, sync: a usable state, active or
// deactivated), and its volumes at most the key's registrations (regs).
func (a *HostAck) checkAgainst(r *keyRecord, now time.Time, regs int) error {
	var want []State
	switch a.Type {
	case LifecycleDisable:
		want = []State{StateSuspended}
	case LifecycleDelete, LifecyclePurge:
		want = []State{StateDestroyed}
	case LifecycleEnable, LifecycleRestore:
		want = []State{StateActive}
		if !r.Expiration.IsZero() && !now.Before(r.Expiration) {
			want = append(want, StateDeactivated)
		}
	default: // rotate, sync
		want = []State{StateActive, StateDeactivated}
	}
	st, _ := ParseState(a.State) // checked by check
	if !slices.Contains(want, st) {
		names := make([]string, len(want))
		for i, w := range want {
			names[i] = w.String()
		}
		return fmt.Errorf("%w: acknowledgement type %s with state %s: an event of type %s leaves key %s %s", ErrInvalidArgument,
			a.Type, a.State, a.Type, r.ID, strings.Join(names, " or "))
	}
	if a.Volumes > regs {
		return fmt.Errorf("%w: acknowledgement volumes %d: key %s has %d registration(s), the most volumes a host can act on",
			ErrInvalidArgument, a.Volumes, r.ID, regs)
	}
	return nil
}

// printableASCII reports whether s is printable ASCII (no controls, no spaces).
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// summary is the acknowledgement in words, for its audit event: what the host did, never
// anything secret.
func (a *HostAck) summary() string {
	s := fmt.Sprintf("host %s acknowledged %s: state %s, %d volume(s), %d attach process(es) stopped", a.Host, a.Type, a.State, a.Volumes, a.Stopped)
	if a.Cursor != "" {
		s += ", feed event " + a.Cursor
	} else {
		s += ", by reconciliation"
	}
	return s
}

// Acknowledge records a host's acknowledgement of a root key's lifecycle event (or of the
// key's state, found by a reconciliation), replacing the host's previous one for the key, and
// an audit event ([ActionEventAck]) saying what the host reported. The service sets a.Time.
// A malformed acknowledgement is refused with [ErrInvalidArgument] naming the field; an
// unknown key with [ErrKeyNotFound], a standard key with [ErrNotRootKey], a purged key with
// [ErrKeyPurged] (its acknowledgements were deleted with it). A key keeps those of at most
// [MaxHostAcksPerKey] hosts.
func (s *Service) Acknowledge(ctx context.Context, a HostAck) error {
	if err := a.check(); err != nil {
		return s.refuse(ctx, ActionEventAck, a.KeyID, err)
	}
	s.mkMu.RLock()
	err := s.batch(ctx, func(tx storeTx) error {
		r, err := ackedKey(tx, a.KeyID)
		if err != nil {
			return err
		}
		regs, err := tx.countRegs(r.ID)
		if err != nil {
			return err
		}
		now := s.clock.Now()
		if err := a.checkAgainst(r, now, regs); err != nil {
			return err
		}
		known, err := tx.hasAck(r.ID, a.Host)
		if err != nil {
			return err
		}
		if !known {
			n, err := tx.countAcks(r.ID)
			if err != nil {
				return err
			}
			if n >= s.maxHostAcks {
				return fmt.Errorf("%w: key %s already has acknowledgements of %d hosts, the most kept per key", ErrInvalidArgument, r.ID, n)
			}
		}
		ack := a
		ack.Time, ack.Reporter = now, s.who(ctx)
		if err := tx.putAck(&ack); err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionEventAck, r, r.ID, nil)
		ev.KeyVersion, ev.Reason = a.Version, a.summary()
		return s.appendEvent(tx, ev)
	})
	s.mkMu.RUnlock()
	if err != nil {
		return s.refuse(ctx, ActionEventAck, a.KeyID, err)
	}
	return nil
}

// HostAcks returns the latest acknowledgement of each host that acknowledged an event of
// root key keyID, sorted by host name (none: an empty slice). An unknown key is
// [ErrKeyNotFound]. Reading them records no audit event (a fleet view polls them, as
// followers poll the lifecycle feed).
func (s *Service) HostAcks(ctx context.Context, keyID string) ([]HostAck, error) {
	var out []HostAck
	err := s.view(ctx, func(tx storeTx) error {
		if _, err := tx.key(keyID); err != nil {
			return err
		}
		var err error
		out, err = tx.keyAcks(keyID)
		return err
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []HostAck{}
	}
	return out, nil
}

// ForgetHostAck deletes host's acknowledgement of root key keyID, so that the host no longer
// counts for the key and no longer takes one of its [MaxHostAcksPerKey] places (a host
// decommissioned, or names a token holder filled the key's places with), and records an
// audit event ([ActionForgetAck]) naming the host. Forgetting a host that has no
// acknowledgement of the key is not an error (the event says so). A malformed host name is
// refused with [ErrInvalidArgument], an unknown key with [ErrKeyNotFound], a standard key with
// [ErrNotRootKey], a purged key with [ErrKeyPurged] (its acknowledgements were deleted with
// it).
func (s *Service) ForgetHostAck(ctx context.Context, keyID, host string) error {
	if err := CheckHostName(host); err != nil {
		return s.refuse(ctx, ActionForgetAck, keyID, err)
	}
	s.mkMu.RLock() // as every change: no copy of the store runs meanwhile
	err := s.update(ctx, func(tx storeTx) error {
		r, err := ackedKey(tx, keyID)
		if err != nil {
			return err
		}
		had, err := tx.deleteAck(r.ID, host)
		if err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionForgetAck, r, r.ID, nil)
		if had {
			ev.Reason = "acknowledgement of host " + host + " forgotten"
		} else {
			ev.Reason = "host " + host + " had no acknowledgement to forget"
		}
		return s.appendEvent(tx, ev)
	})
	s.mkMu.RUnlock()
	if err != nil {
		return s.refuse(ctx, ActionForgetAck, keyID, err)
	}
	return nil
}

// ackedKey reads the key whose acknowledgements are recorded or forgotten: a root key, not
// purged (a purged key's acknowledgements were deleted with it).
func ackedKey(tx storeTx, id string) (*keyRecord, error) {
	r, err := tx.key(id)
	if err != nil {
		return nil, err
	}
	switch {
	case r.Type != RootKey:
		return nil, fmt.Errorf("%w: key %s is a standard key: acknowledgements are of root keys' lifecycle events", ErrNotRootKey, r.ID)
	case r.Purged:
		return nil, fmt.Errorf("%w: key %s: its acknowledgements were deleted", ErrKeyPurged, r.ID)
	}
	return r, nil
}

// Confirms reports whether the acknowledgement confirms key k's current state: the host
// enforces that state (a.State), and said so at or after the key entered it (a.Time is not
// before k.LastStateChange). For a key out of use (see [State.Unwraps]) that is a confirmed
// lockout.
func (a HostAck) Confirms(k *Key) bool {
	return a.State == k.State.String() && !a.Time.Before(k.LastStateChange)
}
