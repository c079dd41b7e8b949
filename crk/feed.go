package crk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Lifecycle event types: what happened to a key that protects registered resources. A
// service that registered resources with the key responds to each (Key Protect's
// notifications to registered services).
const (
	// LifecycleRotate: a new latest version (by hand, or by the rotation policy when the
	// event's Policy is set). Resources on older versions should be rewrapped.
	LifecycleRotate = "rotate"
	// LifecycleDisable: the key is suspended; its resources must stop being served.
	LifecycleDisable = "disable"
	// LifecycleEnable: a suspended key is active again.
	LifecycleEnable = "enable"
	// LifecycleDelete: the key is destroyed (restorable for 30 days); its resources must
	// stop being served.
	LifecycleDelete = "delete"
	// LifecycleRestore: a deleted key is active again.
	LifecycleRestore = "restore"
	// LifecyclePurge: a deleted key's material is gone for good.
	LifecyclePurge = "purge"
	// LifecycleSync: the key's resources are asked again to come to its latest version (Key
	// Protect's "sync associated resources").
	LifecycleSync = "sync"
)

// lifecycleTypes maps the audit actions that make lifecycle events to their type.
var lifecycleTypes = map[string]string{
	ActionRotate:  LifecycleRotate,
	ActionDisable: LifecycleDisable,
	ActionEnable:  LifecycleEnable,
	ActionDelete:  LifecycleDelete,
	ActionRestore: LifecycleRestore,
	ActionPurge:   LifecyclePurge,
	ActionSync:    LifecycleSync,
}

// LifecycleEvent is one event of the lifecycle feed. It never holds key material.
type LifecycleEvent struct {
	// Cursor is the event's position in the feed: pass it to [Service.Lifecycle] to
	// receive the events after this one. It is opaque to callers.
	Cursor string `json:"cursor"`
	// Time is the service clock at the event.
	Time time.Time `json:"time"`
	// Type is one of the Lifecycle* constants.
	Type   string `json:"type"`
	KeyID  string `json:"keyId"`
	KeyCRN string `json:"keyCrn"`
	// State is the key's state after the event: active, suspended, deactivated or
	// destroyed.
	State string `json:"state"`
	// OldVersion is the version that was latest before a rotation; "" for other types.
	OldVersion string `json:"oldVersion,omitempty"`
	// NewVersion is the key's latest version after the event.
	NewVersion string `json:"newVersion"`
	// Policy is set on a rotation fired by the key's rotation policy.
	Policy bool `json:"policy,omitempty"`
	// Initiator is who acted.
	Initiator string `json:"initiator"`
	// Registrations is how many resources were registered with the key at the event (0 for
	// a key that protects none, or none any more).
	Registrations int `json:"registrations"`
}

// LifecyclePage is an answer of [Service.Lifecycle].
type LifecyclePage struct {
	// Events are the events after the cursor asked for, oldest first.
	Events []LifecycleEvent `json:"events"`
	// Cursor is where to resume: the last event's cursor, or the feed's head when there was
	// none (for a start from the head, the head itself).
	Cursor string `json:"cursor"`
}

// FeedRetention bounds the lifecycle feed. Events beyond it are deleted, oldest first; a
// follower whose cursor is older than the oldest event kept gets [ErrResyncNeeded].
type FeedRetention struct {
	// MaxAge deletes events older than this by the service clock; 0 means
	// DefaultFeedMaxAge, a negative value any age.
	MaxAge time.Duration
	// MaxCount keeps at most this many events; 0 means DefaultFeedMaxCount, a negative
	// value no limit.
	MaxCount int
}

// The default lifecycle feed retention: events are kept for 30 days, at most 100,000 of them.
const (
	DefaultFeedMaxAge   = 30 * 24 * time.Hour
	DefaultFeedMaxCount = 100_000
)

type policyKey struct{}

// withPolicy marks ctx as the rotation policy's, for the lifecycle event's Policy field.
func withPolicy(ctx context.Context) context.Context {
	return context.WithValue(ctx, policyKey{}, true)
}

func byPolicy(ctx context.Context) bool {
	v, _ := ctx.Value(policyKey{}).(bool)
	return v
}

// feedEvent builds the lifecycle event of a committed action on r, or returns nil when the
// action is not a lifecycle event or r is not a root key. old is the latest version before
// the action. Keys without registrations have events too: a resource whose registration was
// deleted (so that a key with preventKeyDeletion registrations can be deleted) still follows
// its key, and must see the delete.
func (s *Service) feedEvent(ctx context.Context, tx storeTx, action string, r *keyRecord, old string, now time.Time) (*LifecycleEvent, error) {
	typ, ok := lifecycleTypes[action]
	if !ok || r.Type != RootKey {
		return nil, nil
	}
	regs, err := tx.keyRegs(r.ID)
	if err != nil {
		return nil, err
	}
	ev := &LifecycleEvent{Time: now, Type: typ, KeyID: r.ID, KeyCRN: r.CRN, State: r.State.String(),
		NewVersion: r.latest().ID, Initiator: s.who(ctx), Registrations: len(regs)}
	if typ == LifecycleRotate {
		ev.OldVersion, ev.Policy = old, byPolicy(ctx)
	}
	return ev, nil
}

// putFeedEvent appends ev to the feed in tx, setting its cursor, and applies the retention
// to at most pruneBatch old events.
func (s *Service) putFeedEvent(tx storeTx, ev *LifecycleEvent) error {
	if err := tx.putFeed(ev); err != nil {
		return err
	}
	_, err := s.pruneFeed(tx, pruneBatch)
	return err
}

// pruneFeed deletes the oldest feed events beyond the retention, at most limit of them (no
// limit if limit <= 0), records the last sequence number deleted, and returns how many it
// deleted.
func (s *Service) pruneFeed(tx storeTx, limit int) (int, error) {
	maxCount, maxAge := s.feedRetention.MaxCount, s.feedRetention.MaxAge
	if maxCount == 0 {
		maxCount = DefaultFeedMaxCount
	}
	if maxAge == 0 {
		maxAge = DefaultFeedMaxAge
	}
	var cutoff time.Time
	if maxAge > 0 {
		cutoff = s.clock.Now().Add(-maxAge)
	}
	return tx.pruneFeed(maxCount, cutoff, limit)
}

// notifyFeed wakes the callers of [Service.WaitLifecycle]: call it after a transaction that
// appended feed events committed.
func (s *Service) notifyFeed() {
	s.feedMu.Lock()
	close(s.feedChanged)
	s.feedChanged = make(chan struct{})
	s.feedMu.Unlock()
}

func (s *Service) feedSignal() <-chan struct{} {
	s.feedMu.Lock()
	defer s.feedMu.Unlock()
	return s.feedChanged
}

// ParseFeedCursor checks a lifecycle feed cursor: "" (the head) or the cursor of an event.
func ParseFeedCursor(cursor string) (uint64, error) {
	if cursor == "" {
		return 0, nil
	}
	seq, err := strconv.ParseUint(cursor, 10, 64)
	if err != nil || strconv.FormatUint(seq, 10) != cursor {
		return 0, fmt.Errorf("%w: lifecycle feed cursor %q: want the cursor of an event, or empty for the head", ErrInvalidArgument, shorten(cursor))
	}
	return seq, nil
}

// readFeed reads at most limit events (0: no limit) after cursor from tx.
func readFeed(tx storeTx, cursor string, limit int) (LifecyclePage, error) {
	if limit < 0 {
		return LifecyclePage{}, fmt.Errorf("%w: lifecycle feed limit %d", ErrInvalidArgument, limit)
	}
	after, err := ParseFeedCursor(cursor)
	if err != nil {
		return LifecyclePage{}, err
	}
	scanFrom := after
	if cursor == "" {
		scanFrom = math.MaxUint64 // the head only
	}
	events, head, pruned, err := tx.feed(scanFrom, limit)
	if err != nil {
		return LifecyclePage{}, err
	}
	page := LifecyclePage{Events: []LifecycleEvent{}, Cursor: strconv.FormatUint(head, 10)}
	switch {
	case cursor == "":
		return page, nil
	case after > head:
		return LifecyclePage{}, fmt.Errorf("%w: cursor %d is ahead of the feed's last event %d (another store, or one restored from an older copy)", ErrResyncNeeded, after, head)
	case after < pruned:
		return LifecyclePage{}, fmt.Errorf("%w: the events after cursor %d up to %d were deleted by the feed's retention", ErrResyncNeeded, after, pruned)
	}
	for _, ev := range events {
		page.Events = append(page.Events, ev)
		page.Cursor = ev.Cursor
	}
	return page, nil
}

// Lifecycle returns at most limit (0: no limit) lifecycle events after cursor, oldest first,
// and the cursor to resume from. An empty cursor returns no events and the feed's head: the
// place to start following after a reconciliation. A cursor the feed cannot continue from is
// refused with [ErrResyncNeeded].
//
// The feed holds an event for every rotation (by hand or by policy), disable, enable,
// delete, restore, purge and sync of a root key, committed in the
// same transaction as the change itself: an event is in the feed if and only if its change
// took effect, whatever crashes.
func (s *Service) Lifecycle(ctx context.Context, cursor string, limit int) (LifecyclePage, error) {
	var page LifecyclePage
	err := s.view(ctx, func(tx storeTx) error {
		var err error
		page, err = readFeed(tx, cursor, limit)
		return err
	})
	return page, err
}

// WaitLifecycle is [Service.Lifecycle] that, when no event follows cursor, waits up to wait
// for one (a long poll). It returns an empty page when wait passes first, and ctx's error if
// ctx ends first. An empty cursor returns the head at once. Changes made by other processes
// to a store this service opened read-only are not seen.
func (s *Service) WaitLifecycle(ctx context.Context, cursor string, limit int, wait time.Duration) (LifecyclePage, error) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		changed := s.feedSignal() // before reading: a commit after the read closes it
		page, err := s.Lifecycle(ctx, cursor, limit)
		if err != nil || len(page.Events) > 0 || cursor == "" || wait <= 0 {
			return page, err
		}
		select {
		case <-changed:
		case <-timeout:
			return page, nil
		case <-ctx.Done():
			return LifecyclePage{}, ctx.Err()
		case <-s.closing:
			return LifecyclePage{}, errors.New("crk: lifecycle feed: the service is closing")
		}
	}
}

// ReadLifecycle reads the lifecycle feed of the store at path as [Service.Lifecycle] does,
// without the master key and without starting a service: it opens the store read-only,
// waiting at most timeout for another process's lock, and holds it only while it reads. A
// process that follows the feed of a store other processes write polls with it.
func ReadLifecycle(path, cursor string, limit int, timeout time.Duration) (LifecyclePage, error) {
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return LifecyclePage{}, fmt.Errorf("crk: opening store %s read-only: %w", path, err)
	}
	defer db.Close()
	var page LifecyclePage
	err = db.View(func(btx *bolt.Tx) error {
		tx := boltTx{tx: btx}
		if btx.Bucket(bucketMeta) == nil {
			return fmt.Errorf("crk: store %s has no meta bucket: not a key service store", path)
		}
		var err error
		page, err = readFeed(tx, cursor, limit)
		return err
	})
	return page, err
}
