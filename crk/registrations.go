package crk

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"crkvol/internal/ident"
)

// RegisterOptions describe a new registration.
type RegisterOptions struct {
	Description string
	// PreventKeyDeletion blocks deleting the key, even forced (a retention policy).
	PreventKeyDeletion bool
	// VersionID is the key version the resource's data key is wrapped with; the latest if
	// empty.
	VersionID string
}

// RegistrationUpdate changes a registration; nil fields are left as they are.
type RegistrationUpdate struct {
	VersionID *string
	// NoDowngrade keeps the registration's version when VersionID is older than it (so a
	// late writer cannot move a resource back after a newer rewrap was recorded).
	NoDowngrade        bool
	Description        *string
	PreventKeyDeletion *bool
}

// checkCRN checks a resource CRN: valid UTF-8, "crn:v1:" and ten segments, at most 512 bytes.
func checkCRN(crn string) error {
	if !utf8.ValidString(crn) {
		// A CRN is text: JSON could not give it back as it is, and PostgreSQL cannot store it.
		return fmt.Errorf("%w: resource CRN %q: not valid UTF-8", ErrInvalidArgument, shorten(crn))
	}
	if _, err := ident.ParseCRN(crn); err != nil {
		return fmt.Errorf("%w: resource CRN %q: %w", ErrInvalidArgument, shorten(crn), err)
	}
	return nil
}

// shorten shortens a refused value (a CRN, a cursor) for an error message.
func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Register records that resource crn is protected by root key keyID.
func (s *Service) Register(ctx context.Context, keyID, crn string, opts RegisterOptions) (*Registration, error) {
	if err := checkCRN(crn); err != nil {
		return nil, s.refuse(ctx, ActionRegister, keyID, err)
	}
	if err := checkLabel("registration description", opts.Description); err != nil {
		return nil, s.refuse(ctx, ActionRegister, keyID, err)
	}
	var out Registration
	_, err := s.mutate(ctx, ActionRegister, keyID, func(tx storeTx, r *keyRecord, now time.Time, ev *Event) error {
		if err := requireRoot(r); err != nil {
			return err
		}
		if r.State == StateDestroyed {
			return allowed(r, ActionWrap)
		}
		switch _, err := tx.reg(keyID, crn); {
		case err == nil:
			return fmt.Errorf("%w: key %s, resource %s", ErrRegistrationExists, keyID, crn)
		case !errors.Is(err, ErrRegistrationNotFound):
			return err // the store failed, or holds a registration it cannot read
		}
		vid := opts.VersionID
		if vid == "" {
			vid = r.latest().ID
		}
		if err := checkVersion(r, vid); err != nil {
			return err
		}
		reg := &regRecord{
			KeyID: keyID, ResourceCRN: crn, VersionID: vid, Description: opts.Description,
			PreventKeyDeletion: opts.PreventKeyDeletion, CreatedBy: s.who(ctx), UpdatedBy: s.who(ctx),
			Created: now, Updated: now,
		}
		ev.ResourceCRN, ev.KeyVersion = crn, vid
		out = reg.toRegistration(r)
		return tx.putReg(reg)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

func checkVersion(r *keyRecord, vid string) error {
	v := r.version(vid)
	if v == nil {
		return fmt.Errorf("%w: key %s has no version %s", ErrVersionNotFound, r.ID, vid)
	}
	if v.Destroyed {
		return fmt.Errorf("%w: key %s version %s", ErrVersionDestroyed, r.ID, vid)
	}
	return nil
}

// UpdateRegistration changes a registration, typically its key version after the resource
// was rewrapped.
func (s *Service) UpdateRegistration(ctx context.Context, keyID, crn string, u RegistrationUpdate) (*Registration, error) {
	if u.Description != nil {
		if err := checkLabel("registration description", *u.Description); err != nil {
			return nil, s.refuse(ctx, ActionRegUpdate, keyID, err)
		}
	}
	var out Registration
	_, err := s.mutateBatched(ctx, ActionRegUpdate, keyID, func(tx storeTx, r *keyRecord, now time.Time, ev *Event) error {
		if err := allowed(r, ActionRegUpdate); err != nil {
			return err
		}
		reg, err := tx.reg(keyID, crn)
		if err != nil {
			return err
		}
		if u.VersionID != nil {
			if err := checkVersion(r, *u.VersionID); err != nil {
				return err
			}
			if !u.NoDowngrade || versionIndex(r, *u.VersionID) >= versionIndex(r, reg.VersionID) {
				reg.VersionID = *u.VersionID
			}
		}
		if u.Description != nil {
			reg.Description = *u.Description
		}
		if u.PreventKeyDeletion != nil {
			reg.PreventKeyDeletion = *u.PreventKeyDeletion
		}
		reg.Updated, reg.UpdatedBy = now, s.who(ctx)
		ev.ResourceCRN, ev.KeyVersion = crn, reg.VersionID
		out = reg.toRegistration(r)
		return tx.putReg(reg)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteRegistration removes a registration.
func (s *Service) DeleteRegistration(ctx context.Context, keyID, crn string) error {
	_, err := s.mutate(ctx, ActionRegDelete, keyID, func(tx storeTx, _ *keyRecord, _ time.Time, ev *Event) error {
		if _, err := tx.reg(keyID, crn); err != nil {
			return err
		}
		ev.ResourceCRN = crn
		return tx.deleteReg(keyID, crn)
	})
	return err
}

// RegistrationFilter selects registrations; empty fields match all.
type RegistrationFilter struct {
	KeyID string
	CRN   string
}

// ListRegistrations returns registrations by key, by resource CRN, or all, ordered by key id
// then CRN.
func (s *Service) ListRegistrations(ctx context.Context, f RegistrationFilter) ([]Registration, error) {
	var out []Registration
	err := s.view(ctx, func(tx storeTx) error {
		out = nil // the transaction may run again
		if f.KeyID != "" {
			r, err := tx.key(f.KeyID)
			if err != nil {
				return err
			}
			regs, err := tx.keyRegs(f.KeyID)
			if err != nil {
				return err
			}
			for _, reg := range regs {
				if f.CRN == "" || reg.ResourceCRN == f.CRN {
					out = append(out, reg.toRegistration(r))
				}
			}
			return nil
		}
		keys := map[string]*keyRecord{}
		return tx.regs(func(reg *regRecord) error {
			if f.CRN != "" && reg.ResourceCRN != f.CRN {
				return nil
			}
			r, ok := keys[reg.KeyID]
			if !ok {
				var err error
				if r, err = tx.key(reg.KeyID); err != nil {
					return err
				}
				keys[reg.KeyID] = r
			}
			out = append(out, reg.toRegistration(r))
			return nil
		})
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionListRegs, f.KeyID, err)
	}
	if err := s.record(s.newEvent(ctx, ActionListRegs, nil, f.KeyID, nil)); err != nil {
		return nil, err
	}
	return out, nil
}

func (reg *regRecord) toRegistration(r *keyRecord) Registration {
	out := Registration{
		KeyID: reg.KeyID, ResourceCRN: reg.ResourceCRN, Description: reg.Description,
		PreventKeyDeletion: reg.PreventKeyDeletion, CreatedBy: reg.CreatedBy, UpdatedBy: reg.UpdatedBy,
		CreationDate: reg.Created, LastUpdated: reg.Updated,
		KeyVersion: Version{ID: reg.VersionID},
	}
	if v := r.version(reg.VersionID); v != nil {
		out.KeyVersion.CreationDate = v.Created
	}
	return out
}

// versionIndex returns the position of a version in the key's history (-1 if unknown).
func versionIndex(r *keyRecord, id string) int {
	for i := range r.Versions {
		if r.Versions[i].ID == id {
			return i
		}
	}
	return -1
}
