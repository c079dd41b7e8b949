package crk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Instance policies are settings of the whole service instance, as Key Protect's
// /api/v2/instance/policies sets them. Each is stored as one document of kind
// "instance-policy" named by its policy type, written in the same transaction as its audit
// event. A policy never set reads as nil: the default (disabled) behaviour.
//
// Their effects:
//   - rotation: a generated root key created while it is enabled gets a rotation policy of
//     its interval, unless the create request overrides it ([CreatePolicies]).
//   - dualAuthDelete: a key created while it is enabled gets a dual authorization delete
//     policy (see [Service.SetKeyForDeletion]), unless the create request overrides it. Keys
//     that exist when it is enabled or disabled keep what they have, as in Key Protect.
//   - allowedNetwork: with private-only, requests that do not come from a private address
//     are refused with [ErrNetworkNotAllowed]; the API server (crk/kpapi) decides what a
//     private address is and asks [Service.CheckNetwork].
//   - keyCreateImportAccess: restricts which keys may be created or imported, and whether
//     imported material must come through an import token (see checkCreateAccess).
//   - metrics: stored and reported only. crkvol has no metrics system for it to switch on.

// Instance policy types: the names the API uses in ?policy= and policy_type.
const (
	PolicyRotation              = "rotation"
	PolicyDualAuthDelete        = "dualAuthDelete"
	PolicyAllowedNetwork        = "allowedNetwork"
	PolicyKeyCreateImportAccess = "keyCreateImportAccess"
	PolicyMetrics               = "metrics"
)

// InstancePolicyTypes lists the instance policy types crkvol supports, in the order listings
// show them.
func InstancePolicyTypes() []string {
	return []string{PolicyRotation, PolicyDualAuthDelete, PolicyAllowedNetwork, PolicyKeyCreateImportAccess, PolicyMetrics}
}

// The values of AllowedNetworkSettings.Network.
const (
	NetworkPublicAndPrivate = "public-and-private"
	NetworkPrivateOnly      = "private-only"
)

const instancePolicyKind = "instance-policy"

// RotationSettings is the instance rotation policy: new generated root keys rotate every
// IntervalMonths months (1 to 12) while Enabled.
type RotationSettings struct {
	// Enabled makes new root keys get the rotation policy.
	Enabled bool `json:"enabled"`
	// IntervalMonths is the rotation interval of new root keys, 1 to 12 months.
	IntervalMonths int `json:"intervalMonths,omitempty"`
}

// DualAuthSettings is the instance dual authorization delete policy: new keys need two
// principals to delete while Enabled.
type DualAuthSettings struct {
	// Enabled makes new keys need two principals to delete.
	Enabled bool `json:"enabled"`
}

// AllowedNetworkSettings is the allowed network policy: with Enabled and Network
// NetworkPrivateOnly, only requests from private addresses are served.
type AllowedNetworkSettings struct {
	// Enabled turns the policy on.
	Enabled bool `json:"enabled"`
	// Network is NetworkPublicAndPrivate or NetworkPrivateOnly.
	Network string `json:"network"`
}

// KeyCreateImportAccessSettings restricts key creation while Enabled: each flag allows one
// way of making a key, and EnforceToken requires imported material to come through an
// import token. The API's defaults for an omitted attribute are true for the four
// Create/Import flags and false for EnforceToken ([DefaultKeyCreateImportAccess]).
type KeyCreateImportAccessSettings struct {
	// Enabled turns the policy on.
	Enabled bool `json:"enabled"`
	// CreateRootKey allows generating root keys.
	CreateRootKey bool `json:"createRootKey"`
	// CreateStandardKey allows generating standard keys.
	CreateStandardKey bool `json:"createStandardKey"`
	// ImportRootKey allows importing root keys (and using import tokens).
	ImportRootKey bool `json:"importRootKey"`
	// ImportStandardKey allows importing standard keys.
	ImportStandardKey bool `json:"importStandardKey"`
	// EnforceToken requires imported root key material to come through an import token.
	EnforceToken bool `json:"enforceToken"`
}

// DefaultKeyCreateImportAccess returns the enabled policy with every attribute at Key
// Protect's default: every way of creating a key allowed, no import token enforced.
func DefaultKeyCreateImportAccess() KeyCreateImportAccessSettings {
	return KeyCreateImportAccessSettings{Enabled: true, CreateRootKey: true, CreateStandardKey: true, ImportRootKey: true, ImportStandardKey: true}
}

// MetricsSettings is the metrics policy. It is stored and reported; crkvol has no metrics
// system for it to drive.
type MetricsSettings struct {
	// Enabled turns the instance's metrics on.
	Enabled bool `json:"enabled"`
}

// InstancePolicy is one stored instance policy: its settings and who set it when.
type InstancePolicy[T any] struct {
	Settings     T         `json:"settings"`
	CreatedBy    string    `json:"createdBy"`
	CreationDate time.Time `json:"creationDate"`
	UpdatedBy    string    `json:"updatedBy"`
	LastUpdated  time.Time `json:"lastUpdated"`
}

// InstancePolicies is every instance policy; a nil one was never set.
type InstancePolicies struct {
	Rotation              *InstancePolicy[RotationSettings]
	DualAuthDelete        *InstancePolicy[DualAuthSettings]
	AllowedNetwork        *InstancePolicy[AllowedNetworkSettings]
	KeyCreateImportAccess *InstancePolicy[KeyCreateImportAccessSettings]
	Metrics               *InstancePolicy[MetricsSettings]
}

// InstancePolicyUpdate sets instance policies; nil members are left as they are. All the
// given policies are checked before any is stored, and stored in one transaction.
type InstancePolicyUpdate struct {
	// Rotation: IntervalMonths 1 to 12 when Enabled. A disabled policy may omit the interval
	// (0): the interval it had is kept.
	Rotation *RotationSettings
	// DualAuthDelete applies to keys created after it is set.
	DualAuthDelete *DualAuthSettings
	// AllowedNetwork: Network must be NetworkPublicAndPrivate or NetworkPrivateOnly when
	// Enabled; a disabled policy may omit it.
	AllowedNetwork *AllowedNetworkSettings
	// KeyCreateImportAccess replaces the whole policy (the API fills omitted attributes
	// with their defaults, as Key Protect does).
	KeyCreateImportAccess *KeyCreateImportAccessSettings
	// Metrics turns the instance's metrics on or off.
	Metrics *MetricsSettings
}

// Audit actions of instance policies (Activity Tracker names).
const (
	// ActionInstancePolicyRead: the instance's policies were read.
	ActionInstancePolicyRead = "kms.instance-policies.read"
	// ActionInstancePolicyWrite: instance policies were set.
	ActionInstancePolicyWrite = "kms.instance-policies.write"
)

// InstancePolicies returns every instance policy of the service (kms.instance-policies.read).
func (s *Service) InstancePolicies(ctx context.Context) (*InstancePolicies, error) {
	var out *InstancePolicies
	err := s.view(ctx, func(tx storeTx) error {
		var err error
		out, err = loadInstancePolicies(tx)
		return err
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionInstancePolicyRead, "", err)
	}
	if err := s.record(s.newEvent(ctx, ActionInstancePolicyRead, nil, "", nil)); err != nil {
		return nil, err
	}
	return out, nil
}

// SetInstancePolicies sets the instance policies u names (kms.instance-policies.write) and
// returns them all. A value out of range is refused with an error naming the field
// (wrapping ErrInvalidPolicy for the rotation interval, ErrInvalidArgument otherwise), and
// nothing is changed.
func (s *Service) SetInstancePolicies(ctx context.Context, u InstancePolicyUpdate) (*InstancePolicies, error) {
	if u == (InstancePolicyUpdate{}) {
		return nil, s.refuse(ctx, ActionInstancePolicyWrite, "", fmt.Errorf("%w: no instance policy to set", ErrInvalidArgument))
	}
	if err := checkInstancePolicyUpdate(u); err != nil {
		return nil, s.refuse(ctx, ActionInstancePolicyWrite, "", err)
	}
	var out *InstancePolicies
	err := s.update(ctx, func(tx storeTx) error {
		cur, err := loadInstancePolicies(tx)
		if err != nil {
			return err
		}
		now, who := s.clock.Now().UTC(), s.who(ctx)
		if u.Rotation != nil {
			v := *u.Rotation
			if v.IntervalMonths == 0 && cur.Rotation != nil {
				v.IntervalMonths = cur.Rotation.Settings.IntervalMonths
			}
			cur.Rotation = setPolicy(cur.Rotation, v, who, now)
			if err := putPolicy(tx, PolicyRotation, cur.Rotation); err != nil {
				return err
			}
		}
		if u.DualAuthDelete != nil {
			cur.DualAuthDelete = setPolicy(cur.DualAuthDelete, *u.DualAuthDelete, who, now)
			if err := putPolicy(tx, PolicyDualAuthDelete, cur.DualAuthDelete); err != nil {
				return err
			}
		}
		if u.AllowedNetwork != nil {
			v := *u.AllowedNetwork
			if v.Network == "" {
				v.Network = NetworkPublicAndPrivate
				if cur.AllowedNetwork != nil {
					v.Network = cur.AllowedNetwork.Settings.Network
				}
			}
			cur.AllowedNetwork = setPolicy(cur.AllowedNetwork, v, who, now)
			if err := putPolicy(tx, PolicyAllowedNetwork, cur.AllowedNetwork); err != nil {
				return err
			}
		}
		if u.KeyCreateImportAccess != nil {
			cur.KeyCreateImportAccess = setPolicy(cur.KeyCreateImportAccess, *u.KeyCreateImportAccess, who, now)
			if err := putPolicy(tx, PolicyKeyCreateImportAccess, cur.KeyCreateImportAccess); err != nil {
				return err
			}
		}
		if u.Metrics != nil {
			cur.Metrics = setPolicy(cur.Metrics, *u.Metrics, who, now)
			if err := putPolicy(tx, PolicyMetrics, cur.Metrics); err != nil {
				return err
			}
		}
		out = cur
		ev := s.newEvent(ctx, ActionInstancePolicyWrite, nil, "", nil)
		ev.Reason = "set " + u.names()
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionInstancePolicyWrite, "", err)
	}
	s.log.Info("crk: instance policies set", "policies", u.names())
	return out, nil
}

// names lists the policies u sets, for audit events and logs.
func (u InstancePolicyUpdate) names() string {
	var out string
	add := func(set bool, name string) {
		if set {
			if out != "" {
				out += ","
			}
			out += name
		}
	}
	add(u.Rotation != nil, PolicyRotation)
	add(u.DualAuthDelete != nil, PolicyDualAuthDelete)
	add(u.AllowedNetwork != nil, PolicyAllowedNetwork)
	add(u.KeyCreateImportAccess != nil, PolicyKeyCreateImportAccess)
	add(u.Metrics != nil, PolicyMetrics)
	return out
}

func checkInstancePolicyUpdate(u InstancePolicyUpdate) error {
	if r := u.Rotation; r != nil {
		if (r.Enabled || r.IntervalMonths != 0) && (r.IntervalMonths < 1 || r.IntervalMonths > 12) {
			return fmt.Errorf("%w: instance rotation policy interval_month: got %d", ErrInvalidPolicy, r.IntervalMonths)
		}
	}
	if n := u.AllowedNetwork; n != nil {
		switch n.Network {
		case NetworkPublicAndPrivate, NetworkPrivateOnly:
		case "":
			if n.Enabled {
				return fmt.Errorf("%w: allowedNetwork policy: allowed_network is required (%q or %q)", ErrInvalidArgument, NetworkPublicAndPrivate, NetworkPrivateOnly)
			}
		default:
			return fmt.Errorf("%w: allowedNetwork policy: allowed_network %q, want %q or %q", ErrInvalidArgument, n.Network, NetworkPublicAndPrivate, NetworkPrivateOnly)
		}
	}
	return nil
}

// setPolicy returns p with settings v, set by who at now (a new policy if p is nil).
func setPolicy[T any](p *InstancePolicy[T], v T, who string, now time.Time) *InstancePolicy[T] {
	out := &InstancePolicy[T]{Settings: v, CreatedBy: who, CreationDate: now, UpdatedBy: who, LastUpdated: now}
	if p != nil {
		out.CreatedBy, out.CreationDate = p.CreatedBy, p.CreationDate
	}
	return out
}

func putPolicy[T any](tx storeTx, name string, p *InstancePolicy[T]) error {
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("crk: encoding instance policy %s: %w", name, err)
	}
	return tx.putDoc(instancePolicyKind, name, data)
}

func getPolicy[T any](tx storeTx, name string) (*InstancePolicy[T], error) {
	data, err := tx.doc(instancePolicyKind, name)
	if errors.Is(err, errNoDoc) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return decodePolicy[T](name, data)
}

func decodePolicy[T any](name string, data []byte) (*InstancePolicy[T], error) {
	p := new(InstancePolicy[T])
	if err := json.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("crk: internal error: instance policy %s: %w", name, err)
	}
	return p, nil
}

// loadInstancePolicies reads every instance policy in one scan of their documents.
func loadInstancePolicies(tx storeTx) (*InstancePolicies, error) {
	var p InstancePolicies
	err := tx.docs(instancePolicyKind, func(name string, data []byte) error {
		var err error
		switch name {
		case PolicyRotation:
			p.Rotation, err = decodePolicy[RotationSettings](name, data)
		case PolicyDualAuthDelete:
			p.DualAuthDelete, err = decodePolicy[DualAuthSettings](name, data)
		case PolicyAllowedNetwork:
			p.AllowedNetwork, err = decodePolicy[AllowedNetworkSettings](name, data)
		case PolicyKeyCreateImportAccess:
			p.KeyCreateImportAccess, err = decodePolicy[KeyCreateImportAccessSettings](name, data)
		case PolicyMetrics:
			p.Metrics, err = decodePolicy[MetricsSettings](name, data)
		}
		// Another name is a policy a later crkvol stored: this one neither knows nor enforces it.
		return err
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// checkCreateAccess enforces the keyCreateImportAccess instance policy on the creation of a
// key of type typ: generated (imported false) or from caller material (imported true),
// given through an import token (viaToken) or in plain. While the policy is enabled, a
// generated key needs create_root_key or create_standard_key, an imported one
// import_root_key or import_standard_key, and with enforce_token an imported key must come
// through an import token. A refusal wraps ErrCreateImportAccess. The create path reads the
// policy once and calls createAccess; this form is what the policy table tests call.
func checkCreateAccess(tx storeTx, typ KeyType, imported, viaToken bool) error {
	p, err := getPolicy[KeyCreateImportAccessSettings](tx, PolicyKeyCreateImportAccess)
	if err != nil {
		return err
	}
	return createAccess(p, typ, imported, viaToken)
}

// createAccess is checkCreateAccess with the policy read (nil: never set).
func createAccess(p *InstancePolicy[KeyCreateImportAccessSettings], typ KeyType, imported, viaToken bool) error {
	if p == nil || !p.Settings.Enabled {
		return nil
	}
	a := p.Settings
	var ok bool
	var what string
	switch {
	case typ == StandardKey && imported:
		ok, what = a.ImportStandardKey, "importing standard keys (import_standard_key)"
	case typ == StandardKey:
		ok, what = a.CreateStandardKey, "creating standard keys (create_standard_key)"
	case imported:
		ok, what = a.ImportRootKey, "importing root keys (import_root_key)"
	default:
		ok, what = a.CreateRootKey, "creating root keys (create_root_key)"
	}
	if !ok {
		return fmt.Errorf("%w: the policy does not allow %s", ErrCreateImportAccess, what)
	}
	if imported && a.EnforceToken && !viaToken {
		return fmt.Errorf("%w: the policy requires imported key material to come through an import token (enforce_token)", ErrCreateImportAccess)
	}
	return nil
}

// checkImportTokenAccess enforces the keyCreateImportAccess instance policy on import
// tokens: while the policy is enabled and disallows importing root keys (import_root_key
// false), an import token (whose only use is importing root key material) can be neither
// created nor retrieved. A refusal wraps ErrCreateImportAccess.
func checkImportTokenAccess(tx storeTx) error {
	p, err := getPolicy[KeyCreateImportAccessSettings](tx, PolicyKeyCreateImportAccess)
	if err != nil || p == nil || !p.Settings.Enabled {
		return err
	}
	if !p.Settings.ImportRootKey {
		return fmt.Errorf("%w: the policy does not allow importing root keys (import_root_key), so no import token can be used", ErrCreateImportAccess)
	}
	return nil
}

// checkRotateAccess enforces enforce_token on the rotation of an imported key with material
// given in plain (viaToken false).
func checkRotateAccess(tx storeTx, imported, viaToken bool) error {
	if !imported || viaToken {
		return nil
	}
	p, err := getPolicy[KeyCreateImportAccessSettings](tx, PolicyKeyCreateImportAccess)
	if err != nil || p == nil || !p.Settings.Enabled {
		return err
	}
	if p.Settings.EnforceToken {
		return fmt.Errorf("%w: the policy requires new key material to come through an import token (enforce_token)", ErrCreateImportAccess)
	}
	return nil
}

// CheckNetwork enforces the allowedNetwork instance policy on one request: private says
// whether it came from a private address (the API server decides that from the connection).
// While the policy is enabled with private-only, a request that is not private is refused
// with ErrNetworkNotAllowed (audited as kms.secrets.default). It reads the policy without
// an audit event of its own.
func (s *Service) CheckNetwork(ctx context.Context, private bool) error {
	if private {
		return nil
	}
	var p *InstancePolicy[AllowedNetworkSettings]
	err := s.view(ctx, func(tx storeTx) error {
		var err error
		p, err = getPolicy[AllowedNetworkSettings](tx, PolicyAllowedNetwork)
		return err
	})
	if err != nil {
		return err
	}
	if p != nil && p.Settings.Enabled && p.Settings.Network == NetworkPrivateOnly {
		return s.refuse(ctx, ActionDefault, "", fmt.Errorf("%w: the instance accepts requests from private networks only (allowedNetwork private-only)", ErrNetworkNotAllowed))
	}
	return nil
}
