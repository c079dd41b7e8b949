package kpapi

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// apiErr checks that err is the API's refusal with status and reason code.
func apiErr(t *testing.T, err error, status int, code string) {
	t.Helper()
	gotCode, gotStatus := reason(t, err)
	assert.Equal(t, status, gotStatus, "status of %v", err)
	assert.Equal(t, code, gotCode, "reason code of %v", err)
}

// rawStatus sends a raw request and returns its status and first reason code.
func (e *env) rawStatus(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	resp := e.do(t, method, e.srv.URL+path, body, http.Header{"Content-Type": {"application/json"}})
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var eb ErrorBody
	if resp.StatusCode >= 400 {
		require.NoError(t, json.Unmarshal(data, &eb), "%s", data)
		return resp.StatusCode, eb.Resources[0].Reasons[0].Code
	}
	return resp.StatusCode, ""
}

func TestInstancePoliciesOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		all, err := c.GetInstancePolicies(ctx)
		require.NoError(t, err)
		assert.Empty(t, all)
		rot, err := c.GetRotationInstancePolicy(ctx)
		require.NoError(t, err)
		assert.Nil(t, rot, "never set")

		three := 3
		require.NoError(t, c.SetRotationInstancePolicy(ctx, true, &three))
		require.NoError(t, c.SetDualAuthInstancePolicy(ctx, true))
		require.NoError(t, c.SetAllowedNetworkInstancePolicy(ctx, true, crk.NetworkPublicAndPrivate))
		require.NoError(t, c.SetMetricsInstancePolicy(ctx, true))
		require.NoError(t, c.SetKeyCreateImportAccessInstancePolicy(ctx, true, map[string]bool{kp.CreateStandardKey: false}))

		rot, err = c.GetRotationInstancePolicy(ctx)
		require.NoError(t, err)
		require.NotNil(t, rot)
		assert.Equal(t, kp.RotationPolicy, rot.PolicyType)
		assert.True(t, *rot.PolicyData.Enabled)
		assert.Equal(t, 3, *rot.PolicyData.Attributes.IntervalMonth)
		assert.Equal(t, "kpapi:static-token", rot.CreatedBy)
		assert.Equal(t, e.clock.Now(), rot.CreatedAt.UTC())
		assert.Equal(t, e.clock.Now(), rot.UpdatedAt.UTC())
		dual, err := c.GetDualAuthInstancePolicy(ctx)
		require.NoError(t, err)
		assert.True(t, *dual.PolicyData.Enabled)
		assert.Nil(t, dual.PolicyData.Attributes)
		network, err := c.GetAllowedNetworkInstancePolicy(ctx)
		require.NoError(t, err)
		assert.Equal(t, crk.NetworkPublicAndPrivate, *network.PolicyData.Attributes.AllowedNetwork)
		metrics, err := c.GetMetricsInstancePolicy(ctx)
		require.NoError(t, err)
		assert.True(t, *metrics.PolicyData.Enabled)
		access, err := c.GetKeyCreateImportAccessInstancePolicy(ctx)
		require.NoError(t, err)
		a := access.PolicyData.Attributes
		assert.Equal(t, []bool{true, false, true, true, false},
			[]bool{*a.CreateRootKey, *a.CreateStandardKey, *a.ImportRootKey, *a.ImportStandardKey, *a.EnforceToken},
			"omitted attributes take Key Protect's defaults")
		all, err = c.GetInstancePolicies(ctx)
		require.NoError(t, err)
		var types []string
		for _, p := range all {
			types = append(types, p.PolicyType)
		}
		assert.Equal(t, crk.InstancePolicyTypes(), types)

		// Out-of-range values: refused with the status and code, nothing changed.
		thirteen := 13
		apiErr(t, c.SetRotationInstancePolicy(ctx, true, &thirteen), http.StatusBadRequest, "INVALID_FIELD_ERR")
		apiErr(t, c.SetAllowedNetworkInstancePolicy(ctx, true, "everywhere"), http.StatusBadRequest, "INVALID_FIELD_ERR")
		apiErr(t, c.SetAllowedNetworkInstancePolicy(ctx, true, ""), http.StatusBadRequest, "INVALID_FIELD_ERR")
		apiErr(t, c.SetAllowedIPInstancePolicy(ctx, true, []string{"10.0.0.0/8"}), http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR")
		apiErr(t, c.SetInstancePolicies(ctx, kp.MultiplePolicies{
			Metrics:  &kp.BasicPolicyData{Enabled: false},
			Rotation: &kp.RotationPolicyData{Enabled: true, IntervalMonth: &thirteen},
		}), http.StatusBadRequest, "INVALID_FIELD_ERR")
		for _, tc := range []struct{ path, body, code string }{
			{"/api/v2/instance/policies?policy=bogus", "", "INVALID_QUERY_PARAM_ERR"},
			{"/api/v2/instance/policies?policy=rotation", `{"resources":[{"policy_type":"rotation","policy_data":{"enabled":true,"attributes":{"interval_month":0}}}]}`, "INVALID_FIELD_ERR"},
			{"/api/v2/instance/policies?policy=metrics", `{"resources":[{"policy_type":"dualAuthDelete","policy_data":{"enabled":false}}]}`, "BODY_QUERY_PARAM_MISMATCH_ERR"},
			{"/api/v2/instance/policies?policy=metrics", `{"resources":[{"policy_type":"metrics","policy_data":{"enabled":false}},{"policy_type":"metrics","policy_data":{"enabled":false}}]}`, "NUM_COLLECTION_RESOURCE_ERR"},
			{"/api/v2/instance/policies", `{"resources":[{"policy_type":"metrics","policy_data":{"enabled":false}},{"policy_type":"metrics","policy_data":{"enabled":false}}]}`, "NUM_COLLECTION_RESOURCE_ERR"},
			{"/api/v2/instance/policies", `{"metadata":{"collectionType":"x","collectionTotal":2},"resources":[{"policy_type":"metrics","policy_data":{"enabled":false}}]}`, "COLLECTION_TOTAL_MISMATCH_ERR"},
			{"/api/v2/instance/policies", `{"resources":[{"policy_type":"metrics","policy_data":{"enabled":false},"extra_field":1}]}`, "BAD_BODY_ERR"},
			{"/api/v2/instance/policies", `{"resources":[{"policy_type":"metrics","policy_data":{"enabled":false,"attributes":{"interval_month":2}}}]}`, "BAD_BODY_ERR"},
			{"/api/v2/instance/policies", `{"resources":[{"policy_type":"metrics","policy_data":{}}]}`, "INVALID_FIELD_ERR"},
			{"/api/v2/instance/policies", `{"resources":[{"policy_type":"allowedIP","policy_data":{"enabled":false}}]}`, "BAD_BODY_ERR"},
			{"/api/v2/instance/policies", `{"resources":[]}`, "BAD_BODY_ERR"},
		} {
			status, code := e.rawStatus(t, http.MethodPut, tc.path, tc.body)
			assert.Equal(t, http.StatusBadRequest, status, "%s %s", tc.path, tc.body)
			assert.Equal(t, tc.code, code, "%s %s", tc.path, tc.body)
		}
		status, code := e.rawStatus(t, http.MethodGet, "/api/v2/instance/policies?policy=allowedIP", "")
		assert.Equal(t, []any{http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR"}, []any{status, code})
		after, err := c.GetInstancePolicies(ctx)
		require.NoError(t, err)
		assert.Equal(t, all, after, "refused updates changed nothing")

		// SetInstancePolicies sets several at once; disabling rotation keeps its interval.
		e.clock.Advance(time.Minute)
		require.NoError(t, c.SetInstancePolicies(ctx, kp.MultiplePolicies{
			Metrics:               &kp.BasicPolicyData{Enabled: false},
			DualAuthDelete:        &kp.BasicPolicyData{Enabled: false},
			Rotation:              &kp.RotationPolicyData{Enabled: false},
			AllowedNetwork:        &kp.AllowedNetworkPolicyData{Enabled: true, Network: crk.NetworkPrivateOnly},
			KeyCreateImportAccess: &kp.KeyCreateImportAccessInstancePolicy{Enabled: false},
		}))
		after, err = c.GetInstancePolicies(ctx)
		require.NoError(t, err)
		require.Len(t, after, 5)
		for _, p := range after {
			assert.Equal(t, p.PolicyType == crk.PolicyAllowedNetwork, *p.PolicyData.Enabled, p.PolicyType)
			assert.Equal(t, e.clock.Now(), p.UpdatedAt.UTC(), p.PolicyType)
			assert.Equal(t, e.clock.Now().Add(-time.Minute), p.CreatedAt.UTC(), p.PolicyType)
		}
		assert.Equal(t, 3, *after[0].PolicyData.Attributes.IntervalMonth)
		assert.Nil(t, after[3].PolicyData.Attributes, "a disabled keyCreateImportAccess shows no attributes")

		// private-only: this client is on loopback, which is private; a request from a public
		// address is refused, from a private one served.
		_, err = c.GetInstancePolicies(ctx)
		require.NoError(t, err)
		h := NewServer(e.tenants)
		for _, tc := range []struct {
			remote string
			status int
		}{
			{"203.0.113.7:40000", http.StatusForbidden},
			{"[2001:db8::1]:40000", http.StatusForbidden},
			{"[::ffff:8.8.8.8]:1", http.StatusForbidden},
			{"10.1.2.3:40000", http.StatusOK},
			{"192.168.0.9:1", http.StatusOK},
			{"172.16.5.5:1", http.StatusOK},
			{"[fd00::1]:40000", http.StatusOK},
			{"[fe80::1]:40000", http.StatusOK},
			{"169.254.1.1:1", http.StatusOK},
			{"127.0.0.1:1", http.StatusOK},
			{"@", http.StatusForbidden}, // no IP address: not private (fail closed)
			{"", http.StatusForbidden},
			{"garbage", http.StatusForbidden},
		} {
			req := httptest.NewRequest(http.MethodGet, "/api/v2/instance/policies", nil)
			req.RemoteAddr = tc.remote
			req.Header.Set("Authorization", "Bearer "+staticToken)
			req.Header.Set("bluemix-instance", e.inst)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			assert.Equal(t, tc.status, w.Code, "%s: %s", tc.remote, w.Body)
			if tc.status == http.StatusForbidden {
				assert.Contains(t, w.Body.String(), "CONFIG_RULE_CONFLICT_ERR")
			}
		}
		// Every instance route, not only the policies: the lifecycle feed, acknowledgements,
		// import tokens, key rings. The token endpoint is IAM's, not the instance's.
		for _, path := range []string{LifecyclePath, AcksPath, ImportTokenPath, "/api/v2/key_rings"} {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.RemoteAddr = "203.0.113.7:40000"
			req.Header.Set("Authorization", "Bearer "+staticToken)
			req.Header.Set("bluemix-instance", e.inst)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			assert.Equal(t, http.StatusForbidden, w.Code, "%s: %s", path, w.Body)
		}
		require.NoError(t, c.SetAllowedNetworkInstancePolicy(ctx, false, ""))
		network, err = c.GetAllowedNetworkInstancePolicy(ctx)
		require.NoError(t, err)
		assert.False(t, *network.PolicyData.Enabled)
		assert.Equal(t, crk.NetworkPrivateOnly, *network.PolicyData.Attributes.AllowedNetwork, "disabling alone keeps the network")

		evs, err := e.svc(t).Events(ctx, crk.EventFilter{Action: crk.ActionInstancePolicyWrite})
		require.NoError(t, err)
		outcomes := map[string]int{}
		for _, ev := range evs {
			outcomes[ev.Outcome]++
		}
		// Five single sets, one multiple set and disabling the network; the refusals the
		// service saw (the API refuses malformed bodies itself, as kms.secrets.default).
		assert.Equal(t, map[string]int{crk.OutcomeSuccess: 7, crk.OutcomeFailure: 4}, outcomes)
		evs, err = e.svc(t).Events(ctx, crk.EventFilter{Action: crk.ActionDefault, Outcome: crk.OutcomeFailure})
		require.NoError(t, err)
		var refusedNetwork int
		for _, ev := range evs {
			if strings.Contains(ev.Reason, "private-only") {
				refusedNetwork++
			}
		}
		assert.Equal(t, 10, refusedNetwork, "each public request refused is audited")
	})
}

func TestPolicyEffectsOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		apiKey, err := e.tenants.CreateAPIKey(e.inst)
		require.NoError(t, err)
		bob := e.newClient(t, kp.ClientConfig{APIKey: apiKey, TokenURL: e.srv.URL + "/identity/token", InstanceID: e.inst})

		plain, err := c.CreateRootKey(ctx, "before", nil)
		require.NoError(t, err)
		assert.False(t, *plain.DualAuthDelete.Enabled, "Key Protect shows dualAuthDelete.enabled false")
		two := 2
		require.NoError(t, c.SetRotationInstancePolicy(ctx, true, &two))
		require.NoError(t, c.SetDualAuthInstancePolicy(ctx, true))

		// The instance rotation policy goes to new generated root keys; an override beats it.
		k, err := c.CreateRootKey(ctx, "after", nil)
		require.NoError(t, err)
		require.NotNil(t, k.DualAuthDelete)
		assert.True(t, *k.DualAuthDelete.Enabled)
		rp, err := c.GetRotationPolicy(ctx, k.ID)
		require.NoError(t, err)
		require.NotNil(t, rp)
		assert.Equal(t, 2, rp.Rotation.Interval)
		assert.True(t, *rp.Rotation.Enabled)
		std, err := c.CreateStandardKey(ctx, "std", nil)
		require.NoError(t, err)
		assert.Nil(t, std.Rotation)
		t6, f := true, false
		over, err := c.CreateRootKeyWithPolicyOverrides(ctx, "override", nil, nil, kp.Policy{
			Rotation: &kp.Rotation{Enabled: &t6, Interval: 6}, DualAuth: &kp.DualAuth{Enabled: &f}})
		require.NoError(t, err)
		assert.Equal(t, 6, over.Rotation.Interval)
		assert.False(t, *over.DualAuthDelete.Enabled)
		pols, err := c.GetPolicies(ctx, over.ID)
		require.NoError(t, err)
		require.Len(t, pols, 1, "rotation only")
		// Bad overrides are refused and create nothing.
		before, err := c.GetKeys(ctx, 0, 0)
		require.NoError(t, err)
		_, err = c.CreateRootKeyWithPolicyOverrides(ctx, "bad", nil, nil, kp.Policy{Rotation: &kp.Rotation{Enabled: &t6, Interval: 13}})
		apiErr(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		_, err = c.CreateRootKeyWithPolicyOverrides(ctx, "bad", nil, nil, kp.Policy{Rotation: &kp.Rotation{Enabled: &t6}})
		apiErr(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		_, err = c.CreateImportedRootKeyWithPolicyOverrides(ctx, "bad", nil, base64.StdEncoding.EncodeToString(mat(32, 5)), "", "", nil,
			kp.Policy{Rotation: &kp.Rotation{Enabled: &t6, Interval: 1}})
		apiErr(t, err, http.StatusBadRequest, "KEY_IMPORTED_ROTATION_POLICY_ERR")
		after, err := c.GetKeys(ctx, 0, 0)
		require.NoError(t, err)
		assert.Equal(t, len(before.Keys), len(after.Keys))

		// Dual authorization: no authorization, the setter itself, then a second principal.
		_, err = c.DeleteKey(ctx, k.ID, 0)
		apiErr(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		require.NoError(t, c.InitiateDualAuthDelete(ctx, k.ID))
		resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys/"+k.ID+"/metadata", "", nil)
		var body struct{ Resources []Key }
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		assert.Equal(t, &DualAuth{Enabled: true, KeySetForDeletion: ptr(true), AuthExpiration: RFC3339(e.clock.Now().Add(crk.DualAuthWindow))},
			body.Resources[0].DualAuthDelete)
		_, err = c.DeleteKey(ctx, k.ID, 0)
		apiErr(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		// Unset cancels, by anyone.
		require.NoError(t, bob.CancelDualAuthDelete(ctx, k.ID))
		_, err = bob.DeleteKey(ctx, k.ID, 0)
		apiErr(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		// The window ends by the service clock.
		require.NoError(t, c.InitiateDualAuthDelete(ctx, k.ID))
		e.clock.Advance(crk.DualAuthWindow)
		_, err = bob.DeleteKey(ctx, k.ID, 0)
		apiErr(t, err, http.StatusConflict, "AUTHORIZATIONS_NOT_MET")
		require.NoError(t, c.InitiateDualAuthDelete(ctx, k.ID))
		del, err := bob.DeleteKey(ctx, k.ID, kp.ReturnRepresentation)
		require.NoError(t, err)
		assert.Equal(t, 5, del.State)

		// Keys without the policy: no set-for-deletion.
		apiErr(t, c.InitiateDualAuthDelete(ctx, plain.ID), http.StatusConflict, "NOT_DUAL_AUTH_ERR")
		apiErr(t, c.CancelDualAuthDelete(ctx, plain.ID), http.StatusConflict, "NOT_DUAL_AUTH_ERR")
	})
}

func TestKeyPoliciesOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		k, err := c.CreateRootKey(ctx, "policies", nil)
		require.NoError(t, err)
		pols, err := c.GetPolicies(ctx, k.ID)
		require.NoError(t, err)
		assert.Empty(t, pols)

		// A rotation policy set disabled keeps its interval; enable and disable (which send
		// no interval) keep it too.
		p, err := c.SetRotationPolicy(ctx, k.ID, 3, false)
		require.NoError(t, err)
		assert.Equal(t, kp.Rotation{Enabled: ptr(false), Interval: 3}, *p.Rotation)
		p, err = c.EnableRotationPolicy(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, kp.Rotation{Enabled: ptr(true), Interval: 3}, *p.Rotation)
		p, err = c.DisableRotationPolicy(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, kp.Rotation{Enabled: ptr(false), Interval: 3}, *p.Rotation)
		p, err = c.SetRotationPolicy(ctx, k.ID, 5)
		require.NoError(t, err)
		assert.Equal(t, kp.Rotation{Enabled: ptr(true), Interval: 5}, *p.Rotation, "an interval alone enables the policy")
		// Out of range (the client sends -1 for 0): refused, nothing changed.
		for _, m := range []int{0, 13} {
			_, err = c.SetRotationPolicy(ctx, k.ID, m, true)
			apiErr(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		}
		_, err = c.SetPolicies(ctx, k.ID, true, 13, true, true)
		apiErr(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		p, err = c.GetRotationPolicy(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, kp.Rotation{Enabled: ptr(true), Interval: 5}, *p.Rotation)
		d, err := c.GetDualAuthDeletePolicy(ctx, k.ID)
		require.NoError(t, err)
		assert.Nil(t, d, "the refused SetPolicies set no dual authorization policy either")
		// Without a policy yet, enabling needs an interval.
		k2, err := c.CreateRootKey(ctx, "no policy", nil)
		require.NoError(t, err)
		_, err = c.EnableRotationPolicy(ctx, k2.ID)
		apiErr(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")

		// Both policies in one PUT; GetPolicies lists both in Key Protect's shape.
		e.clock.Advance(time.Minute)
		set, err := c.SetPolicies(ctx, k.ID, true, 2, true, true, false)
		require.NoError(t, err)
		require.Len(t, set, 2)
		pols, err = c.GetPolicies(ctx, k.ID)
		require.NoError(t, err)
		require.Len(t, pols, 2)
		assert.Equal(t, kp.Rotation{Enabled: ptr(false), Interval: 2}, *pols[0].Rotation)
		assert.Nil(t, pols[0].DualAuth)
		assert.Equal(t, kp.DualAuth{Enabled: ptr(true)}, *pols[1].DualAuth)
		assert.Nil(t, pols[1].Rotation)
		for _, p := range pols {
			assert.Equal(t, TypePolicy, p.Type)
			assert.Equal(t, k.CRN, p.CRN)
			assert.Equal(t, "kpapi:"+StaticTokenID, p.CreatedBy)
			assert.Equal(t, e.clock.Now(), p.UpdatedAt.UTC())
		}
		d, err = c.GetDualAuthDeletePolicy(ctx, k.ID)
		require.NoError(t, err)
		assert.True(t, *d.DualAuth.Enabled)
		// The dual authorization policy cannot be reverted.
		_, err = c.SetDualAuthDeletePolicy(ctx, k.ID, false)
		apiErr(t, err, http.StatusBadRequest, "INVALID_FIELD_ERR")
		d, err = c.GetDualAuthDeletePolicy(ctx, k.ID)
		require.NoError(t, err)
		assert.True(t, *d.DualAuth.Enabled)
		// Enabling it alone on another key.
		d, err = c.SetDualAuthDeletePolicy(ctx, k2.ID, true)
		require.NoError(t, err)
		assert.True(t, *d.DualAuth.Enabled)
		status, code := e.rawStatus(t, http.MethodGet, "/api/v2/keys/"+k.ID+"/policies?policy=allowedNetwork", "")
		assert.Equal(t, []any{http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR"}, []any{status, code})
		status, code = e.rawStatus(t, http.MethodPut, "/api/v2/keys/"+k.ID+"/policies?policy=rotation", `{"resources":[{"dualAuthDelete":{"enabled":true}}]}`)
		assert.Equal(t, []any{http.StatusBadRequest, "BODY_QUERY_PARAM_MISMATCH_ERR"}, []any{status, code})

		// keyCreateImportAccess refuses what it does not allow, with nothing created.
		require.NoError(t, c.SetKeyCreateImportAccessInstancePolicy(ctx, true, map[string]bool{kp.CreateStandardKey: false, kp.EnforceToken: true}))
		_, err = c.CreateStandardKey(ctx, "std", nil)
		apiErr(t, err, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR")
		_, err = c.CreateImportedRootKey(ctx, "plain import", nil, base64.StdEncoding.EncodeToString(mat(32, 9)), "", "")
		apiErr(t, err, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR")
		_, err = c.CreateRootKey(ctx, "allowed", nil)
		require.NoError(t, err)
		keys, err := c.GetKeys(ctx, 0, 0)
		require.NoError(t, err)
		assert.Len(t, keys.Keys, 3)
	})
}

// FuzzReadInstancePolicy: any resource of a PUT /instance/policies body is read into exactly
// the policy its policy_type names, or refused with a 400; never a panic.
func FuzzReadInstancePolicy(f *testing.F) {
	for _, s := range []string{
		`{"policy_type":"rotation","policy_data":{"enabled":true,"attributes":{"interval_month":3}}}`,
		`{"policy_type":"keyCreateImportAccess","policy_data":{"enabled":true,"attributes":{"create_root_key":false,"enforce_token":true}}}`,
		`{"policy_type":"keyCreateImportAccess","policy_data":{"enabled":false,"attributes":{"create_root_key":true}}}`,
		`{"policy_type":"allowedNetwork","policy_data":{"enabled":true,"attributes":{"allowed_network":"private-only"}}}`,
		`{"policy_type":"allowedIP","policy_data":{"enabled":true,"attributes":{"allowed_ip":["10.0.0.0/8"]}}}`,
		`{"policy_type":"metrics","policy_data":{}}`,
		`{"policy_type":"dualAuthDelete","policy_data":{"enabled":false,"attributes":{"interval_month":0}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var res InstancePolicyJSON
		if json.Unmarshal(data, &res) != nil {
			return
		}
		var u crk.InstancePolicyUpdate
		err := readInstancePolicy(res, &u)
		if err != nil {
			ae := statusOf(err)
			if ae.status != http.StatusBadRequest {
				t.Fatalf("refused with %d, want 400: %v", ae.status, err)
			}
			if u != (crk.InstancePolicyUpdate{}) {
				t.Fatalf("refused but set %+v", u)
			}
			return
		}
		set := map[string]bool{
			crk.PolicyRotation: u.Rotation != nil, crk.PolicyDualAuthDelete: u.DualAuthDelete != nil,
			crk.PolicyAllowedNetwork: u.AllowedNetwork != nil, crk.PolicyKeyCreateImportAccess: u.KeyCreateImportAccess != nil,
			crk.PolicyMetrics: u.Metrics != nil,
		}
		for typ, isSet := range set {
			if isSet != (typ == res.PolicyType) {
				t.Fatalf("policy_type %q: %s set %v", res.PolicyType, typ, isSet)
			}
		}
	})
}

// FuzzPrivateAddr: PrivateAddr never panics, and an address with a port is judged as the
// address alone.
func FuzzPrivateAddr(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:1", "8.8.8.8:53", "@", "", "[::ffff:10.0.0.1]:9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, remote string) {
		got := PrivateAddr(remote)
		if ap, err := netip.ParseAddrPort(remote); err == nil && got != PrivateAddr(ap.Addr().String()) {
			t.Fatalf("%q: %v, but %v for its address", remote, got, !got)
		}
	})
}
