package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
)

// One API key is one principal for dual authorization: set for deletion over the API, it
// cannot delete from the console. The refusal has the API's status (409) and says how a key
// is set for deletion, which the console cannot do; another API key deletes.
func TestConsoleDualAuthOnePrincipal(t *testing.T) {
	f := newFixture(t, false)
	svc := f.svc()
	ctx := crk.WithInitiator(t.Context(), "kpapi:admin")
	_, err := svc.SetInstancePolicies(ctx, crk.InstancePolicyUpdate{DualAuthDelete: &crk.DualAuthSettings{Enabled: true}})
	require.NoError(t, err)
	k, err := svc.CreateKey(ctx, crk.CreateOptions{Name: "dual", Type: crk.RootKey})
	require.NoError(t, err)
	c := f.browser()

	// No authorization yet: 409 with what to do.
	resp, body := f.action(c, k.ID, "delete", url.Values{"confirm": {"dual"}})
	assert.Equal(t, http.StatusConflict, resp.StatusCode)
	assert.Contains(t, alertOf(body), "crkvol kp key schedule-delete "+k.ID)

	// The console's API key sets it for deletion through the API ...
	tok, _, err := f.tenants.Exchange(f.apiKey)
	require.NoError(t, err)
	req := httptest.NewRequest(http.MethodPost, "/api/v2/keys/"+k.ID+"/actions/setKeyForDeletion", nil)
	req.RemoteAddr = "127.0.0.1:1"
	req.Header.Set("bluemix-instance", f.inst)
	req.Header.Set("Authorization", "Bearer "+tok)
	w := httptest.NewRecorder()
	kpapi.NewServer(f.tenants).ServeHTTP(w, req)
	require.Equal(t, http.StatusNoContent, w.Code, w.Body.String())

	// ... and cannot delete it from the console.
	resp, body = f.action(c, k.ID, "delete", url.Values{"confirm": {"dual"}})
	assert.Equal(t, http.StatusConflict, resp.StatusCode)
	assert.Contains(t, alertOf(body), "same principal")
	meta, err := svc.GetKeyMetadata(t.Context(), k.ID)
	require.NoError(t, err)
	require.Equal(t, crk.StateActive, meta.State)
	require.True(t, meta.DualAuthDelete.KeySetForDeletion)

	// Another API key does.
	_, err = svc.DeleteKey(crk.WithInitiator(t.Context(), "console:someone-else"), k.ID, crk.DeleteOptions{})
	require.NoError(t, err)
}

// A refusal by keyCreateImportAccess has the API's status, 409.
func TestConsoleCreateRefusalStatus(t *testing.T) {
	f := newFixture(t, false)
	_, err := f.svc().SetInstancePolicies(t.Context(), crk.InstancePolicyUpdate{KeyCreateImportAccess: &crk.KeyCreateImportAccessSettings{
		Enabled: true, CreateStandardKey: true, ImportRootKey: true, ImportStandardKey: true}})
	require.NoError(t, err)
	c := f.browser()
	resp, body := f.post(c, f.keysPath(), url.Values{"csrf": {f.csrf(c, f.keysPath())}, "name": {"nope"}, "type": {"root"}})
	assert.Equal(t, http.StatusConflict, resp.StatusCode, alertOf(body))
}

// allowedNetwork private-only covers the console: from a public address its pages and
// actions are refused with 403, and so is a sign-in whose instances are all private-only.
func TestConsoleAllowedNetwork(t *testing.T) {
	f := newFixture(t, false)
	svc := f.svc()
	_, err := svc.SetInstancePolicies(t.Context(), crk.InstancePolicyUpdate{AllowedNetwork: &crk.AllowedNetworkSettings{Enabled: true, Network: crk.NetworkPrivateOnly}})
	require.NoError(t, err)
	k, err := svc.CreateKey(t.Context(), crk.CreateOptions{Name: "secret-name", Type: crk.RootKey})
	require.NoError(t, err)
	c := f.browser() // from loopback: private
	csrf := f.csrf(c, f.keysPath())
	h := f.srv.Config.Handler
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.RemoteAddr = "203.0.113.7:4444"
		h.ServeHTTP(w, r)
	})
	for _, path := range []string{f.keysPath(), f.keysPath() + "/" + k.ID, "/ui/i/" + f.inst + "/events", "/ui/i/" + f.inst + "/fleet"} {
		resp, body := f.get(c, path)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, path)
		assert.NotContains(t, body, "secret-name", path)
		assert.Contains(t, body, "private networks only", path)
	}
	resp, _ := f.post(c, f.keysPath(), url.Values{"csrf": {csrf}, "name": {"from-public"}, "type": {"root"}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp, _ = f.post(c, f.keysPath()+"/"+k.ID+"/disable", url.Values{"csrf": {csrf}})
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	keys, err := svc.ListKeys(t.Context(), crk.ListOptions{})
	require.NoError(t, err)
	require.Len(t, keys, 1)
	assert.Equal(t, crk.StateActive, keys[0].State)

	resp, body := f.signIn(f.client(), f.apiKey)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Contains(t, body, "private networks only")
	// The other instance's API key is not affected.
	resp, _ = f.signIn(f.client(), f.otherKe)
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)

	f.srv.Config.Handler = h
	resp, body = f.get(c, f.keysPath())
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, strings.Contains(body, "secret-name"))
}
