package crk

import (
	"context"
	"fmt"
	"time"
)

// Dual authorization delete, as Key Protect does it: a key with the policy is deleted only
// by a second principal after a first one has set it for deletion (setKeyForDeletion), within
// DualAuthWindow of that authorization. The principal that set it cannot delete it; anyone
// allowed to use the key may cancel the authorization (unsetKeyForDeletion). Once enabled on a
// key the policy cannot be disabled. A key gets the policy when it is created while the
// instance's dualAuthDelete policy is enabled (or with a create-time override), or from a
// key policy request (PUT /keys/{id}/policies?policy=dualAuthDelete). Principals are
// compared with SamePrincipal: an API key is one principal through the API and the web
// console, and the CLI's unnamed local initiator is never a second one against a local user.

// DualAuthWindow is how long an authorization to delete (setKeyForDeletion) lasts.
const DualAuthWindow = 7 * 24 * time.Hour

// Audit actions of dual authorization (Activity Tracker names).
const (
	// ActionSetKeyForDeletion: a principal authorized the deletion of a dual
	// authorization key (the first of the two).
	ActionSetKeyForDeletion = "kms.secrets.setkeyfordeletion"
	// ActionUnsetKeyForDeletion: a pending authorization to delete was withdrawn.
	ActionUnsetKeyForDeletion = "kms.secrets.unsetkeyfordeletion"
)

// DualAuthDelete is a key's dual authorization delete policy as the service reports it.
type DualAuthDelete struct {
	// Enabled is true when the key needs two principals to be deleted.
	Enabled bool
	// KeySetForDeletion is true while an authorization to delete is in force (set and not
	// expired).
	KeySetForDeletion bool
	// SetForDeletionBy is the principal of the authorization in force, if any.
	SetForDeletionBy string
	// AuthExpiration is when the authorization in force ends; zero when none is.
	AuthExpiration time.Time
	// CreatedBy, CreationDate, UpdatedBy and LastUpdateDate describe the policy itself.
	CreatedBy      string
	CreationDate   time.Time
	UpdatedBy      string
	LastUpdateDate time.Time
}

// dualAuthRecord is a key's dual authorization policy as stored.
type dualAuthRecord struct {
	Enabled   bool      `json:"enabled"`
	SetBy     string    `json:"setBy,omitempty"`
	SetUntil  time.Time `json:"setUntil"`
	CreatedBy string    `json:"createdBy"`
	Created   time.Time `json:"creationDate"`
	UpdatedBy string    `json:"updatedBy"`
	Updated   time.Time `json:"lastUpdateDate"`
}

// toAPI returns the policy as reported at now; nil for no policy.
func (d *dualAuthRecord) toAPI(now time.Time) *DualAuthDelete {
	if d == nil {
		return nil
	}
	out := &DualAuthDelete{Enabled: d.Enabled, CreatedBy: d.CreatedBy, CreationDate: d.Created, UpdatedBy: d.UpdatedBy, LastUpdateDate: d.Updated}
	if d.authorized(now) {
		out.KeySetForDeletion, out.SetForDeletionBy, out.AuthExpiration = true, d.SetBy, d.SetUntil
	}
	return out
}

func (d *dualAuthRecord) authorized(now time.Time) bool {
	return d != nil && d.Enabled && d.SetBy != "" && now.Before(d.SetUntil)
}

// CreatePolicies are key policies given at creation (Key Protect's
// keys_with_policy_overrides): each one given replaces the instance policy's default for the
// new key. Nil members leave the instance default.
type CreatePolicies struct {
	// Rotation, for a generated root key only: IntervalMonths 1 to 12; a disabled policy may
	// leave it 0.
	Rotation *RotationSettings
	// DualAuthDelete sets (Enabled) or leaves out the key's dual authorization policy.
	DualAuthDelete *DualAuthSettings
}

// applyCreatePolicies checks the keyCreateImportAccess policy for new key r and gives it its
// policies: the overrides of p where given, else the instance defaults (rotation for a
// generated root key, dual authorization for any key). It runs in the transaction that
// stores r.
func (s *Service) applyCreatePolicies(ctx context.Context, tx storeTx, r *keyRecord, p *CreatePolicies, viaToken bool, now time.Time) error {
	inst, err := loadInstancePolicies(tx)
	if err != nil {
		return err
	}
	if err := createAccess(inst.KeyCreateImportAccess, r.Type, r.Imported, viaToken); err != nil {
		return err
	}
	if p == nil {
		p = &CreatePolicies{}
	}
	who := s.who(ctx)
	switch {
	case p.Rotation != nil:
		if err := checkRotationOverride(r, *p.Rotation); err != nil {
			return err
		}
		r.Policy = &RotationPolicy{Enabled: p.Rotation.Enabled, IntervalMonths: p.Rotation.IntervalMonths, CreationDate: now, LastUpdateDate: now}
	case inst.Rotation != nil && inst.Rotation.Settings.Enabled && r.Type == RootKey && !r.Imported:
		r.Policy = &RotationPolicy{Enabled: true, IntervalMonths: inst.Rotation.Settings.IntervalMonths, CreationDate: now, LastUpdateDate: now}
	}
	enabled := inst.DualAuthDelete != nil && inst.DualAuthDelete.Settings.Enabled
	if p.DualAuthDelete != nil {
		enabled = p.DualAuthDelete.Enabled
	}
	if enabled {
		r.DualAuth = &dualAuthRecord{Enabled: true, CreatedBy: who, Created: now, UpdatedBy: who, Updated: now}
	}
	return nil
}

func checkRotationOverride(r *keyRecord, v RotationSettings) error {
	if r.Type != RootKey {
		return fmt.Errorf("%w: a rotation policy needs a root key, not a standard key", ErrNotRootKey)
	}
	if r.Imported {
		return fmt.Errorf("%w: the key is imported", ErrPolicyNotAllowed)
	}
	if (v.Enabled || v.IntervalMonths != 0) && (v.IntervalMonths < 1 || v.IntervalMonths > 12) {
		return fmt.Errorf("%w: rotation interval_month: got %d", ErrInvalidPolicy, v.IntervalMonths)
	}
	return nil
}

// KeyPolicyUpdate sets a key's policies in one change; nil members are left as they are.
type KeyPolicyUpdate struct {
	// Rotation sets the rotation policy of a generated root key. IntervalMonths 0 keeps the
	// interval the policy has (enabling or disabling it only); a key without one must be
	// given an interval of 1 to 12.
	Rotation *RotationSettings
	// DualAuthDelete enables the key's dual authorization policy. Enabled false is accepted
	// on a key without the policy (nothing changes) and refused on a key that has it: the
	// policy cannot be reverted.
	DualAuthDelete *DualAuthSettings
}

// SetKeyPolicies sets the policies u names on key id, in one transaction
// (kms.policies.write), and returns the key.
func (s *Service) SetKeyPolicies(ctx context.Context, id string, u KeyPolicyUpdate) (*Key, error) {
	if u.Rotation == nil && u.DualAuthDelete == nil {
		return nil, s.refuse(ctx, ActionPolicyWrite, id, fmt.Errorf("%w: no key policy to set", ErrInvalidArgument))
	}
	r, err := s.mutate(ctx, ActionPolicyWrite, id, func(_ storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if r.State == StateDestroyed {
			return allowed(r, ActionPolicyWrite)
		}
		if u.Rotation != nil {
			if err := setRotation(r, *u.Rotation, now); err != nil {
				return err
			}
		}
		if u.DualAuthDelete != nil {
			who := s.who(ctx)
			switch {
			case u.DualAuthDelete.Enabled && r.DualAuth == nil:
				r.DualAuth = &dualAuthRecord{Enabled: true, CreatedBy: who, Created: now, UpdatedBy: who, Updated: now}
			case u.DualAuthDelete.Enabled:
				r.DualAuth.UpdatedBy, r.DualAuth.Updated = who, now
			case r.DualAuth != nil && r.DualAuth.Enabled:
				return fmt.Errorf("%w: dualAuthDelete: key %s has a dual authorization policy, which cannot be disabled", ErrInvalidArgument, r.ID)
			}
		}
		return nil
	})
	return s.keyOf(r, err)
}

// setRotation applies a rotation policy setting to key r (see KeyPolicyUpdate.Rotation).
func setRotation(r *keyRecord, v RotationSettings, now time.Time) error {
	if err := requireRoot(r); err != nil {
		return err
	}
	if r.Imported {
		return fmt.Errorf("%w: key %s is imported", ErrPolicyNotAllowed, r.ID)
	}
	months := v.IntervalMonths
	if months == 0 && r.Policy != nil {
		months = r.Policy.IntervalMonths
	}
	if months < 1 || months > 12 {
		if v.IntervalMonths == 0 {
			return fmt.Errorf("%w: key %s has no rotation interval yet: interval_month is required", ErrInvalidPolicy, r.ID)
		}
		return fmt.Errorf("%w: got %d", ErrInvalidPolicy, v.IntervalMonths)
	}
	p := &RotationPolicy{Enabled: v.Enabled, IntervalMonths: months, CreationDate: now, LastUpdateDate: now}
	if r.Policy != nil {
		p.CreationDate = r.Policy.CreationDate
	}
	r.Policy = p
	return nil
}

// SetKeyForDeletion authorizes the deletion of a key with a dual authorization policy
// (kms.secrets.setkeyfordeletion): for DualAuthWindow, another principal may delete it. A
// new authorization replaces one in force. A key without the policy is refused with
// ErrNotDualAuth.
func (s *Service) SetKeyForDeletion(ctx context.Context, id string) (*Key, error) {
	r, err := s.mutate(ctx, ActionSetKeyForDeletion, id, func(_ storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if err := allowed(r, ActionDelete); err != nil {
			return err
		}
		if r.DualAuth == nil || !r.DualAuth.Enabled {
			return fmt.Errorf("%w: key %s", ErrNotDualAuth, r.ID)
		}
		r.DualAuth.SetBy, r.DualAuth.SetUntil = s.who(ctx), now.Add(DualAuthWindow).UTC()
		return nil
	})
	return s.keyOf(r, err)
}

// UnsetKeyForDeletion cancels an authorization to delete a key with a dual authorization
// policy (kms.secrets.unsetkeyfordeletion); any principal may. Without an authorization in
// force nothing changes. A key without the policy is refused with ErrNotDualAuth.
func (s *Service) UnsetKeyForDeletion(ctx context.Context, id string) (*Key, error) {
	r, err := s.mutate(ctx, ActionUnsetKeyForDeletion, id, func(_ storeTx, r *keyRecord, _ time.Time, _ *Event) error {
		if err := allowed(r, ActionDelete); err != nil {
			return err
		}
		if r.DualAuth == nil || !r.DualAuth.Enabled {
			return fmt.Errorf("%w: key %s", ErrNotDualAuth, r.ID)
		}
		r.DualAuth.SetBy, r.DualAuth.SetUntil = "", time.Time{}
		return nil
	})
	return s.keyOf(r, err)
}

// checkDualAuthDelete allows the deletion of key r by who at now: a key with a dual
// authorization policy needs an authorization in force set by another principal (compared
// with SamePrincipal). On success the authorization is used up.
func checkDualAuthDelete(r *keyRecord, who string, now time.Time) error {
	d := r.DualAuth
	if d == nil || !d.Enabled {
		return nil
	}
	switch {
	case !d.authorized(now) && d.SetBy != "":
		return fmt.Errorf("%w: the authorization to delete key %s expired on %s: set it for deletion again", ErrDualAuthNotMet, r.ID, d.SetUntil.Format(time.RFC3339))
	case !d.authorized(now):
		return fmt.Errorf("%w: key %s has a dual authorization policy: another user must first set it for deletion", ErrDualAuthNotMet, r.ID)
	case d.SetBy == who:
		return fmt.Errorf("%w: key %s was set for deletion by %s, who cannot also delete it: a second user must", ErrDualAuthNotMet, r.ID, who)
	case SamePrincipal(d.SetBy, who):
		return fmt.Errorf("%w: key %s was set for deletion by %s, and %s may be the same principal, who cannot also delete it: a second user must", ErrDualAuthNotMet, r.ID, d.SetBy, who)
	}
	d.SetBy, d.SetUntil = "", time.Time{}
	return nil
}
