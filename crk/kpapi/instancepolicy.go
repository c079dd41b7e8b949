package kpapi

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"crkvol/crk"
)

// Instance policies: GET and PUT /api/v2/instance/policies[?policy=TYPE], in the shapes of
// keyprotect-go-client's InstancePolicy. A policy never set is not listed. PUT answers 204,
// as Key Protect does. crkvol supports the rotation, dualAuthDelete, allowedNetwork,
// keyCreateImportAccess and metrics policies; allowedIP (and any other name) is refused
// with 400.
//
// allowedNetwork private-only is enforced for every request of an instance (every
// /api/v2 route: keys, policies, key rings, import tokens, the lifecycle feed and
// acknowledgements; the web console's pages and actions, and its sign-in, check it too) by
// the address the request came from (http.Request.RemoteAddr, see PrivateAddr): loopback,
// RFC 1918, RFC 4193 and link-local addresses are private; an address that does not parse is
// not. NewLocalServer's in-process requests are private. Any other request is refused with
// 403 CONFIG_RULE_CONFLICT_ERR, as Key Protect refuses a public-endpoint request to a
// private-only instance. The token endpoint (/identity/token) is IAM's, not an instance's,
// and is not affected. Behind a reverse proxy the proxy's address is the one seen: such a
// deployment must not rely on the policy.

// InstancePolicyJSON is an instance policy as the API shows it.
type InstancePolicyJSON struct {
	// CreatedBy is the principal that first set the policy.
	CreatedBy string `json:"createdBy,omitempty"`
	// CreationDate is when the policy was first set (RFC 3339).
	CreationDate string `json:"creationDate,omitempty"`
	// LastUpdated is when the policy was last set (RFC 3339).
	LastUpdated string `json:"lastUpdated,omitempty"`
	// UpdatedBy is the principal that last set the policy.
	UpdatedBy string `json:"updatedBy,omitempty"`
	// PolicyType is rotation, dualAuthDelete, allowedNetwork, keyCreateImportAccess or metrics.
	PolicyType string `json:"policy_type"`
	// PolicyData is the policy's state and attributes.
	PolicyData InstancePolicyData `json:"policy_data"`
}

// InstancePolicyData is the policy_data of an instance policy.
type InstancePolicyData struct {
	// Enabled is whether the policy is on.
	Enabled *bool `json:"enabled,omitempty"`
	// Attributes are the policy's settings, if its type has any.
	Attributes *InstancePolicyAttributes `json:"attributes,omitempty"`
}

// InstancePolicyAttributes are the attributes of an instance policy; each policy type uses
// some of them.
type InstancePolicyAttributes struct {
	// AllowedNetwork is allowedNetwork's public-and-private or private-only.
	AllowedNetwork *string `json:"allowed_network,omitempty"`
	// AllowedIP is the client's allowed_ip attribute; no policy crkvol serves takes it (refused).
	AllowedIP *[]string `json:"allowed_ip,omitempty"`
	// CreateRootKey is keyCreateImportAccess's permission to generate root keys.
	CreateRootKey *bool `json:"create_root_key,omitempty"`
	// CreateStandardKey is keyCreateImportAccess's permission to generate standard keys.
	CreateStandardKey *bool `json:"create_standard_key,omitempty"`
	// ImportRootKey is keyCreateImportAccess's permission to import root keys.
	ImportRootKey *bool `json:"import_root_key,omitempty"`
	// ImportStandardKey is keyCreateImportAccess's permission to import standard keys.
	ImportStandardKey *bool `json:"import_standard_key,omitempty"`
	// EnforceToken is keyCreateImportAccess's requirement of an import token for imports.
	EnforceToken *bool `json:"enforce_token,omitempty"`
	// IntervalMonth is rotation's interval for new root keys, in months.
	IntervalMonth *int `json:"interval_month,omitempty"`
}

type instancePoliciesBody struct {
	Metadata  *Metadata            `json:"metadata"`
	Resources []InstancePolicyJSON `json:"resources"`
}

func ptr[T any](v T) *T { return &v }

// instancePoliciesJSON converts the stored policies to the API form, in the order of
// crk.InstancePolicyTypes, keeping those of the types in want (all when want is empty).
func instancePoliciesJSON(p *crk.InstancePolicies, want string) []InstancePolicyJSON {
	out := []InstancePolicyJSON{}
	add := func(typ, createdBy string, created time.Time, updatedBy string, updated time.Time, enabled bool, attrs *InstancePolicyAttributes) {
		if want != "" && want != typ {
			return
		}
		out = append(out, InstancePolicyJSON{
			CreatedBy: createdBy, CreationDate: RFC3339(created), UpdatedBy: updatedBy, LastUpdated: RFC3339(updated),
			PolicyType: typ, PolicyData: InstancePolicyData{Enabled: ptr(enabled), Attributes: attrs},
		})
	}
	if r := p.Rotation; r != nil {
		var a *InstancePolicyAttributes
		if r.Settings.IntervalMonths != 0 {
			a = &InstancePolicyAttributes{IntervalMonth: ptr(r.Settings.IntervalMonths)}
		}
		add(crk.PolicyRotation, r.CreatedBy, r.CreationDate, r.UpdatedBy, r.LastUpdated, r.Settings.Enabled, a)
	}
	if d := p.DualAuthDelete; d != nil {
		add(crk.PolicyDualAuthDelete, d.CreatedBy, d.CreationDate, d.UpdatedBy, d.LastUpdated, d.Settings.Enabled, nil)
	}
	if n := p.AllowedNetwork; n != nil {
		a := &InstancePolicyAttributes{AllowedNetwork: ptr(n.Settings.Network)}
		add(crk.PolicyAllowedNetwork, n.CreatedBy, n.CreationDate, n.UpdatedBy, n.LastUpdated, n.Settings.Enabled, a)
	}
	if k := p.KeyCreateImportAccess; k != nil {
		var a *InstancePolicyAttributes
		if s := k.Settings; s.Enabled {
			a = &InstancePolicyAttributes{
				CreateRootKey: ptr(s.CreateRootKey), CreateStandardKey: ptr(s.CreateStandardKey),
				ImportRootKey: ptr(s.ImportRootKey), ImportStandardKey: ptr(s.ImportStandardKey), EnforceToken: ptr(s.EnforceToken),
			}
		}
		add(crk.PolicyKeyCreateImportAccess, k.CreatedBy, k.CreationDate, k.UpdatedBy, k.LastUpdated, k.Settings.Enabled, a)
	}
	if m := p.Metrics; m != nil {
		add(crk.PolicyMetrics, m.CreatedBy, m.CreationDate, m.UpdatedBy, m.LastUpdated, m.Settings.Enabled, nil)
	}
	return out
}

// policyQuery reads the ?policy= parameter: "" or a supported instance policy type.
func policyQuery(r *http.Request) (string, error) {
	p := r.URL.Query().Get("policy")
	if p == "" || slices.Contains(crk.InstancePolicyTypes(), p) {
		return p, nil
	}
	return "", badRequest("INVALID_QUERY_PARAM_ERR", fmt.Sprintf("unknown or unsupported instance policy %q: want one of %v", p, crk.InstancePolicyTypes()), "policy")
}

func (s *Server) getInstancePolicies(q *request) error {
	want, err := policyQuery(q.r)
	if err != nil {
		return err
	}
	p, err := q.svc.InstancePolicies(q.ctx)
	if err != nil {
		return err
	}
	res := instancePoliciesJSON(p, want)
	writeJSON(q.w, http.StatusOK, map[string]any{"metadata": Metadata{CollectionType: TypePolicy, CollectionTotal: len(res)}, "resources": res})
	return nil
}

func (s *Server) putInstancePolicies(q *request) error {
	want, err := policyQuery(q.r)
	if err != nil {
		return err
	}
	var body instancePoliciesBody
	if err := decodeKnown(q.r, &body); err != nil {
		return err
	}
	if len(body.Resources) == 0 {
		return badRequest("BAD_BODY_ERR", "the request must set at least one instance policy", "resources")
	}
	if body.Metadata != nil && body.Metadata.CollectionTotal != len(body.Resources) {
		return badRequest("COLLECTION_TOTAL_MISMATCH_ERR", "collectionTotal does not match the number of resources", "collectionTotal")
	}
	if want != "" && len(body.Resources) != 1 {
		return badRequest("NUM_COLLECTION_RESOURCE_ERR", "only a single instance policy may be set per query parameter: pass a single resource", "resources")
	}
	var u crk.InstancePolicyUpdate
	seen := map[string]bool{}
	for _, res := range body.Resources {
		if want != "" && res.PolicyType != want {
			return badRequest("BODY_QUERY_PARAM_MISMATCH_ERR", fmt.Sprintf("policy_type %q does not match the policy query parameter %q", res.PolicyType, want), "policy_type")
		}
		if seen[res.PolicyType] {
			return badRequest("NUM_COLLECTION_RESOURCE_ERR", fmt.Sprintf("instance policy %q is given more than once", res.PolicyType), "policy_type")
		}
		seen[res.PolicyType] = true
		if err := readInstancePolicy(res, &u); err != nil {
			return err
		}
	}
	if _, err := q.svc.SetInstancePolicies(q.ctx, u); err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}

// readInstancePolicy reads one resource of a PUT into u, refusing attributes its policy
// type does not have.
func readInstancePolicy(res InstancePolicyJSON, u *crk.InstancePolicyUpdate) error {
	d := res.PolicyData
	if d.Enabled == nil {
		return badRequest("INVALID_FIELD_ERR", fmt.Sprintf("policy %q: policy_data.enabled is required", res.PolicyType), "enabled")
	}
	a := d.Attributes
	if a == nil {
		a = &InstancePolicyAttributes{}
	}
	// only refuses every attribute but the named ones.
	only := func(allowed ...string) error {
		set := map[string]bool{
			"allowed_network": a.AllowedNetwork != nil, "allowed_ip": a.AllowedIP != nil,
			"create_root_key": a.CreateRootKey != nil, "create_standard_key": a.CreateStandardKey != nil,
			"import_root_key": a.ImportRootKey != nil, "import_standard_key": a.ImportStandardKey != nil,
			"enforce_token": a.EnforceToken != nil, "interval_month": a.IntervalMonth != nil,
		}
		for name, given := range set {
			if given && !slices.Contains(allowed, name) {
				return badRequest("BAD_BODY_ERR", fmt.Sprintf("policy %q has no attribute %q", res.PolicyType, name), name)
			}
		}
		return nil
	}
	enabled := *d.Enabled
	switch res.PolicyType {
	case crk.PolicyRotation:
		if err := only("interval_month"); err != nil {
			return err
		}
		v := crk.RotationSettings{Enabled: enabled}
		if a.IntervalMonth != nil {
			if v.IntervalMonths = *a.IntervalMonth; v.IntervalMonths == 0 {
				return badRequest("INVALID_FIELD_ERR", "the rotation interval must be an integer between 1 and 12 months: got 0", "interval_month")
			}
		}
		u.Rotation = &v
	case crk.PolicyDualAuthDelete:
		if err := only(); err != nil {
			return err
		}
		u.DualAuthDelete = &crk.DualAuthSettings{Enabled: enabled}
	case crk.PolicyAllowedNetwork:
		if err := only("allowed_network"); err != nil {
			return err
		}
		v := crk.AllowedNetworkSettings{Enabled: enabled}
		if a.AllowedNetwork != nil {
			v.Network = *a.AllowedNetwork
		}
		u.AllowedNetwork = &v
	case crk.PolicyKeyCreateImportAccess:
		if err := only("create_root_key", "create_standard_key", "import_root_key", "import_standard_key", "enforce_token"); err != nil {
			return err
		}
		v := crk.KeyCreateImportAccessSettings{}
		if enabled {
			// Omitted attributes take their defaults, as in Key Protect.
			v = crk.DefaultKeyCreateImportAccess()
			for _, f := range []struct {
				p *bool
				v *bool
			}{{a.CreateRootKey, &v.CreateRootKey}, {a.CreateStandardKey, &v.CreateStandardKey}, {a.ImportRootKey, &v.ImportRootKey}, {a.ImportStandardKey, &v.ImportStandardKey}, {a.EnforceToken, &v.EnforceToken}} {
				if f.p != nil {
					*f.v = *f.p
				}
			}
		} else if d.Attributes != nil && *d.Attributes != (InstancePolicyAttributes{}) {
			return badRequest("BAD_BODY_ERR", "policy \"keyCreateImportAccess\": attributes are given only when the policy is enabled", "attributes")
		}
		u.KeyCreateImportAccess = &v
	case crk.PolicyMetrics:
		if err := only(); err != nil {
			return err
		}
		u.Metrics = &crk.MetricsSettings{Enabled: enabled}
	default:
		return badRequest("BAD_BODY_ERR", fmt.Sprintf("unknown or unsupported instance policy type %q: want one of %v", res.PolicyType, crk.InstancePolicyTypes()), "policy_type")
	}
	return nil
}

// PrivateAddr reports whether a request's RemoteAddr is a private address: loopback, RFC
// 1918, RFC 4193 or link-local. An address that does not parse is not private (fail closed):
// a server whose requests have no IP address must say so itself, as NewLocalServer's
// in-process server does.
func PrivateAddr(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	var a netip.Addr
	if err == nil {
		a = ap.Addr()
	} else if a, err = netip.ParseAddr(remote); err != nil {
		return false
	}
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast()
}
