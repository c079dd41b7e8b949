package kpapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// batchCall sends a batch request and decodes a 200 answer into out; it returns the status
// and, for an error, the envelope's first reason.
func (e *env) batchCall(t *testing.T, method, path string, body any, out any) (int, ErrorReason) {
	t.Helper()
	raw, ok := body.(string)
	if !ok {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		raw = string(b)
	}
	resp := e.do(t, method, e.srv.URL+path, raw, http.Header{"Content-Type": {"application/json"}})
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "1", resp.Header.Get(BatchHeader), "every answer of a batch route says it is one")
	if resp.StatusCode != http.StatusOK {
		var eb ErrorBody
		require.NoError(t, json.Unmarshal(data, &eb), "%s", data)
		require.NotEmpty(t, eb.Resources)
		require.NotEmpty(t, eb.Resources[0].Reasons)
		return resp.StatusCode, eb.Resources[0].Reasons[0]
	}
	require.NoError(t, json.Unmarshal(data, out), "%s", data)
	return resp.StatusCode, ErrorReason{}
}

func countAPIEvents(t *testing.T, svc *crk.Service, action string) int {
	t.Helper()
	evs, err := svc.Events(t.Context(), crk.EventFilter{Action: action})
	require.NoError(t, err)
	return len(evs)
}

// TestBatchRewrapAPI: the batch rewrap answers per item in request order — Key Protect's
// rewrap members, or the error resource and status the single call would answer (another
// key's ciphertext, a wrong AAD) — through an alias as through the key id; each item is one
// event and the call one commit; a disabled or unknown key refuses the whole request.
func TestBatchRewrapAPI(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		svc := e.svc(t)
		k, err := svc.CreateRootKey(e.ctx, "batch")
		require.NoError(t, err)
		other, err := svc.CreateRootKey(e.ctx, "other")
		require.NoError(t, err)
		_, err = svc.CreateAlias(e.ctx, k.ID, "fleet-key")
		require.NoError(t, err)
		var items []RewrapBatchItem
		for i := range 3 {
			w, err := svc.Wrap(e.ctx, k.ID, []byte(fmt.Sprintf("dek %d", i)), []string{fmt.Sprint("vol-", i)})
			require.NoError(t, err)
			items = append(items, RewrapBatchItem{Ciphertext: base64.StdEncoding.EncodeToString(w.Ciphertext), AAD: []string{fmt.Sprint("vol-", i)}})
		}
		wo, err := svc.Wrap(e.ctx, other.ID, []byte("other"), nil)
		require.NoError(t, err)
		items = append(items,
			RewrapBatchItem{Ciphertext: base64.StdEncoding.EncodeToString(wo.Ciphertext)},
			RewrapBatchItem{Ciphertext: items[0].Ciphertext, AAD: []string{"vol-9"}})
		r2, err := svc.RotateKey(e.ctx, k.ID, nil)
		require.NoError(t, err)

		for _, id := range []string{k.ID, "fleet-key"} {
			events := countAPIEvents(t, svc, crk.ActionRewrap)
			commits := svc.StoreStats().Commits
			var ans RewrapBatchAnswer
			status, _ := e.batchCall(t, http.MethodPost, BatchPath(id, "rewrap"), RewrapBatchRequest{Items: items}, &ans)
			require.Equal(t, http.StatusOK, status)
			assert.Equal(t, uint64(1), svc.StoreStats().Commits-commits, "one commit for the call")
			assert.Equal(t, events+len(items), countAPIEvents(t, svc, crk.ActionRewrap), "one event per item")
			require.Len(t, ans.Items, len(items))
			for i := range 3 {
				it := ans.Items[i]
				require.Nil(t, it.Error, "item %d", i)
				assert.Equal(t, k.KeyVersion.ID, it.KeyVersion.ID)
				assert.Equal(t, r2.KeyVersion.ID, it.RewrappedKeyVersion.ID)
				ct, err := base64.StdEncoding.DecodeString(it.Ciphertext)
				require.NoError(t, err)
				u, err := svc.Unwrap(e.ctx, k.ID, ct, []string{fmt.Sprint("vol-", i)})
				require.NoError(t, err)
				assert.Equal(t, fmt.Sprintf("dek %d", i), string(u.Plaintext))
			}
			for i := 3; i < len(items); i++ {
				it := ans.Items[i]
				require.NotNil(t, it.Error, "item %d", i)
				assert.Empty(t, it.Ciphertext)
				assert.Equal(t, http.StatusUnprocessableEntity, it.Error.Status)
				assert.Equal(t, "UNPROCESSABLE_CIPHERTEXT_ERR", it.Error.Reasons[0].Code)
				assert.ErrorIs(t, it.Error.Err(), crk.ErrAuth)
			}
		}

		_, err = svc.DisableKey(e.ctx, k.ID)
		require.NoError(t, err)
		events := countAPIEvents(t, svc, crk.ActionRewrap)
		status, reason := e.batchCall(t, http.MethodPost, BatchPath(k.ID, "rewrap"), RewrapBatchRequest{Items: items[:2]}, nil)
		assert.Equal(t, http.StatusConflict, status)
		assert.Equal(t, "key_suspended", reason.CrkvolError)
		assert.Equal(t, events+1, countAPIEvents(t, svc, crk.ActionRewrap), "one event for the batch refused as a whole")
		status, reason = e.batchCall(t, http.MethodPost, BatchPath("6f1c1e0a-0d4b-4c57-9a57-5c2b1f3e9d10", "rewrap"), RewrapBatchRequest{Items: items[:1]}, nil)
		assert.Equal(t, http.StatusNotFound, status)
		assert.Equal(t, "KEY_NOT_FOUND_ERR", reason.Code)
	})
}

// TestBatchRegistrationsAPI: registrations move forward (never back) beside an item whose
// registration does not exist, refused alone with the single PATCH's status and reason; one
// event per item, one commit.
func TestBatchRegistrationsAPI(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		svc := e.svc(t)
		k, err := svc.CreateRootKey(e.ctx, "regs")
		require.NoError(t, err)
		crn := func(i int) string { return fmt.Sprintf("crn:v1:local:public:is:local:a/crkvol::volume:v%d", i) }
		for i := range 2 {
			_, err := svc.Register(e.ctx, k.ID, crn(i), crk.RegisterOptions{})
			require.NoError(t, err)
		}
		r2, err := svc.RotateKey(e.ctx, k.ID, nil)
		require.NoError(t, err)
		req := RegistrationsBatchRequest{Items: []RegistrationBatchItem{
			{ResourceCRN: crn(0), KeyVersion: KeyVersion{ID: r2.KeyVersion.ID}},
			{ResourceCRN: crn(5), KeyVersion: KeyVersion{ID: r2.KeyVersion.ID}},
			{ResourceCRN: crn(1), KeyVersion: KeyVersion{ID: r2.KeyVersion.ID}},
			{ResourceCRN: crn(0), KeyVersion: KeyVersion{ID: k.KeyVersion.ID}}, // not moved back
		}}
		events := countAPIEvents(t, svc, crk.ActionRegUpdate)
		commits := svc.StoreStats().Commits
		var ans RegistrationsBatchAnswer
		status, _ := e.batchCall(t, http.MethodPatch, BatchPath(k.ID, "registrations"), req, &ans)
		require.Equal(t, http.StatusOK, status)
		assert.Equal(t, uint64(1), svc.StoreStats().Commits-commits)
		assert.Equal(t, events+len(req.Items), countAPIEvents(t, svc, crk.ActionRegUpdate))
		require.Len(t, ans.Items, len(req.Items))
		for i, it := range ans.Items {
			assert.Equal(t, req.Items[i].ResourceCRN, it.ResourceCRN)
			if i == 1 {
				require.NotNil(t, it.Error)
				assert.Equal(t, http.StatusNotFound, it.Error.Status)
				assert.ErrorIs(t, it.Error.Err(), crk.ErrRegistrationNotFound)
				continue
			}
			assert.Nil(t, it.Error, "item %d", i)
		}
		regs, err := svc.ListRegistrations(e.ctx, crk.RegistrationFilter{KeyID: k.ID})
		require.NoError(t, err)
		for _, r := range regs {
			assert.Equal(t, r2.KeyVersion.ID, r.KeyVersion.ID, r.ResourceCRN)
		}
	})
}

// TestBatchMalformed: malformed bodies are refused with 400 (413 when too large), audited
// as kms.secrets.default, and change nothing; the routes need a token, allow only their
// method and apply the allowedNetwork policy as every route.
func TestBatchMalformed(t *testing.T) {
	e := newEnv(t)
	svc := e.svc(t)
	k, err := svc.CreateRootKey(e.ctx, "malformed")
	require.NoError(t, err)
	w, err := svc.Wrap(e.ctx, k.ID, []byte("dek"), nil)
	require.NoError(t, err)
	ct := base64.StdEncoding.EncodeToString(w.Ciphertext)
	many := `{"items":[` + strings.Repeat(`{"ciphertext":"`+ct+`"},`, MaxBatchItems) + `{"ciphertext":"` + ct + `"}]}`
	for _, tc := range []struct {
		name, path, method, body string
		status                   int
		target                   string
	}{
		{"empty body", "rewrap", http.MethodPost, ``, 400, "items"},
		{"not JSON", "rewrap", http.MethodPost, `{"items":[`, 400, ""},
		{"no items", "rewrap", http.MethodPost, `{}`, 400, "items"},
		{"empty items", "rewrap", http.MethodPost, `{"items":[]}`, 400, "items"},
		{"too many items", "rewrap", http.MethodPost, many, 400, "items"},
		{"item without ciphertext", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"` + ct + `"},{"aad":["x"]}]}`, 400, "items[1].ciphertext"},
		{"empty ciphertext", "rewrap", http.MethodPost, `{"items":[{"ciphertext":""}]}`, 400, "items[0].ciphertext"},
		{"not base64", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"***"}]}`, 400, "items[0].ciphertext"},
		{"null in aad", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"` + ct + `","aad":["a",null]}]}`, 400, "aad"},
		{"unknown member", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"` + ct + `","add":["a"]}]}`, 400, ""},
		{"duplicate member", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"` + ct + `","Ciphertext":"` + ct + `"}]}`, 400, "Ciphertext"},
		{"items not an array", "rewrap", http.MethodPost, `{"items":{}}`, 400, "items"},
		{"data after the value", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"` + ct + `"}]} {}`, 400, ""},
		{"too large", "rewrap", http.MethodPost, `{"items":[{"ciphertext":"` + strings.Repeat("A", MaxBatchBody) + `"}]}`, 413, ""},
		{"registration without CRN", "registrations", http.MethodPatch, `{"items":[{"keyVersion":{"id":"` + k.KeyVersion.ID + `"}}]}`, 400, "items[0].resourceCrn"},
		{"registration without version", "registrations", http.MethodPatch, `{"items":[{"resourceCrn":"crn:v1:x"}]}`, 400, "items[0].keyVersion.id"},
		{"registrations: no items", "registrations", http.MethodPatch, `{"items":null}`, 400, "items"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := countAPIEvents(t, svc, crk.ActionDefault)
			rewraps := countAPIEvents(t, svc, crk.ActionRewrap)
			status, reason := e.batchCall(t, tc.method, BatchPath(k.ID, tc.path), tc.body, nil)
			assert.Equal(t, tc.status, status, reason.Message)
			if tc.target != "" {
				require.NotNil(t, reason.Target, reason.Message)
				assert.Equal(t, tc.target, reason.Target.Name)
			}
			assert.Equal(t, before+1, countAPIEvents(t, svc, crk.ActionDefault), "audited")
			assert.Equal(t, rewraps, countAPIEvents(t, svc, crk.ActionRewrap), "nothing rewrapped")
		})
	}

	body := `{"items":[{"ciphertext":"` + ct + `"}]}`
	for _, tc := range []struct {
		name   string
		method string
		token  string
		remote string
		status int
	}{
		{"no token", http.MethodPost, "", "127.0.0.1:1", http.StatusUnauthorized},
		{"wrong method", http.MethodGet, staticToken, "127.0.0.1:1", http.StatusMethodNotAllowed},
		{"served", http.MethodPost, staticToken, "127.0.0.1:1", http.StatusOK},
	} {
		req := httptest.NewRequest(tc.method, BatchPath(k.ID, "rewrap"), strings.NewReader(body))
		req.RemoteAddr = tc.remote
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		req.Header.Set("bluemix-instance", e.inst)
		rec := httptest.NewRecorder()
		NewServer(e.tenants).ServeHTTP(rec, req)
		assert.Equal(t, tc.status, rec.Code, "%s: %s", tc.name, rec.Body)
	}
	require.NoError(t, e.client.SetAllowedNetworkInstancePolicy(e.ctx, true, crk.NetworkPrivateOnly))
	for _, op := range []struct{ method, path string }{{http.MethodPost, "rewrap"}, {http.MethodPatch, "registrations"}} {
		req := httptest.NewRequest(op.method, BatchPath(k.ID, op.path), strings.NewReader(body))
		req.RemoteAddr = "203.0.113.7:40000"
		req.Header.Set("Authorization", "Bearer "+staticToken)
		req.Header.Set("bluemix-instance", e.inst)
		rec := httptest.NewRecorder()
		NewServer(e.tenants).ServeHTTP(rec, req)
		assert.Equal(t, http.StatusForbidden, rec.Code, "%s: %s", op.path, rec.Body)
		assert.Contains(t, rec.Body.String(), "CONFIG_RULE_CONFLICT_ERR")
	}
}

// FuzzParseBatch reads arbitrary batch bodies. It must never panic; a body it accepts holds
// 1 to MaxBatchItems items, each with a ciphertext (or a CRN and a version); a body it refuses
// gets a 400 naming what is wrong.
func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(`{"items":[{"ciphertext":"Q1JLMQ==","aad":["a"]}]}`))
	f.Add([]byte(`{"items":[{"resourceCrn":"crn:v1:x","keyVersion":{"id":"v"}}]}`))
	f.Add([]byte(`{"items":[{"ciphertext":"Q1JLMQ==","CIPHERTEXT":"x"}]}`))
	f.Add([]byte(`{"items":[{"aad":[null]}]}`))
	f.Add([]byte(`{"items":[]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, raw []byte) {
		check := func(n int, err error) {
			if err != nil {
				var ae *apiError
				if !errors.As(err, &ae) || ae.status != http.StatusBadRequest || ae.msg == "" {
					t.Fatalf("refusal %v is not a 400 with a message", err)
				}
				return
			}
			if n < 1 || n > MaxBatchItems {
				t.Fatalf("accepted %d items", n)
			}
		}
		items, err := parseRewrapBatch(raw)
		check(len(items), err)
		for i, it := range items {
			if len(it.Ciphertext) == 0 {
				t.Fatalf("item %d accepted without a ciphertext", i)
			}
		}
		updates, err := parseRegistrationsBatch(raw)
		check(len(updates), err)
		for i, u := range updates {
			if u.CRN == "" || u.VersionID == "" {
				t.Fatalf("update %d accepted without a CRN or version", i)
			}
		}
	})
}

// TestParseRegistrationsBatchKeyVersion: an item's keyVersion is read as the single PATCH
// reads it: its id, with the creationDate a client may echo from a rewrap answer accepted
// and ignored; another member is refused by name.
func TestParseRegistrationsBatchKeyVersion(t *testing.T) {
	updates, err := parseRegistrationsBatch([]byte(`{"items":[{"resourceCrn":"crn:v1:x","keyVersion":{"id":"v2","creationDate":"2026-12-01T10:00:00Z"}}]}`))
	require.NoError(t, err)
	assert.Equal(t, []crk.RegistrationVersion{{CRN: "crn:v1:x", VersionID: "v2"}}, updates)
	_, err = parseRegistrationsBatch([]byte(`{"items":[{"resourceCrn":"crn:v1:x","keyVersion":{"id":"v2","state":1}}]}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "state")
}
