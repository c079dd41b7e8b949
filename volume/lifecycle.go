package volume

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Key lifecycle event types, as a key service's lifecycle feed names them.
const (
	KeyRotated  = "rotate"
	KeyDisabled = "disable"
	KeyEnabled  = "enable"
	KeyDeleted  = "delete"
	KeyRestored = "restore"
	KeyPurged   = "purge"
	KeySynced   = "sync"
)

// Key states, as [KeyStatus] and [KeyEvent] name them.
const (
	KeyStateActive      = "active"
	KeyStateSuspended   = "suspended"
	KeyStateDeactivated = "deactivated"
	KeyStateDestroyed   = "destroyed"
)

// KeyStatus is what a volume's host needs to know of its root key.
type KeyStatus struct {
	// State is one of the KeyState* constants (or another state name a service reports).
	State string
	// LatestVersion is the version new wraps use and rewraps move to.
	LatestVersion string
}

// Usable reports whether the key unwraps: active or deactivated (an expired key still
// unwraps). A volume whose key is not usable must not be served.
func (s KeyStatus) Usable() bool {
	return s.State == KeyStateActive || s.State == KeyStateDeactivated
}

// KeyEvent is one event of a key service's lifecycle feed.
type KeyEvent struct {
	// Cursor is the event's place in the feed (opaque).
	Cursor string
	Time   time.Time
	// Type is one of the Key* event constants (KeyRotated, KeyDisabled, ...).
	Type  string
	KeyID string
	// KeyCRN is the key's CRN, as the service names it.
	KeyCRN string
	// State is the key's state after the event (a KeyState* constant).
	State string
	// OldVersion is the latest version before a rotation.
	OldVersion string
	// NewVersion is the key's latest version after the event.
	NewVersion string
	// Policy is set on a rotation fired by the key's rotation policy.
	Policy bool
	// Initiator is who acted, as the service names it.
	Initiator string
	// Registrations is how many resources were registered with the key at the event.
	Registrations int
}

// Locks reports whether the event takes the key out of use: a disable, delete or purge.
func (e KeyEvent) Locks() bool {
	return e.Type == KeyDisabled || e.Type == KeyDeleted || e.Type == KeyPurged
}

// CursorAfter reports whether feed cursor next comes after cursor: a follower takes a page
// only if it moves on from its own cursor. Cursors of the feeds crkvol serves are decimal
// sequence numbers ("" is the start); a cursor that is not one is taken as after whenever it
// differs, since only its service can order it.
func CursorAfter(next, cursor string) bool {
	if next == "" || next == cursor {
		return false
	}
	n, err1 := strconv.ParseUint(next, 10, 64)
	c, err2 := strconv.ParseUint(cursor, 10, 64)
	if cursor == "" {
		c, err2 = 0, nil
	}
	if err1 != nil || err2 != nil {
		return true
	}
	return n > c
}

// KeyEventPage is one answer of a [KeyFeed].
type KeyEventPage struct {
	// Events are the events after the cursor asked for, oldest first.
	Events []KeyEvent
	// Cursor is where to resume: the last event's cursor, or the head when there was none.
	Cursor string
}

// ErrResyncNeeded means a lifecycle feed cannot continue from the cursor given (its events
// were deleted by the feed's retention, or the cursor is not the feed's). The follower
// reconciles every volume against its key's current state, then follows from the head.
// Implementations of [KeyFeed] wrap it beside their service's own error.
var ErrResyncNeeded = errors.New("lifecycle feed resync needed")

// KeyFeed is a key service's ordered, durable stream of the lifecycle events of its root
// keys. Package crkvol/volume/kms implements it over an in-process
// service, over a store another process writes, and over the HTTP API of a remote service.
type KeyFeed interface {
	// KeyEvents returns the events after cursor, oldest first, waiting up to wait for one
	// when none follows yet (an empty page when the wait passes). An empty cursor returns
	// no events and the feed's head at once: follow from there after a reconciliation.
	// A cursor the feed cannot continue from is an error matching ErrResyncNeeded.
	KeyEvents(ctx context.Context, cursor string, wait time.Duration) (KeyEventPage, error)
}

// KeyAck is a host's acknowledgement of what it did for a root key's lifecycle: the state it
// now enforces for the key's volumes (a lockout, an unlock), how many volumes it acted on and
// the version a rewrap brought them to. It holds nothing secret.
type KeyAck struct {
	// Host is the host's name: 1 to 253 bytes of ASCII letters, digits and . _ - :.
	Host  string
	KeyID string
	// Type is the lifecycle event type acted on (a Key* event constant); a reconciliation
	// gives the type that leads to the state it found (KeyDisabled for suspended, ...).
	Type string
	// State is the key state the host now enforces (a KeyState* constant).
	State string
	// Version is the key version the host's volumes are on, when a rewrap pass brought them
	// there; it may be empty.
	Version string
	// Volumes is the number of the host's registered volumes of the key that State now
	// applies to: every one of them for a lockout (attached or not), those a rewrap pass
	// looked at for an unlock or a rewrap.
	Volumes int
	// Stopped is how many attach processes of the key's volumes the agent told to stop for
	// a lockout (one that stopped by itself first is not counted); 0 otherwise.
	Stopped int
	// Cursor is the feed cursor of the event acted on, "" for a reconciliation.
	Cursor string
}

// KeyAcker records hosts' acknowledgements with the key service whose lifecycle feed they
// follow, so that its operators see which hosts confirmed a lockout. Package
// crkvol/volume/kms implements it over an in-process service and over the HTTP API of a
// remote one. A refusal (a malformed acknowledgement, an unknown or purged key) matches
// ErrKeyRefused beside the service's own sentinel.
type KeyAcker interface {
	// AckKeyEvent records a, replacing the host's previous acknowledgement of the key.
	AckKeyEvent(ctx context.Context, a KeyAck) error
}
