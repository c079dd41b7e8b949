package crk

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"time"

	"crkvol/internal/ident"
)

// MaxBatchItems is the most items one batch call ([Service.RewrapBatch],
// [Service.UpdateRegistrationVersions]) takes.
const MaxBatchItems = 1000

// RewrapItem is one ciphertext of a RewrapBatch, with the AAD it was wrapped with.
type RewrapItem struct {
	Ciphertext []byte
	AAD        []string
}

// RegistrationVersion moves resource CRN's registration of a key to VersionID.
type RegistrationVersion struct {
	CRN, VersionID string
}

// checkBatch refuses a batch of n items outside 1..MaxBatchItems.
func checkBatch(what string, n int) error {
	if n < 1 || n > MaxBatchItems {
		return fmt.Errorf("%w: a batch of %d %s, want 1 to %d", ErrInvalidArgument, n, what, MaxBatchItems)
	}
	return nil
}

// RewrapBatch rewraps items (1..MaxBatchItems) under the latest version of root key keyID,
// as Rewrap does each of them, in one read of the key. errs[i] is item i's refusal (the
// sentinels Rewrap returns: ErrAuth for a ciphertext of another key or with other AAD,
// ErrVersionNotFound, ...) and results[i] its result when errs[i] is nil. Each item is
// audited by its own event (kms.secrets.rewrap, success or failure), all handed to the
// event writer as one request, so they are committed together (one commit, shared with
// the events of concurrent callers) before it returns.
//
// err is for the call as a whole: a batch size outside 1..MaxBatchItems, a key unknown or
// unusable (suspended, destroyed, not a root key: every item is refused, audited by one
// event that counts them), an audit log that could not be written (ErrAudit: no result is returned), or the
// store's failure. When err is set, results and errs are nil.
func (s *Service) RewrapBatch(ctx context.Context, keyID string, items []RewrapItem) (results []*RewrapResult, errs []error, err error) {
	if err := checkBatch("ciphertexts", len(items)); err != nil {
		return nil, nil, s.refuse(ctx, ActionRewrap, keyID, err)
	}
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	var rec *keyRecord
	err = s.view(ctx, func(tx storeTx) error {
		results, errs = make([]*RewrapResult, len(items)), make([]error, len(items)) // the transaction may run again
		r, err := s.usableKey(tx, keyID, ActionRewrap)
		if err != nil {
			return err
		}
		rec = r
		aeads := versionAEADs{s: s, r: r}
		latest := r.latest()
		for i, it := range items {
			res, err := aeads.rewrap(latest, it.Ciphertext, it.AAD)
			if err != nil && !IsUserError(err) {
				return err // the service's failure (no randomness, a version it cannot open)
			}
			results[i], errs[i] = res, err
		}
		return nil
	})
	if err != nil {
		return nil, nil, s.refuseAll(ctx, ActionRewrap, keyID, len(items), err)
	}
	evs := itemEvents(s.newEvent(ctx, ActionRewrap, rec, keyID, nil), errs)
	for i, ev := range evs {
		if errs[i] == nil {
			ev.KeyVersion = results[i].KeyVersion.ID
		}
	}
	if err := s.recordAll(evs); err != nil {
		return nil, nil, err // ErrAudit, as for Rewrap
	}
	return results, errs, nil
}

// refuseAll is refuse for a batch of n items refused as a whole (its key unknown or in a state
// that refuses the action): one failure event, whose reason counts the items. One event per
// item would let any caller of the instance write a thousand events with one small request
// of a key that does not exist, and push the audit trail out of its retention.
func (s *Service) refuseAll(ctx context.Context, action, keyID string, n int, err error) error {
	abandoned := ctx.Err() != nil && errors.Is(err, ctx.Err())
	if errors.Is(err, ErrAudit) || errors.Is(err, ErrUnavailable) || abandoned {
		return err // as refuse: nothing to record, or no store to record it in
	}
	ev := s.newEvent(ctx, action, nil, keyID, err)
	ev.Reason += fmt.Sprintf(" (a batch of %d, refused as a whole)", n)
	if aerr := s.record(ev); aerr != nil {
		return fmt.Errorf("%w (refusing: %w)", aerr, err)
	}
	return err
}

// itemEvents returns one event per item of a batch: copies of base (the batch's action, key,
// initiator and time), each a failure with its error's text when errs[i] is set.
func itemEvents(base *Event, errs []error) []*Event {
	all := make([]Event, len(errs))
	evs := make([]*Event, len(errs))
	for i := range all {
		all[i] = *base
		if errs[i] != nil {
			all[i].Outcome, all[i].Reason = OutcomeFailure, errs[i].Error()
		}
		evs[i] = &all[i]
	}
	return evs
}

// versionAEADs opens each version of a key once for the items of a batch.
type versionAEADs struct {
	s *Service
	r *keyRecord
	m map[string]cipher.AEAD
}

func (c *versionAEADs) get(v *versionRecord) (cipher.AEAD, error) {
	if a, ok := c.m[v.ID]; ok {
		return a, nil
	}
	a, err := c.s.versionAEAD(c.r, v)
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[string]cipher.AEAD{}
	}
	c.m[v.ID] = a
	return a, nil
}

// rewrap is Rewrap's work on one ciphertext (seal and unseal in wrap.go, with the versions'
// AEADs opened once).
func (c *versionAEADs) rewrap(latest *versionRecord, ct []byte, aad []string) (*RewrapResult, error) {
	r := c.r
	vid, err := CiphertextVersion(ct)
	if err != nil {
		return nil, err
	}
	v := r.version(vid)
	if v == nil {
		return nil, fmt.Errorf("%w: %w: the ciphertext names version %s, which key %s never had", ErrAuth, ErrVersionNotFound, vid, r.ID)
	}
	aead, err := c.get(v)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, ct[20:ctHeader], ct[ctHeader:], wrapAAD(r.ID, v.ID, aad))
	if err != nil {
		return nil, fmt.Errorf("%w: key %s version %s", ErrAuth, r.ID, v.ID)
	}
	defer clear(pt)
	out, err := c.seal(latest, pt, aad)
	if err != nil {
		return nil, err
	}
	return &RewrapResult{
		Ciphertext: out,
		KeyVersion: Version{ID: latest.ID, CreationDate: latest.Created},
		OldVersion: Version{ID: v.ID, CreationDate: v.Created},
	}, nil
}

func (c *versionAEADs) seal(v *versionRecord, plaintext []byte, aad []string) ([]byte, error) {
	aead, err := c.get(v)
	if err != nil {
		return nil, err
	}
	vid, err := ident.ParseUUID(v.ID)
	if err != nil {
		return nil, fmt.Errorf("crk: internal error: version id %q: %w", v.ID, err)
	}
	out := make([]byte, ctHeader, ctHeader+len(plaintext)+aead.Overhead())
	copy(out, ctMagic)
	copy(out[4:20], vid[:])
	if _, err := io.ReadFull(c.s.rand, out[20:ctHeader]); err != nil {
		return nil, fmt.Errorf("crk: reading random nonce: %w", err)
	}
	return aead.Seal(out, out[20:ctHeader], plaintext, wrapAAD(c.r.ID, v.ID, aad)), nil
}

// UpdateRegistrationVersions is UpdateRegistration with NoDowngrade for many resources of
// root key keyID (1..MaxBatchItems updates): each registration moves to its VersionID unless
// it is on a newer version already. All of them are written in one transaction, with one
// event each (kms.registrations.write, success or failure), so the call is one commit.
// errs[i] is update i's refusal (ErrRegistrationNotFound, ErrVersionNotFound,
// ErrVersionDestroyed, ErrInvalidArgument for a malformed CRN); the others are stored
// whatever became of it.
//
// err is for the call as a whole: a batch size outside 1..MaxBatchItems, a key unknown or
// in a state that refuses registration changes (every update refused, audited by one event
// that counts them), or the store's or the audit log's failure (nothing is stored). When err
// is set, errs is nil.
func (s *Service) UpdateRegistrationVersions(ctx context.Context, keyID string, updates []RegistrationVersion) (errs []error, err error) {
	if err := checkBatch("registration updates", len(updates)); err != nil {
		return nil, s.refuse(ctx, ActionRegUpdate, keyID, err)
	}
	who := s.who(ctx)
	s.mkMu.RLock()
	err = s.update(ctx, func(tx storeTx) error {
		errs = make([]error, len(updates)) // the transaction may run again
		r, err := tx.keyForUpdate(keyID)
		if err != nil {
			return err
		}
		now := s.clock.Now()
		r.State = r.effectiveState(now)
		if err := allowed(r, ActionRegUpdate); err != nil {
			return err
		}
		evs := itemEvents(s.newEvent(ctx, ActionRegUpdate, r, keyID, nil), errs)
		for i, u := range updates {
			ev := evs[i]
			ev.ResourceCRN = u.CRN
			errs[i] = s.updateRegVersion(tx, r, u, now, who, ev)
			if errs[i] != nil {
				if !IsUserError(errs[i]) {
					return errs[i] // the store's failure: nothing is stored
				}
				ev.Outcome, ev.Reason, ev.KeyVersion = OutcomeFailure, errs[i].Error(), ""
			}
		}
		return s.appendEvents(tx, evs)
	})
	s.mkMu.RUnlock()
	if err != nil {
		return nil, s.refuseAll(ctx, ActionRegUpdate, keyID, len(updates), err)
	}
	return errs, nil
}

// updateRegVersion is one update of UpdateRegistrationVersions, in tx, on key r.
func (s *Service) updateRegVersion(tx storeTx, r *keyRecord, u RegistrationVersion, now time.Time, who string, ev *Event) error {
	if err := checkCRN(u.CRN); err != nil {
		return err
	}
	reg, err := tx.reg(r.ID, u.CRN)
	if err != nil {
		return err
	}
	if err := checkVersion(r, u.VersionID); err != nil {
		return err
	}
	if versionIndex(r, u.VersionID) >= versionIndex(r, reg.VersionID) {
		reg.VersionID = u.VersionID
	}
	reg.Updated, reg.UpdatedBy = now, who
	ev.KeyVersion = reg.VersionID
	return tx.putReg(reg)
}
