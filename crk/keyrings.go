package crk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Key rings, as Key Protect has them: every instance has the ring DefaultKeyRing, which
// cannot be deleted and holds every key created without a ring; up to MaxKeyRings others are
// created by id. A key is in exactly one ring (keyRecord.KeyRingID, "" for the default one),
// chosen when it is created and changed by SetKeyRing. A ring holding a key that is not
// deleted cannot be deleted; one holding only deleted keys can be with force, which moves
// them to the default ring.
//
// A ring is a document of kind docKeyRing (id -> keyRingRecord). A key joining a ring locks
// the ring's document shared for its transaction, and deleting a ring locks it exclusive
// before it looks for the ring's keys: on PostgreSQL, a key created in a ring another
// process is deleting either commits first (and the delete sees it) or finds no ring.

// DefaultKeyRing is the id of the key ring every instance has.
const DefaultKeyRing = "default"

// MaxKeyRings is the most key rings an instance can create (the default ring aside).
const MaxKeyRings = 50

// docKeyRing is the kind of the key ring documents.
const docKeyRing = "keyring"

// KeyRing is a key ring. The default ring has no creation date nor creator.
type KeyRing struct {
	// ID is the ring's id ("default" for the default ring).
	ID string
	// CreationDate is when the ring was created (zero for the default ring).
	CreationDate time.Time
	// CreatedBy is the principal that created the ring ("" for the default ring).
	CreatedBy string
}

// keyRingRecord is the document of a key ring.
type keyRingRecord struct {
	CreatedBy string    `json:"createdBy"`
	Created   time.Time `json:"creationDate"`
}

// ring is the id of the key ring r is in.
func (r *keyRecord) ring() string {
	if r.KeyRingID == "" {
		return DefaultKeyRing
	}
	return r.KeyRingID
}

// CheckKeyRingID reports whether id follows Key Protect's rules for a key ring id: 2 to 100
// characters, each an ASCII letter, digit or dash. The error wraps ErrInvalidKeyRing.
func CheckKeyRingID(id string) error {
	if n := len(id); n < 2 || n > 100 {
		return fmt.Errorf("%w: key ring id %q is %d characters long, want 2 to 100", ErrInvalidKeyRing, id, n)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '-' {
			return fmt.Errorf("%w: key ring id %q has the character %s at position %d: only letters, digits and dashes (-) are allowed",
				ErrInvalidKeyRing, id, quoteCharAt(id, i), i)
		}
	}
	return nil
}

// checkKeyRingRef checks a key ring named by a request: "" (none) or a valid id.
func checkKeyRingRef(id string) error {
	if id == "" {
		return nil
	}
	return CheckKeyRingID(id)
}

// keyRingExists returns nil if ring is the default ring or one of the instance's, locking its
// document shared (or exclusive) when the transaction writes; ErrKeyRingNotFound otherwise.
func keyRingExists(tx storeTx, ring string, exclusive bool) error {
	if ring == DefaultKeyRing {
		return nil
	}
	_, err := tx.lockDoc(docKeyRing, ring, exclusive)
	if errors.Is(err, errNoDoc) {
		return fmt.Errorf("%w: %s", ErrKeyRingNotFound, ring)
	}
	return err
}

// createKeyDocs puts a new key in its ring and gives it its aliases (CreateKey).
func (s *Service) createKeyDocs(ctx context.Context, tx storeTx, r *keyRecord, opts CreateOptions, now time.Time) error {
	if opts.KeyRingID != "" && opts.KeyRingID != DefaultKeyRing {
		if err := keyRingExists(tx, opts.KeyRingID, false); err != nil {
			return err
		}
		r.KeyRingID = opts.KeyRingID
	}
	r.Aliases = nil // the transaction may run again
	for _, a := range opts.Aliases {
		if err := s.addAlias(ctx, tx, r, a, now); err != nil {
			return err
		}
	}
	return nil
}

// CreateKeyRing creates the key ring id: CheckKeyRingID's rules, not one the instance has
// (ErrKeyRingExists, the default ring included), at most MaxKeyRings (ErrKeyRingQuota).
func (s *Service) CreateKeyRing(ctx context.Context, id string) (*KeyRing, error) {
	if err := CheckKeyRingID(id); err != nil {
		return nil, s.refuse(ctx, ActionKeyRingCreate, "", err)
	}
	if id == DefaultKeyRing {
		return nil, s.refuse(ctx, ActionKeyRingCreate, "", fmt.Errorf("%w: %s: every instance has it", ErrKeyRingExists, id))
	}
	var out *KeyRing
	err := s.update(ctx, func(tx storeTx) error {
		// The instance's row first (PostgreSQL locks it for a writer): ring creations of
		// all processes are counted one after the other.
		if _, _, err := tx.meta(); err != nil {
			return err
		}
		n := 0
		if err := tx.docs(docKeyRing, func(string, []byte) error { n++; return nil }); err != nil {
			return err
		}
		if n >= MaxKeyRings {
			return fmt.Errorf("%w: the instance has %d key rings besides the default one", ErrKeyRingQuota, n)
		}
		now := s.clock.Now()
		rec := keyRingRecord{CreatedBy: s.who(ctx), Created: now}
		raw, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("crk: encoding key ring %q: %w", id, err)
		}
		if err := tx.insertDoc(docKeyRing, id, raw); err != nil {
			if errors.Is(err, errDocExists) {
				return fmt.Errorf("%w: %s", ErrKeyRingExists, id)
			}
			return err
		}
		ev := s.newEvent(ctx, ActionKeyRingCreate, nil, "", nil)
		ev.Reason = "key ring " + id
		out = &KeyRing{ID: id, CreationDate: now, CreatedBy: rec.CreatedBy}
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionKeyRingCreate, "", err)
	}
	return out, nil
}

// ListKeyRings returns the instance's key rings: the default one first, then the others in
// id order.
func (s *Service) ListKeyRings(ctx context.Context) ([]KeyRing, error) {
	var out []KeyRing
	err := s.view(ctx, func(tx storeTx) error {
		out = []KeyRing{{ID: DefaultKeyRing}}
		return tx.docs(docKeyRing, func(name string, raw []byte) error {
			var rec keyRingRecord
			if err := json.Unmarshal(raw, &rec); err != nil {
				return fmt.Errorf("crk: store: key ring %q: %w", name, err)
			}
			out = append(out, KeyRing{ID: name, CreationDate: rec.Created, CreatedBy: rec.CreatedBy})
			return nil
		})
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionKeyRingList, "", err)
	}
	if err := s.record(s.newEvent(ctx, ActionKeyRingList, nil, "", nil)); err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteKeyRing deletes the key ring id. The default ring cannot be deleted
// (ErrInvalidKeyRing); a ring holding a key that is not deleted cannot be either
// (ErrKeyRingNotEmpty); a ring holding deleted keys only is deleted with force, which moves
// them to the default ring (ErrKeyRingNotEmpty without it).
func (s *Service) DeleteKeyRing(ctx context.Context, id string, force bool) error {
	if err := CheckKeyRingID(id); err != nil {
		return s.refuse(ctx, ActionKeyRingDelete, "", err)
	}
	if id == DefaultKeyRing {
		return s.refuse(ctx, ActionKeyRingDelete, "", fmt.Errorf("%w: the default key ring cannot be deleted", ErrInvalidKeyRing))
	}
	err := s.update(ctx, func(tx storeTx) error {
		if err := keyRingExists(tx, id, true); err != nil {
			return err
		}
		var live []string
		var deleted []*keyRecord
		if err := tx.keys(true, func(r *keyRecord) error {
			switch {
			case r.ring() != id:
			case r.State == StateDestroyed:
				deleted = append(deleted, r)
			default:
				live = append(live, r.ID)
			}
			return nil
		}); err != nil {
			return err
		}
		if len(live) > 0 {
			return fmt.Errorf("%w: key ring %s holds %d keys that are not deleted (%s); move or delete them first",
				ErrKeyRingNotEmpty, id, len(live), live[0])
		}
		if len(deleted) > 0 && !force {
			return fmt.Errorf("%w: key ring %s holds %d deleted keys; force moves them to the default key ring",
				ErrKeyRingNotEmpty, id, len(deleted))
		}
		for _, r := range deleted {
			r.KeyRingID = ""
			if err := tx.putKey(r); err != nil {
				return err
			}
		}
		if err := tx.deleteDoc(docKeyRing, id); err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionKeyRingDelete, nil, "", nil)
		ev.Reason = "key ring " + id
		if len(deleted) > 0 {
			ev.Reason += fmt.Sprintf("; %d deleted keys moved to the default key ring", len(deleted))
		}
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		return s.refuse(ctx, ActionKeyRingDelete, "", err)
	}
	return nil
}

// SetKeyRing moves the key idOrAlias (which must not be deleted) to the key ring ring,
// which must exist.
func (s *Service) SetKeyRing(ctx context.Context, idOrAlias, ring string) (*Key, error) {
	if err := CheckKeyRingID(ring); err != nil {
		return nil, s.refuse(ctx, ActionPatch, idOrAlias, err)
	}
	id, err := s.resolve(ctx, idOrAlias, "", false)
	if err != nil {
		return nil, s.refuse(ctx, ActionPatch, idOrAlias, err)
	}
	r, err := s.mutate(ctx, ActionPatch, id, func(tx storeTx, r *keyRecord, _ time.Time, ev *Event) error {
		if err := allowed(r, ActionPatch); err != nil {
			return err
		}
		if err := keyRingExists(tx, ring, false); err != nil {
			return err
		}
		ev.Reason = "key ring " + r.ring() + " -> " + ring
		r.KeyRingID = ring
		if ring == DefaultKeyRing {
			r.KeyRingID = ""
		}
		return nil
	})
	return s.keyOf(r, err)
}
