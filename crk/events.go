package crk

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"
)

// Activity Tracker actions recorded by the service.
const (
	ActionCreate          = "kms.secrets.create"
	ActionRead            = "kms.secrets.read"
	ActionReadMetadata    = "kms.secrets-metadata.read"
	ActionList            = "kms.secrets.list"
	ActionListVersions    = "kms.secrets-key-versions.list"
	ActionListRegs        = "kms.registrations.list"
	ActionRotate          = "kms.secrets.rotate"
	ActionWrap            = "kms.secrets.wrap"
	ActionUnwrap          = "kms.secrets.unwrap"
	ActionRewrap          = "kms.secrets.rewrap"
	ActionDisable         = "kms.secrets.disable"
	ActionEnable          = "kms.secrets.enable"
	ActionDelete          = "kms.secrets.delete"
	ActionRestore         = "kms.secrets.restore"
	ActionPurge           = "kms.secrets.purge"
	ActionSync            = "kms.secrets.sync"
	ActionExpire          = "kms.secrets.expire"
	ActionPolicyWrite     = "kms.policies.write"
	ActionRegister        = "kms.registrations.create"
	ActionRegUpdate       = "kms.registrations.write"
	ActionRegDelete       = "kms.registrations.delete"
	ActionPrune           = "kms.secrets-key-versions.delete"
	ActionRotationHook    = "kms.secrets.rotate.hook"
	ActionMasterKeyRotate = "kms.instance.masterkey.rotate"
	// Aliases and key rings (aliases.go, keyrings.go), by Activity Tracker's current names.

	// ActionAliasCreate: an alias was added to a key.
	ActionAliasCreate = "kms.secrets-alias.create"
	// ActionAliasDelete: an alias was removed from a key.
	ActionAliasDelete = "kms.secrets-alias.delete"
	// ActionKeyRingCreate: a key ring was created.
	ActionKeyRingCreate = "kms.key-rings.create"
	// ActionKeyRingList: the key rings were listed.
	ActionKeyRingList = "kms.key-rings.list"
	// ActionKeyRingDelete: a key ring was deleted.
	ActionKeyRingDelete = "kms.key-rings.delete"
	// ActionPatch: a key's metadata was changed (PATCH: moved to another key ring).
	ActionPatch = "kms.secrets.patch"
)

// Event outcomes.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
)

// Event is one audit record, in the manner of an Activity Tracker event. It never holds key
// material, plaintext or ciphertext.
type Event struct {
	Seq         uint64    `json:"seq"`
	Time        time.Time `json:"time"`
	Action      string    `json:"action"`
	Outcome     string    `json:"outcome"`
	Severity    string    `json:"severity"`
	KeyID       string    `json:"keyId,omitempty"`
	KeyCRN      string    `json:"keyCrn,omitempty"`
	KeyVersion  string    `json:"keyVersion,omitempty"`
	ResourceCRN string    `json:"resourceCrn,omitempty"`
	Initiator   string    `json:"initiator"`
	// Reason is the error of a failure; for a success of [ActionEventAck], what the host
	// acknowledged (host, lifecycle type, state, volumes, attach processes stopped); for a
	// success of [ActionForgetAck], the host forgotten; for a success of
	// [ActionImportTokenCreate] or [ActionImportTokenRead], the token's expiration date and
	// retrieval counts.
	Reason string `json:"reason,omitempty"`
}

// EventFilter selects events and pages through them. Zero fields match everything.
type EventFilter struct {
	// KeyID selects the events of one key. It must name a key the service knows (deleted
	// keys included) or one that events name; another id is refused with ErrKeyNotFound.
	KeyID  string
	Action string
	// Outcome selects the events of one outcome: OutcomeSuccess or OutcomeFailure.
	Outcome string
	// From and To bound the event time: From <= t < To.
	From, To time.Time
	// Limit caps a page at Limit events; 0 means no limit (one page with every match).
	Limit int
	// OldestFirst lists the oldest events first; by default the newest come first.
	OldestFirst bool
	// Cursor continues a listing after the last event of a previous page: pass the Next of
	// that page, with the same order and filter. Empty starts at the newest (or oldest)
	// event.
	Cursor string
}

// EventPage is one page of events.
type EventPage struct {
	Events []Event
	// Next is the cursor of the following page (for EventFilter.Cursor) when more events
	// matched than the page holds, and empty when there is no more. Events stored after the
	// listing may still follow an oldest-first listing whose Next was empty.
	Next string
}

// EventRetention bounds the audit log. Events beyond it are deleted, oldest first, in the
// transactions that append events (at most pruneBatch per transaction) and when the store
// opens (all of them).
type EventRetention struct {
	// MaxAge deletes events older than this, by the service clock; 0 keeps events of any
	// age. Age counts from the time an event is filed under: its own time, or a later one
	// when the clock was stepped back (keys never go back in time), so after a clock that ran
	// ahead is corrected, the events written meanwhile are kept that much longer, never less.
	MaxAge time.Duration
	// MaxCount keeps at most this many events; 0 means DefaultEventMaxCount, a negative
	// value no limit.
	MaxCount int
}

// DefaultEventMaxCount is the number of events kept when EventRetention.MaxCount is 0:
// about 300 MiB of store at typical event sizes.
const DefaultEventMaxCount = 1 << 20

// pruneBatch is the most events one appending transaction deletes, so that tightening the
// retention of a large store does not make one request slow: the backlog is deleted at open,
// or over the following appends.
const pruneBatch = 64

func severity(action string) string {
	switch action {
	case ActionDelete, ActionPurge, ActionMasterKeyRotate:
		return "critical"
	case ActionRotate, ActionRestore, ActionEnable, ActionDisable, ActionPrune,
		ActionSetKeyForDeletion, ActionUnsetKeyForDeletion, ActionInstancePolicyWrite:
		return "warning"
	}
	return "normal"
}

// newEvent builds an event for key r (which may be nil) with the outcome of err.
func (s *Service) newEvent(ctx context.Context, action string, r *keyRecord, keyID string, err error) *Event {
	ev := &Event{
		Time:      s.clock.Now(),
		Action:    action,
		Outcome:   OutcomeSuccess,
		Severity:  severity(action),
		KeyID:     keyID,
		Initiator: s.who(ctx),
	}
	if keyID != "" {
		ev.KeyCRN = s.crn(keyID)
	}
	if r != nil {
		ev.KeyID, ev.KeyCRN = r.ID, r.CRN
	}
	if err != nil {
		ev.Outcome = OutcomeFailure
		ev.Reason = err.Error()
	}
	return ev
}

// The events bucket is keyed by time, then sequence: 8 bytes of big-endian Unix time in
// nanoseconds and the 8-byte big-endian sequence number of the event. The time part never
// goes backwards (a new event whose clock reads earlier than the last key takes the last
// key's time), so keys grow with the sequence: paging by key is stable while events arrive,
// and the oldest events are the first keys.
const eventKeyLen = 16

func eventKey(nanos, seq uint64) []byte {
	k := make([]byte, eventKeyLen)
	binary.BigEndian.PutUint64(k, nanos)
	binary.BigEndian.PutUint64(k[8:], seq)
	return k
}

// eventNanos returns the Unix time in nanoseconds a key is filed under: t, clamped to the
// range a key can hold.
func eventNanos(t time.Time) uint64 {
	switch {
	case t.Before(time.Unix(0, 0)):
		return 0
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return uint64(t.UnixNano())
}

// appendEvent stores an event in tx, then applies the retention. Every error wraps ErrAudit.
func (s *Service) appendEvent(tx storeTx, ev *Event) error {
	return s.appendEvents(tx, []*Event{ev})
}

// appendEvents stores events in tx, in order, then applies the retention to at most
// pruneBatch old events per event stored. Every error wraps ErrAudit.
func (s *Service) appendEvents(tx storeTx, evs []*Event) error {
	if s.testOnlyAuditFault != nil {
		for _, ev := range evs {
			if err := s.testOnlyAuditFault(ev); err != nil {
				return auditError(ev.Action, err)
			}
		}
	}
	if err := tx.putEvents(evs); err != nil {
		if len(evs) == 1 {
			return auditError(evs[0].Action, err)
		}
		return auditError(fmt.Sprintf("%d events", len(evs)), err)
	}
	if _, err := s.pruneEvents(tx, pruneBatch*len(evs)); err != nil {
		return auditError("pruning", err)
	}
	return nil
}

// pruneEvents deletes the oldest events beyond the retention, at most limit of them (no limit
// if limit <= 0), and returns how many it deleted.
func (s *Service) pruneEvents(tx storeTx, limit int) (int, error) {
	maxCount := s.retention.MaxCount
	if maxCount == 0 {
		maxCount = DefaultEventMaxCount
	}
	var cutoff uint64
	if s.retention.MaxAge > 0 {
		cutoff = eventNanos(s.clock.Now().Add(-s.retention.MaxAge))
	}
	return tx.pruneEvents(maxCount, cutoff, limit)
}

// record stores an event durably before returning, and returns an error wrapping ErrAudit
// if it could not. Used for operations that change no state (wraps, reads) and for refusals.
// Events go through one writer goroutine that commits everything queued in a single
// transaction (group commit): a lone caller waits for one commit, concurrent callers share
// one.
func (s *Service) record(ev *Event) error {
	if s.readOnly {
		return nil // a read-only store cannot record events (see Options.ReadOnly)
	}
	done := make(chan error, 1)
	select {
	case s.events <- eventReq{ev: ev, done: done}:
	case <-s.closing:
		return fmt.Errorf("crk: %w: %s: the service is closing", ErrAudit, ev.Action)
	}
	if err := <-done; err != nil {
		if errors.Is(err, ErrAudit) {
			return err
		}
		return auditError(ev.Action, err)
	}
	return nil
}

type eventReq struct {
	ev *Event
	// evs, when set, are the events of one batch call, stored in one transaction with ev
	// unused (see recordAll).
	evs  []*Event
	done chan error
}

// recordAll is record for the events of one batch call: they are handed to the event writer
// as one request, so they are committed together, in one transaction (shared with other
// callers' events), or not at all.
func (s *Service) recordAll(evs []*Event) error {
	if s.readOnly || len(evs) == 0 {
		return nil
	}
	what := fmt.Sprintf("%d events (%s)", len(evs), evs[0].Action)
	done := make(chan error, 1)
	select {
	case s.events <- eventReq{evs: evs, done: done}:
	case <-s.closing:
		return fmt.Errorf("crk: %w: %s: the service is closing", ErrAudit, what)
	}
	if err := <-done; err != nil {
		if errors.Is(err, ErrAudit) {
			return err
		}
		return auditError(what, err)
	}
	return nil
}

// events returns the events of a request: ev, or a batch call's evs.
func (r eventReq) events() []*Event {
	if r.evs != nil {
		return r.evs
	}
	return []*Event{r.ev}
}

// eventWriter commits queued events until the service closes.
func (s *Service) eventWriter() {
	defer close(s.writerDone)
	for {
		var batch []eventReq
		select {
		case r := <-s.events:
			batch = append(batch, r)
		case <-s.closing:
			return
		}
	drain:
		for len(batch) < 1000 {
			select {
			case r := <-s.events:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		evs := make([]*Event, 0, len(batch))
		for _, r := range batch {
			if r.evs != nil {
				evs = append(evs, r.evs...)
			} else {
				evs = append(evs, r.ev)
			}
		}
		// The writer's transactions are bounded by the store's own retry time, not by
		// any caller's context: each stores the events of many callers.
		err := s.update(context.Background(), func(tx storeTx) error { return s.appendEvents(tx, evs) })
		if err != nil && len(batch) > 1 && !errors.Is(err, ErrUnavailable) {
			// One bad event must not fail the others: store each alone. Not when the store
			// is out of reach: each would wait out a retry window of its own, and fail the
			// same way.
			for _, r := range batch {
				r.done <- s.update(context.Background(), func(tx storeTx) error { return s.appendEvents(tx, r.events()) })
			}
			continue
		}
		for _, r := range batch {
			r.done <- err
		}
	}
}

// refuse records a failure event for a refused or failed request and returns err, joined
// with the audit error if the event could not be stored.
// An operation that failed because its caller abandoned it (the error is ctx's) is not
// recorded either: it was not refused. A refusal is recorded whatever became of ctx since.
func (s *Service) refuse(ctx context.Context, action, keyID string, err error) error {
	abandoned := ctx.Err() != nil && errors.Is(err, ctx.Err())
	if err == nil || errors.Is(err, ErrAudit) || errors.Is(err, ErrUnavailable) || abandoned {
		// Nothing to record, or the audit log itself failed, or the store is out of reach:
		// do not write to it again (an unreachable database would hold the caller for
		// another round of retries, and fail the same way).
		return err
	}
	if aerr := s.record(s.newEvent(ctx, action, nil, keyID, err)); aerr != nil {
		// A refusal without its audit record is the audit's failure (or the store's outage)
		// first: the API answers 5xx with its generic message, never the store's details.
		return fmt.Errorf("%w (refusing: %w)", aerr, err)
	}
	return err
}

// Events returns the events matching f: the first page of [Service.ListEvents], newest first
// unless f.OldestFirst.
func (s *Service) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	p, err := s.ListEvents(ctx, f)
	return p.Events, err
}

// ListEvents returns a page of the events matching f, newest first unless f.OldestFirst. The
// listing is stable: events stored after the first page never appear in the later pages of
// a newest-first listing, and appear at the end of an oldest-first one.
func (s *Service) ListEvents(ctx context.Context, f EventFilter) (EventPage, error) {
	var page EventPage
	if f.Limit < 0 {
		return page, fmt.Errorf("%w: event limit %d", ErrInvalidArgument, f.Limit)
	}
	if f.Outcome != "" && f.Outcome != OutcomeSuccess && f.Outcome != OutcomeFailure {
		return page, fmt.Errorf("%w: event outcome %q (success or failure)", ErrInvalidArgument, shorten(f.Outcome))
	}
	var after []byte
	if f.Cursor != "" {
		k, err := hex.DecodeString(f.Cursor)
		if err != nil || len(k) != eventKeyLen {
			return page, fmt.Errorf("%w: event cursor %q", ErrInvalidArgument, shorten(f.Cursor))
		}
		after = k
	}
	from := eventNanos(f.From)
	err := s.view(ctx, func(tx storeTx) error {
		if f.KeyID != "" && !knownKey(tx, f.KeyID) {
			return fmt.Errorf("%w: %s (no key with this id, and no event names it)", ErrKeyNotFound, shorten(f.KeyID))
		}
		scan := eventScan{after: after, desc: !f.OldestFirst, keyID: f.KeyID, action: f.Action, outcome: f.Outcome}
		if !f.From.IsZero() {
			scan.from = from
		}
		page = EventPage{} // the transaction may run again
		var full []byte    // the position of the page's last event, once the page is full
		return tx.scanEvents(scan, func(k []byte, ev *Event) (bool, error) {
			if f.KeyID != "" && ev.KeyID != f.KeyID ||
				f.Action != "" && ev.Action != f.Action ||
				f.Outcome != "" && ev.Outcome != f.Outcome ||
				!f.From.IsZero() && ev.Time.Before(f.From) ||
				!f.To.IsZero() && !ev.Time.Before(f.To) {
				return true, nil
			}
			if full != nil { // a match beyond a full page: there is a next page
				page.Next = hex.EncodeToString(full)
				return false, nil
			}
			page.Events = append(page.Events, *ev)
			if f.Limit > 0 && len(page.Events) >= f.Limit {
				full = bytes.Clone(k)
			}
			return true, nil
		})
	})
	if err != nil {
		return EventPage{}, err
	}
	return page, nil
}

// knownKey reports whether id names a key of the store (in any state, deleted included) or
// is named by an event (a key purged since, or an id a refused request named): an event
// filter on another id is a mistake, not an empty listing. The event scan is only made for
// an id the store has no key for.
func knownKey(tx storeTx, id string) bool {
	if _, err := tx.key(id); err == nil {
		return true
	}
	named, err := tx.eventNamesKey(id)
	return err == nil && named
}

// ActionDefault is the event action for requests that were refused before naming an
// operation (malformed bodies, unknown actions).
const ActionDefault = "kms.secrets.default"

// RecordFailure audits a request refused outside the service (for example by the HTTP
// layer, for a malformed body): it stores a failure event for action on keyID. The error
// wraps ErrAudit if the event could not be stored.
func (s *Service) RecordFailure(ctx context.Context, action, keyID string, err error) error {
	return s.record(s.newEvent(ctx, action, nil, keyID, err))
}

// auditError is the error of an audit event (of what) that could not be stored. It wraps
// ErrAudit; when the store was out of reach it is first of all ErrUnavailable's, so that the
// API answers 503 (try again) rather than 500 (see LookupError's order).
func auditError(what string, err error) error {
	if errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("crk: %w (storing the audit event failed: %s: %w)", err, what, ErrAudit)
	}
	return fmt.Errorf("crk: %w: %s: %w", ErrAudit, what, err)
}
