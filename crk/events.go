package crk

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
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
	Reason      string    `json:"reason,omitempty"`
}

// EventFilter selects events. Zero fields match everything.
type EventFilter struct {
	KeyID  string
	Action string
	// From and To bound the event time: From <= t < To.
	From, To time.Time
	// Limit caps the result at the first Limit matches, oldest first; 0 means no limit.
	Limit int
}

func severity(action string) string {
	switch action {
	case ActionDelete, ActionPurge, ActionMasterKeyRotate:
		return "critical"
	case ActionRotate, ActionRestore, ActionEnable, ActionDisable, ActionPrune:
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

// appendEvent stores an event in tx.
func appendEvent(tx *bolt.Tx, ev *Event) error {
	b := tx.Bucket(bucketEvents)
	k, err := nextSeq(b)
	if err != nil {
		return err
	}
	ev.Seq = binary.BigEndian.Uint64(k)
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return b.Put(k, raw)
}

// record stores an event durably before returning. Used for operations that change no state
// (wraps, reads) and for refusals. Events go through one writer goroutine that commits
// everything queued in a single transaction (group commit): a lone caller waits for one
// commit, concurrent callers share one.
func (s *Service) record(ev *Event) {
	done := make(chan error, 1)
	select {
	case s.events <- eventReq{ev: ev, done: done}:
	case <-s.closing:
		s.log.Error("crk: event dropped: service closing", "action", ev.Action, "key", ev.KeyID)
		return
	}
	if err := <-done; err != nil {
		s.log.Error("crk: recording event failed", "action", ev.Action, "key", ev.KeyID, "err", err)
	}
}

type eventReq struct {
	ev   *Event
	done chan error
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
		err := s.db.Update(func(tx *bolt.Tx) error {
			for _, r := range batch {
				if err := appendEvent(tx, r.ev); err != nil {
					return err
				}
			}
			return nil
		})
		for _, r := range batch {
			r.done <- err
		}
	}
}

// refuse records a failure event for a refused or failed request and returns err.
func (s *Service) refuse(ctx context.Context, action, keyID string, err error) error {
	if err == nil {
		return nil
	}
	s.record(s.newEvent(ctx, action, nil, keyID, err))
	return err
}

// Events returns the events matching f, oldest first.
func (s *Service) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var ev Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("crk: store: event: %w", err)
			}
			if f.KeyID != "" && ev.KeyID != f.KeyID ||
				f.Action != "" && ev.Action != f.Action ||
				!f.From.IsZero() && ev.Time.Before(f.From) ||
				!f.To.IsZero() && !ev.Time.Before(f.To) {
				continue
			}
			out = append(out, ev)
			if f.Limit > 0 && len(out) >= f.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// ActionDefault is the event action for requests that were refused before naming an
// operation (malformed bodies, unknown actions).
const ActionDefault = "kms.secrets.default"

// RecordFailure audits a request refused outside the service (for example by the HTTP
// layer, for a malformed body): it stores a failure event for action on keyID.
func (s *Service) RecordFailure(ctx context.Context, action, keyID string, err error) {
	s.record(s.newEvent(ctx, action, nil, keyID, err))
}
