package crk

import (
	"fmt"
	"time"
)

// State is a key's lifecycle state, with Key Protect's numbering (it is part of the API).
type State int

// Key states.
const (
	StatePreActivation State = 0
	StateActive        State = 1
	StateSuspended     State = 2
	StateDeactivated   State = 3
	StateDestroyed     State = 5
)

// Unwraps reports whether a key in this state still unwraps: active, or deactivated (an
// expired key unwraps and rewraps but wraps nothing new). The volumes of a key in any other
// state must not be served: they are locked out.
func (s State) Unwraps() bool { return s == StateActive || s == StateDeactivated }

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StatePreActivation:
		return "pre-activation"
	case StateActive:
		return "active"
	case StateSuspended:
		return "suspended"
	case StateDeactivated:
		return "deactivated"
	case StateDestroyed:
		return "destroyed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// KeyType tells root keys (wrap-capable, never extractable, rotatable) from standard keys
// (extractable, no wrap or rotation).
type KeyType string

// Key types.
const (
	RootKey     KeyType = "root"
	StandardKey KeyType = "standard"
)

// Version identifies one version of a key's material.
type Version struct {
	ID           string
	CreationDate time.Time
}

// RotationPolicy rotates a generated root key every IntervalMonths months.
type RotationPolicy struct {
	Enabled        bool
	IntervalMonths int
	CreationDate   time.Time
	LastUpdateDate time.Time
}

// Key is a key's metadata as the service reports it. It never carries root key material.
type Key struct {
	ID          string
	Name        string
	Description string
	CRN         string
	Type        KeyType
	// Imported keys were created from caller material and rotate only with new material.
	Imported bool
	// Extractable is true for standard keys, whose Payload GetKey returns.
	Extractable bool
	State       State
	CreatedBy   string

	CreationDate time.Time
	// LastUpdateDate is when an action last changed the key (its state, material, policy,
	// or metadata); zero until the first change, as in Key Protect.
	LastUpdateDate time.Time
	// LastRotateDate is zero until the first rotation.
	LastRotateDate time.Time
	// LastStateChange is when an action last set the key's state: its creation, or the
	// last disable, enable, delete or restore (not the passing of the expiration date). A
	// host's acknowledgement recorded at or after it confirms the current state.
	LastStateChange time.Time
	// KeyVersion is the latest version: the one wraps use.
	KeyVersion Version
	// ExpirationDate, when set, moves the key to Deactivated once passed.
	ExpirationDate time.Time
	// RotationPolicy is nil when none is set.
	RotationPolicy *RotationPolicy
	// DualAuthDelete is nil when the key has no dual authorization delete policy.
	DualAuthDelete *DualAuthDelete

	Deleted      bool
	DeletionDate time.Time
	DeletedBy    string

	// Aliases are the key's other names (sorted), each unique in the instance: every method
	// of the API that takes a key accepts one in place of the id.
	Aliases []string
	// KeyRingID is the key ring the key belongs to: "default" unless created in or moved to
	// another.
	KeyRingID string

	// Payload is the material of a standard key, returned by GetKey only.
	Payload []byte
}

// VersionInfo describes one version in a listing.
type VersionInfo struct {
	Version
	// Registrations is the number of registrations whose keyVersion is this version.
	Registrations int
	// Destroyed is true once Prune has destroyed the version's material.
	Destroyed bool
}

// Registration records that a resource (by CRN) is protected by a key, and with which
// version its data key is currently wrapped.
type Registration struct {
	KeyID              string
	ResourceCRN        string
	KeyVersion         Version
	Description        string
	PreventKeyDeletion bool
	CreatedBy          string
	UpdatedBy          string
	CreationDate       time.Time
	LastUpdated        time.Time
}

// Time rules of the service, as Key Protect applies them.
const (
	// RotationInterval is the least time between two rotations of a key.
	RotationInterval = time.Hour
	// ActionCooldown is the least time between an action and an enable or restore.
	ActionCooldown = 30 * time.Second
	// SyncInterval is the least time between two syncs of a key.
	SyncInterval = time.Hour
	// RestoreWindow is how long a deleted key can be restored (unless purged first).
	RestoreWindow = 30 * 24 * time.Hour
	// PurgeWait is the least time between a key's deletion and its purge (Key Protect's
	// rule: a key can be purged 4 hours after its deletion; a purged key cannot be restored).
	PurgeWait = 4 * time.Hour
)
