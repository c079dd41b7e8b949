package kpapi

import (
	"fmt"
	"net/http"

	"crkvol/crk"
)

// Key policies (GET and PUT /api/v2/keys/{id}/policies[?policy=rotation|dualAuthDelete]),
// dual authorization actions (POST /api/v2/keys/{id}/actions/setKeyForDeletion and
// unsetKeyForDeletion, 204) and key creation with policy overrides
// (POST /api/v2/keys_with_policy_overrides), in keyprotect-go-client's shapes.

// OverridesPath is the create route whose body may carry rotation and dualAuthDelete
// policies for the new key, beating the instance policies.
const OverridesPath = "/api/v2/keys_with_policy_overrides"

// DualAuth is a key's dual authorization delete policy in a key resource.
type DualAuth struct {
	Enabled           bool   `json:"enabled"`
	KeySetForDeletion *bool  `json:"keySetForDeletion,omitempty"`
	AuthExpiration    string `json:"authExpiration,omitempty"`
}

// dualAuthOf is the dualAuthDelete member of key k: {"enabled":false} for a key without the
// policy, as Key Protect shows it.
func dualAuthOf(k *crk.Key) *DualAuth {
	d := k.DualAuthDelete
	if d == nil || !d.Enabled {
		return &DualAuth{}
	}
	return &DualAuth{Enabled: true, KeySetForDeletion: ptr(d.KeySetForDeletion), AuthExpiration: RFC3339(d.AuthExpiration)}
}

// policyJSON is a key policy as the API shows it.
type policyJSON struct {
	Type           string    `json:"type"`
	CRN            string    `json:"crn"`
	CreatedBy      string    `json:"createdBy"`
	CreationDate   string    `json:"creationDate"`
	UpdatedBy      string    `json:"updatedBy"`
	LastUpdateDate string    `json:"lastUpdateDate"`
	Rotation       *Rotation `json:"rotation,omitempty"`
	DualAuthDelete *DualAuth `json:"dualAuthDelete,omitempty"`
}

// policiesOf lists key k's policies of type want ("" for all): rotation, then dualAuthDelete.
func policiesOf(k *crk.Key, want string) []policyJSON {
	out := []policyJSON{}
	if p := k.RotationPolicy; p != nil && (want == "" || want == crk.PolicyRotation) {
		out = append(out, policyJSON{
			Type: TypePolicy, CRN: k.CRN, CreatedBy: k.CreatedBy, CreationDate: RFC3339(p.CreationDate),
			UpdatedBy: k.CreatedBy, LastUpdateDate: RFC3339(p.LastUpdateDate),
			Rotation: &Rotation{Enabled: p.Enabled, IntervalMonth: p.IntervalMonths},
		})
	}
	if d := k.DualAuthDelete; d != nil && (want == "" || want == crk.PolicyDualAuthDelete) {
		out = append(out, policyJSON{
			Type: TypePolicy, CRN: k.CRN, CreatedBy: d.CreatedBy, CreationDate: RFC3339(d.CreationDate),
			UpdatedBy: d.UpdatedBy, LastUpdateDate: RFC3339(d.LastUpdateDate),
			DualAuthDelete: &DualAuth{Enabled: d.Enabled},
		})
	}
	return out
}

func keyPolicyQuery(r *http.Request) (string, error) {
	switch p := r.URL.Query().Get("policy"); p {
	case "", crk.PolicyRotation, crk.PolicyDualAuthDelete:
		return p, nil
	default:
		return "", badRequest("INVALID_QUERY_PARAM_ERR", fmt.Sprintf("unknown key policy %q: want rotation or dualAuthDelete", p), "policy")
	}
}

func writePolicies(q *request, res []policyJSON) error {
	writeJSON(q.w, http.StatusOK, map[string]any{"metadata": Metadata{CollectionType: TypePolicy, CollectionTotal: len(res)}, "resources": res})
	return nil
}

func (s *Server) getPolicies(q *request) error {
	want, err := keyPolicyQuery(q.r)
	if err != nil {
		return err
	}
	k, err := q.svc.GetKeyMetadata(q.ctx, q.id)
	if err != nil {
		return err
	}
	return writePolicies(q, policiesOf(k, want))
}

// rotationBody is a rotation policy in a request. The client omits interval_month when it
// has none (enable and disable requests) and sends -1 for an interval the caller gave as 0.
type rotationBody struct {
	Enabled       *bool `json:"enabled"`
	IntervalMonth *int  `json:"interval_month"`
}

type dualAuthBody struct {
	Enabled *bool `json:"enabled"`
}

type policyBody struct {
	Metadata  *Metadata `json:"metadata"`
	Resources []struct {
		Rotation       *rotationBody `json:"rotation"`
		DualAuthDelete *dualAuthBody `json:"dualAuthDelete"`
	} `json:"resources"`
}

// rotationSettings reads a rotation policy of a request: enabled defaults to true (a request
// that only sets the interval enables the policy), an absent interval keeps the key's, and a
// given one must be 1 to 12.
func (b *rotationBody) settings() (crk.RotationSettings, error) {
	v := crk.RotationSettings{Enabled: b.Enabled == nil || *b.Enabled}
	if b.IntervalMonth != nil {
		v.IntervalMonths = *b.IntervalMonth
		if v.IntervalMonths < 1 || v.IntervalMonths > 12 {
			return v, badRequest("INVALID_FIELD_ERR", fmt.Sprintf("the rotation interval must be an integer between 1 and 12 months: got %d", v.IntervalMonths), "interval_month")
		}
	}
	return v, nil
}

func (b *dualAuthBody) settings() (crk.DualAuthSettings, error) {
	if b.Enabled == nil {
		return crk.DualAuthSettings{}, badRequest("INVALID_FIELD_ERR", "dualAuthDelete.enabled is required", "enabled")
	}
	return crk.DualAuthSettings{Enabled: *b.Enabled}, nil
}

func (s *Server) putPolicy(q *request) error {
	want, err := keyPolicyQuery(q.r)
	if err != nil {
		return err
	}
	var body policyBody
	if err := decode(q.r, &body); err != nil {
		return err
	}
	if len(body.Resources) == 0 {
		return badRequest("BAD_BODY_ERR", "the request must set at least one key policy", "resources")
	}
	if body.Metadata != nil && body.Metadata.CollectionTotal != len(body.Resources) {
		return badRequest("COLLECTION_TOTAL_MISMATCH_ERR", "collectionTotal does not match the number of resources", "collectionTotal")
	}
	if want != "" && len(body.Resources) != 1 {
		return badRequest("NUM_COLLECTION_RESOURCE_ERR", "only a single key policy may be set per query parameter: pass a single resource", "resources")
	}
	var u crk.KeyPolicyUpdate
	for _, res := range body.Resources {
		switch {
		case res.Rotation != nil && res.DualAuthDelete != nil:
			return badRequest("BAD_BODY_ERR", "a policy resource sets either rotation or dualAuthDelete", "resources")
		case res.Rotation != nil:
			if want == crk.PolicyDualAuthDelete {
				return badRequest("BODY_QUERY_PARAM_MISMATCH_ERR", "the body sets a rotation policy, the query parameter names dualAuthDelete", "rotation")
			}
			if u.Rotation != nil {
				return badRequest("NUM_COLLECTION_RESOURCE_ERR", "the rotation policy is given more than once", "rotation")
			}
			v, err := res.Rotation.settings()
			if err != nil {
				return err
			}
			u.Rotation = &v
		case res.DualAuthDelete != nil:
			if want == crk.PolicyRotation {
				return badRequest("BODY_QUERY_PARAM_MISMATCH_ERR", "the body sets a dualAuthDelete policy, the query parameter names rotation", "dualAuthDelete")
			}
			if u.DualAuthDelete != nil {
				return badRequest("NUM_COLLECTION_RESOURCE_ERR", "the dualAuthDelete policy is given more than once", "dualAuthDelete")
			}
			v, err := res.DualAuthDelete.settings()
			if err != nil {
				return err
			}
			u.DualAuthDelete = &v
		default:
			return badRequest("BAD_BODY_ERR", "a policy resource must set rotation or dualAuthDelete", "resources")
		}
	}
	k, err := q.svc.SetKeyPolicies(q.ctx, q.id, u)
	if err != nil {
		return err
	}
	if want == "" {
		// Answer with the policies the request set, in its order.
		var res []policyJSON
		for _, p := range policiesOf(k, "") {
			if (p.Rotation != nil && u.Rotation != nil) || (p.DualAuthDelete != nil && u.DualAuthDelete != nil) {
				res = append(res, p)
			}
		}
		return writePolicies(q, res)
	}
	return writePolicies(q, policiesOf(k, want))
}

// createPolicies reads the policy overrides of a create request (OverridesPath only).
func createPolicies(rot *rotationBody, dual *dualAuthBody) (*crk.CreatePolicies, error) {
	if rot == nil && dual == nil {
		return nil, nil
	}
	p := &crk.CreatePolicies{}
	if rot != nil {
		v, err := rot.settings()
		if err != nil {
			return nil, err
		}
		p.Rotation = &v
	}
	if dual != nil {
		v, err := dual.settings()
		if err != nil {
			return nil, err
		}
		p.DualAuthDelete = &v
	}
	return p, nil
}

// dualAuthAction runs setKeyForDeletion or unsetKeyForDeletion: 204.
func (s *Server) dualAuthAction(q *request, set bool) error {
	var err error
	if set {
		_, err = q.svc.SetKeyForDeletion(q.ctx, q.id)
	} else {
		_, err = q.svc.UnsetKeyForDeletion(q.ctx, q.id)
	}
	if err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}
