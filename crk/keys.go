package crk

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"crkvol/internal/ident"
)

// CreateOptions describe a new key.
type CreateOptions struct {
	// Name is required: 2 to 90 characters.
	Name        string
	Description string
	// Type is RootKey (the default) or StandardKey.
	Type KeyType
	// Material imports the key: 16, 24 or 32 bytes for a root key (AES-128/192/256), 1 to
	// 7168 bytes for a standard key. Nil makes the service generate a 256-bit key.
	Material []byte
	// ExpirationDate, if set, deactivates the key once passed.
	ExpirationDate time.Time
	// Encrypted imports a root key from material sent through the instance's import token
	// (see [EncryptedMaterial]); Material must then be nil, and Type RootKey or empty (an
	// empty Type is RootKey). Importing does not consume the token.
	Encrypted *EncryptedMaterial
	// Policies override the instance policies' defaults for the new key (nil: none).
	Policies *CreatePolicies
	// Aliases are given to the key as it is created (at most 5; see CreateAlias).
	Aliases []string
	// KeyRingID is an existing key ring to create the key in; "" is the default ring.
	KeyRingID string
}

// maxStandardPayload is the largest standard key payload Key Protect accepts.
const maxStandardPayload = 7168

// CreateKey creates a root or standard key, generated or imported, with one version.
func (s *Service) CreateKey(ctx context.Context, opts CreateOptions) (*Key, error) {
	if opts.Type == "" {
		opts.Type = RootKey
	}
	if err := checkCreate(opts); err != nil {
		return nil, s.refuse(ctx, ActionCreate, "", err)
	}
	if opts.Encrypted != nil {
		m, err := s.openEncrypted(ctx, opts.Encrypted)
		if err != nil {
			return nil, s.refuse(ctx, ActionCreate, "", err)
		}
		defer clear(m)
		opts.Material = m
	}
	now := s.clock.Now()
	id, err := newUUID(s.rand)
	if err != nil {
		return nil, err
	}
	material := opts.Material
	if material == nil {
		material = make([]byte, 32)
		if _, err := io.ReadFull(s.rand, material); err != nil {
			return nil, fmt.Errorf("crk: reading random key material: %w", err)
		}
	} else {
		material = slices.Clone(material)
	}
	defer clear(material)

	r := &keyRecord{
		ID:          id,
		Name:        opts.Name,
		Description: opts.Description,
		CRN:         s.crn(id),
		Type:        opts.Type,
		Imported:    opts.Material != nil,
		State:       StateActive,
		CreatedBy:   s.who(ctx),
		Created:     now,
		// LastUpdate and LastRotate stay zero until the key changes (Key Protect sends
		// neither date for a key that never changed).
		LastAction: now,
		Expiration: opts.ExpirationDate.UTC(),
	}
	if opts.ExpirationDate.IsZero() {
		r.Expiration = time.Time{}
	}
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	v, err := s.newVersion(id, material, now)
	if err != nil {
		return nil, err
	}
	r.Versions = []versionRecord{*v}
	err = s.update(ctx, func(tx storeTx) error {
		if err := s.sameMasterKey(tx); err != nil {
			return err
		}
		r.Policy, r.DualAuth = nil, nil // the transaction may run again
		if err := s.applyCreatePolicies(ctx, tx, r, opts.Policies, opts.Encrypted != nil, now); err != nil {
			return err
		}
		if err := s.createKeyDocs(ctx, tx, r, opts, now); err != nil {
			return err
		}
		if err := tx.putKey(r); err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionCreate, r, id, nil)
		ev.KeyVersion = v.ID
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionCreate, id, err)
	}
	s.log.Info("crk: key created", "key", id, "type", r.Type, "imported", r.Imported)
	return r.toKey(now, nil), nil
}

// CreateRootKey creates a generated 256-bit root key.
func (s *Service) CreateRootKey(ctx context.Context, name string) (*Key, error) {
	return s.CreateKey(ctx, CreateOptions{Name: name})
}

// ImportRootKey creates a root key from 128, 192 or 256 bits of caller material.
func (s *Service) ImportRootKey(ctx context.Context, name string, material []byte) (*Key, error) {
	if material == nil {
		material = []byte{}
	}
	return s.CreateKey(ctx, CreateOptions{Name: name, Material: material})
}

func checkCreate(o CreateOptions) error {
	if n := len(strings.TrimSpace(o.Name)); n < 2 || len(o.Name) > 90 {
		return fmt.Errorf("%w: key name must be 2 to 90 characters", ErrInvalidArgument)
	}
	if len(o.Description) > 240 {
		return fmt.Errorf("%w: description longer than 240 characters", ErrInvalidArgument)
	}
	if err := checkLabel("key name", o.Name); err != nil {
		return err
	}
	if err := checkLabel("description", o.Description); err != nil {
		return err
	}
	if o.Encrypted != nil {
		if err := checkEncryptedCreate(o); err != nil {
			return err
		}
	}
	if err := checkNewAliases(o.Aliases); err != nil {
		return err
	}
	if err := checkKeyRingRef(o.KeyRingID); err != nil {
		return err
	}
	switch o.Type {
	case RootKey:
		if o.Material != nil {
			if err := checkRootMaterial(o.Material); err != nil {
				return err
			}
		}
	case StandardKey:
		if o.Material != nil && (len(o.Material) == 0 || len(o.Material) > maxStandardPayload) {
			return fmt.Errorf("%w: standard key payload is %d bytes, want 1 to %d", ErrInvalidMaterial, len(o.Material), maxStandardPayload)
		}
	default:
		return fmt.Errorf("%w: key type %q", ErrInvalidArgument, o.Type)
	}
	return nil
}

func checkRootMaterial(m []byte) error {
	switch len(m) {
	case 16, 24, 32:
	default:
		return fmt.Errorf("%w: %d bits, want 128, 192 or 256", ErrInvalidMaterial, 8*len(m))
	}
	half := len(m) / 2
	if subtle.ConstantTimeCompare(m, make([]byte, len(m))) == 1 || subtle.ConstantTimeCompare(m[:half], m[half:]) == 1 {
		return fmt.Errorf("%w: key material is a trivial pattern", ErrInvalidMaterial)
	}
	return nil
}

// newVersion seals material as a new version of key keyID. The caller holds mkMu (read) from
// before its transaction begins until it ends: the lock order is mkMu, then the store.
func (s *Service) newVersion(keyID string, material []byte, now time.Time) (*versionRecord, error) {
	vid, err := newUUID(s.rand)
	if err != nil {
		return nil, err
	}
	sealed, err := s.sealer.seal(s.rand, material, materialAAD(keyID, vid))
	if err != nil {
		return nil, err
	}
	return &versionRecord{ID: vid, Created: now, Material: sealed}, nil
}

// GetKey returns a key's metadata and, for a standard key, its payload.
func (s *Service) GetKey(ctx context.Context, id string) (*Key, error) {
	k, err := s.getKey(ctx, id, true)
	if err != nil {
		return nil, s.refuse(ctx, ActionRead, id, err)
	}
	return k, nil
}

// GetKeyMetadata returns a key's metadata, never its material.
func (s *Service) GetKeyMetadata(ctx context.Context, id string) (*Key, error) {
	k, err := s.getKey(ctx, id, false)
	if err != nil {
		return nil, s.refuse(ctx, ActionReadMetadata, id, err)
	}
	if err := s.record(s.newEvent(ctx, ActionReadMetadata, nil, id, nil)); err != nil {
		return nil, err
	}
	return k, nil
}

func (s *Service) getKey(ctx context.Context, id string, payload bool) (*Key, error) {
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	var k *Key
	err := s.view(ctx, func(tx storeTx) error {
		r, err := tx.key(id)
		if err != nil {
			return err
		}
		var material []byte
		if payload && r.Type == StandardKey && r.State != StateDestroyed {
			material, err = s.openVersion(r, r.latest())
			if err != nil {
				return err
			}
		}
		k = r.toKey(s.clock.Now(), material)
		return nil
	})
	if err == nil && payload {
		if err := s.record(s.newEvent(ctx, ActionRead, nil, id, nil)); err != nil {
			clear(k.Payload)
			return nil, err
		}
	}
	return k, err
}

// ListOptions select keys for ListKeys.
type ListOptions struct {
	// States to include; by default every state but Destroyed (every state when Filter
	// selects by state).
	States []State
	// Extractable, when set, selects standard keys (true) or root keys (false).
	Extractable *bool
	// Search, Filter and Sort are the parsed search, filter and sort queries
	// (ParseKeySearch, ParseKeyFilter, ParseKeySort); a key must match every filter term.
	Search *KeySearch
	Filter []KeyFilter
	Sort   []KeySort
	// Offset and Limit page through the selected keys in their order; Limit 0 means all.
	Offset, Limit int
	// Live leaves purged keys out, whatever the states (Key Protect lists no purged key:
	// it no longer exists there; crk keeps its record for the audit trail).
	Live bool
}

// ListKeys returns key metadata in creation order, or in opts.Sort's order.
func (s *Service) ListKeys(ctx context.Context, opts ListOptions) ([]Key, error) {
	states := opts.States
	if len(states) == 0 && !opts.filtersState() {
		states = []State{StateActive, StateSuspended, StateDeactivated}
	}
	var out []Key
	now := s.clock.Now()
	err := s.view(ctx, func(tx storeTx) error {
		out = nil // the transaction may run again
		return tx.keys(false, func(r *keyRecord) error {
			if opts.Live && r.Purged {
				return nil
			}
			if len(states) > 0 && !slices.Contains(states, r.effectiveState(now)) {
				return nil
			}
			k := r.toKey(now, nil)
			if opts.selects(k) {
				out = append(out, *k)
			}
			return nil
		})
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionList, "", err)
	}
	if err := s.record(s.newEvent(ctx, ActionList, nil, "", nil)); err != nil {
		return nil, err
	}
	slices.SortStableFunc(out, func(a, b Key) int { return compareKeys(&a, &b, opts.Sort) })
	if opts.Offset > 0 {
		out = out[min(opts.Offset, len(out)):]
	}
	if opts.Limit > 0 && len(out) > opts.Limit {
		out = out[:opts.Limit]
	}
	return out, nil
}

// mutate runs fn on key id inside one write transaction, stores the key and a success event
// (which fn may amend), and records a failure event if anything fails.
func (s *Service) mutate(ctx context.Context, action, id string, fn func(tx storeTx, r *keyRecord, now time.Time, ev *Event) error) (*keyRecord, error) {
	return s.mutateWith(s.update, ctx, action, id, fn)
}

// mutateBatched is mutate for high-rate changes (registration updates during a fleet
// rotation): concurrent calls share one transaction and one fsync. fn may run more than once.
func (s *Service) mutateBatched(ctx context.Context, action, id string, fn func(tx storeTx, r *keyRecord, now time.Time, ev *Event) error) (*keyRecord, error) {
	return s.mutateWith(s.batch, ctx, action, id, fn)
}

func (s *Service) mutateWith(run func(context.Context, func(storeTx) error) error, ctx context.Context, action, id string, fn func(tx storeTx, r *keyRecord, now time.Time, ev *Event) error) (*keyRecord, error) {
	s.mkMu.RLock()
	var out *keyRecord
	fed := false
	err := run(ctx, func(tx storeTx) error {
		fed = false
		r, err := tx.keyForUpdate(id)
		if err != nil {
			return err
		}
		now := s.clock.Now()
		if action == ActionExpire && (r.State != StateActive || r.effectiveState(now) != StateDeactivated) {
			return errNotDue // another process (a replica's scheduler) expired it first
		}
		r.State = r.effectiveState(now)
		old := ""
		if len(r.Versions) > 0 {
			old = r.latest().ID
		}
		ev := s.newEvent(ctx, action, r, id, nil)
		if err := fn(tx, r, now, ev); err != nil {
			return err
		}
		if updatesKey(action) {
			r.LastUpdate = now
		}
		if err := tx.putKey(r); err != nil {
			return err
		}
		out = r
		if err := s.appendEvent(tx, ev); err != nil {
			return err
		}
		fe, err := s.feedEvent(ctx, tx, action, r, old, now)
		if err != nil || fe == nil {
			return err
		}
		if err := s.putFeedEvent(tx, fe); err != nil {
			return fmt.Errorf("crk: %w: lifecycle feed: %w", ErrAudit, err)
		}
		fed = true
		return nil
	})
	s.mkMu.RUnlock()
	if errors.Is(err, errNotDue) {
		return nil, err // nothing was asked for: no refusal to record
	}
	if err != nil {
		return nil, s.refuse(ctx, action, id, err)
	}
	switch action {
	case ActionPrune, ActionPurge, ActionDelete:
		s.aeads.forget(id) // no expanded key outlives its material or its key
	}
	if fed {
		s.notifyFeed()
	}
	return out, nil
}

// updatesKey reports whether action changes the key itself, and so its lastUpdateDate:
// every action but the registration changes and the sync, which change resources that refer
// to the key, not the key (as in Key Protect, where a key's lastUpdateDate moves with its
// state, material, policies, aliases, key ring and metadata).
func updatesKey(action string) bool {
	switch action {
	case ActionRegister, ActionRegUpdate, ActionRegDelete, ActionSync:
		return false
	}
	return true
}

// allowed checks the state table of Key Protect for an action.
func allowed(r *keyRecord, action string) error {
	var ok []State
	switch action {
	case ActionRotate, ActionUnwrap, ActionRewrap:
		ok = []State{StateActive, StateDeactivated}
	case ActionWrap, ActionDisable:
		ok = []State{StateActive}
	case ActionEnable:
		ok = []State{StateSuspended}
	case ActionDelete:
		ok = []State{StateActive, StateSuspended, StateDeactivated}
	case ActionRestore, ActionPurge:
		ok = []State{StateDestroyed}
	default:
		ok = []State{StateActive, StateSuspended, StateDeactivated}
	}
	if slices.Contains(ok, r.State) {
		if r.Purged && action == ActionRestore {
			return fmt.Errorf("%w: key %s", ErrKeyPurged, r.ID)
		}
		return nil
	}
	switch r.State {
	case StateSuspended:
		return fmt.Errorf("%w: key %s cannot %s", ErrKeySuspended, r.ID, verb(action))
	case StateDeactivated:
		return fmt.Errorf("%w: key %s cannot %s", ErrKeyDeactivated, r.ID, verb(action))
	case StateDestroyed:
		if r.Purged {
			return fmt.Errorf("%w: key %s", ErrKeyPurged, r.ID)
		}
		return fmt.Errorf("%w: key %s", ErrKeyDestroyed, r.ID)
	}
	return fmt.Errorf("%w: key %s is %s and cannot %s", ErrInvalidState, r.ID, r.State, verb(action))
}

func verb(action string) string {
	return strings.TrimPrefix(action, "kms.secrets.")
}

func requireRoot(r *keyRecord) error {
	if r.Type != RootKey {
		return fmt.Errorf("%w: key %s is a standard key", ErrNotRootKey, r.ID)
	}
	return nil
}

// DisableKey suspends a root key: it can no longer wrap or unwrap until enabled.
func (s *Service) DisableKey(ctx context.Context, id string) (*Key, error) {
	r, err := s.mutate(ctx, ActionDisable, id, func(_ storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if err := requireRoot(r); err != nil {
			return err
		}
		if err := allowed(r, ActionDisable); err != nil {
			return err
		}
		r.State, r.LastAction = StateSuspended, now
		return nil
	})
	return s.keyOf(r, err)
}

// EnableKey reactivates a suspended root key; refused within 30 s of the last action.
func (s *Service) EnableKey(ctx context.Context, id string) (*Key, error) {
	r, err := s.mutate(ctx, ActionEnable, id, func(_ storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if err := requireRoot(r); err != nil {
			return err
		}
		if err := allowed(r, ActionEnable); err != nil {
			return err
		}
		if now.Before(r.LastAction.Add(ActionCooldown)) {
			return fmt.Errorf("%w: key %s can be enabled from %s", ErrTooEarly, id, r.LastAction.Add(ActionCooldown).Format(time.RFC3339))
		}
		r.State, r.LastAction = StateActive, now
		r.State = r.effectiveState(now)
		return nil
	})
	return s.keyOf(r, err)
}

// DeleteOptions tune DeleteKey.
type DeleteOptions struct {
	// Force deletes a key that still has registrations, unless one of them has
	// preventKeyDeletion.
	Force bool
}

// DeleteKey moves a key to Destroyed: every use fails, it can be restored for 30 days
// unless purged, and PurgeKey destroys its material from 4 hours after the deletion.
func (s *Service) DeleteKey(ctx context.Context, id string, opts DeleteOptions) (*Key, error) {
	r, err := s.mutate(ctx, ActionDelete, id, func(tx storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if err := allowed(r, ActionDelete); err != nil {
			return err
		}
		regs, err := tx.keyRegs(id)
		if err != nil {
			return err
		}
		if len(regs) > 0 && !opts.Force {
			return fmt.Errorf("%w: key %s has %d registrations; delete them or force", ErrProtectedResource, id, len(regs))
		}
		for _, reg := range regs {
			if reg.PreventKeyDeletion {
				return fmt.Errorf("%w: resource %s", ErrPreventKeyDeletion, reg.ResourceCRN)
			}
		}
		if err := checkDualAuthDelete(r, s.who(ctx), now); err != nil {
			return err
		}
		r.State, r.Deleted, r.DeletedBy, r.LastAction = StateDestroyed, now, s.who(ctx), now
		return nil
	})
	return s.keyOf(r, err)
}

// RestoreKey brings a deleted key back within 30 days of its deletion, and not within 30 s
// of the delete.
func (s *Service) RestoreKey(ctx context.Context, id string) (*Key, error) {
	r, err := s.mutate(ctx, ActionRestore, id, func(_ storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if err := allowed(r, ActionRestore); err != nil {
			return err
		}
		if !now.Before(r.Deleted.Add(RestoreWindow)) {
			return fmt.Errorf("%w: key %s was deleted on %s, more than 30 days ago", ErrRestoreExpired, id, r.Deleted.Format(time.RFC3339))
		}
		if now.Before(r.LastAction.Add(ActionCooldown)) {
			return fmt.Errorf("%w: key %s can be restored from %s", ErrTooEarly, id, r.LastAction.Add(ActionCooldown).Format(time.RFC3339))
		}
		r.State, r.Deleted, r.DeletedBy, r.LastAction = StateActive, time.Time{}, "", now
		r.State = r.effectiveState(now)
		return nil
	})
	return s.keyOf(r, err)
}

// PurgeKey destroys the material of every version of a deleted key, for good
// (crypto-shredding): the key can no longer be restored. It is refused (ErrTooEarly) until
// PurgeWait (4 hours) after the deletion; RunDue purges a key AutoPurgeAfter its deletion.
// The key's record stays, without material, as a tombstone for the audit trail (its events
// name it): the Key Protect API (ResolveAPIKey, ListOptions.Live) and the CLI treat a purged
// key as one that no longer exists, as Key Protect does; crk's own calls refuse it with
// ErrKeyPurged.
func (s *Service) PurgeKey(ctx context.Context, id string) (*Key, error) {
	return s.purge(ctx, id, false)
}

// purge is PurgeKey; auto purges only a key due for its automatic purge (errNotDue
// otherwise).
func (s *Service) purge(ctx context.Context, id string, auto bool) (*Key, error) {
	r, err := s.mutate(ctx, ActionPurge, id, func(tx storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if auto && !r.purgeDue(now) {
			return errNotDue
		}
		if r.State != StateDestroyed {
			return fmt.Errorf("%w: key %s must be deleted before it is purged", ErrInvalidState, id)
		}
		if r.Purged {
			return fmt.Errorf("%w: key %s", ErrKeyPurged, id)
		}
		if now.Before(r.Deleted.Add(PurgeWait)) {
			return fmt.Errorf("%w: key %s was deleted on %s, less than 4 hours ago; it can be purged from %s",
				ErrTooEarly, id, r.Deleted.UTC().Format(time.RFC3339), r.Deleted.Add(PurgeWait).UTC().Format(time.RFC3339))
		}
		for i := range r.Versions {
			r.Versions[i].Material, r.Versions[i].Destroyed = nil, true
		}
		r.Purged = true
		// Its aliases are free for other keys, as Key Protect frees them with the key.
		if err := releaseAliases(tx, r); err != nil {
			return err
		}
		// Hosts' acknowledgements go with the key: there is nothing left to lock out.
		return tx.deleteAcks(r.ID)
	})
	return s.keyOf(r, err)
}

// SetRotationPolicy sets (months 1 to 12) a rotation policy on a generated root key, or
// disables it (enabled false). Months 0 keeps the interval the policy has, so that a policy
// can be enabled or disabled alone; a key without a policy must be given one.
func (s *Service) SetRotationPolicy(ctx context.Context, id string, months int, enabled bool) (*Key, error) {
	r, err := s.mutate(ctx, ActionPolicyWrite, id, func(_ storeTx, r *keyRecord, now time.Time, _ *Event) error {
		if err := requireRoot(r); err != nil {
			return err
		}
		if r.Imported {
			return fmt.Errorf("%w: key %s is imported", ErrPolicyNotAllowed, id)
		}
		if r.State == StateDestroyed {
			return allowed(r, ActionPolicyWrite)
		}
		return setRotation(r, RotationSettings{Enabled: enabled, IntervalMonths: months}, now)
	})
	return s.keyOf(r, err)
}

func (s *Service) keyOf(r *keyRecord, err error) (*Key, error) {
	if err != nil {
		return nil, err
	}
	return r.toKey(s.clock.Now(), nil), nil
}

// toKey converts a record to the API view.
func (r *keyRecord) toKey(now time.Time, payload []byte) *Key {
	k := &Key{
		ID: r.ID, Name: r.Name, Description: r.Description, CRN: r.CRN, Type: r.Type,
		Imported: r.Imported, Extractable: r.Type == StandardKey, State: r.effectiveState(now),
		CreatedBy: r.CreatedBy, CreationDate: r.Created, LastUpdateDate: r.LastUpdate,
		LastRotateDate: r.LastRotate, LastStateChange: r.LastAction, ExpirationDate: r.Expiration,
		KeyVersion: Version{ID: r.latest().ID, CreationDate: r.latest().Created},
		Deleted:    r.State == StateDestroyed, DeletionDate: r.Deleted, DeletedBy: r.DeletedBy,
		Payload: payload, Aliases: slices.Clone(r.Aliases), KeyRingID: r.ring(),
	}
	if r.Policy != nil {
		p := *r.Policy
		k.RotationPolicy = &p
	}
	k.DualAuthDelete = r.DualAuth.toAPI(now)
	return k
}

// openVersion returns the plaintext material of a version. The caller holds mkMu (read).
func (s *Service) openVersion(r *keyRecord, v *versionRecord) ([]byte, error) {
	if v.Destroyed || v.Material == nil {
		return nil, fmt.Errorf("%w: key %s version %s", ErrVersionDestroyed, r.ID, v.ID)
	}
	return s.sealer.open(v.Material, materialAAD(r.ID, v.ID))
}

// newUUID returns a random (version 4) UUID in lower case.
func newUUID(rand io.Reader) (string, error) {
	id, err := ident.NewUUID(rand)
	if err != nil {
		return "", fmt.Errorf("crk: %w", err)
	}
	return id, nil
}
