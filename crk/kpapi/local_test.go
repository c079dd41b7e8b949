package kpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// TestLocalServer: a local server serves its one service's instance whatever the
// Authorization header, audits each caller as its principal, refuses other instances, and
// has no token endpoint. Requests run concurrently, as a caller's goroutines may send them.
func TestLocalServer(t *testing.T) {
	t.Parallel()
	svc, err := crk.Open(filepath.Join(t.TempDir(), "crk.db"), crk.Options{MasterKey: testMasterKey()})
	require.NoError(t, err)
	defer svc.Close()
	srv := NewLocalServer(svc, "cli:alice")
	send := func(method, path, instance, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("bluemix-instance", instance)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		return w
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			w := send(http.MethodPost, "/api/v2/keys", svc.Instance(),
				fmt.Sprintf(`{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},"resources":[{"type":"application/vnd.ibm.kms.key+json","name":"k%d"}]}`, i))
			assert.Equal(t, http.StatusCreated, w.Code, w.Body.String())
			var out struct {
				Resources []Key `json:"resources"`
			}
			assert.NoError(t, json.Unmarshal(w.Body.Bytes(), &out))
			if assert.Len(t, out.Resources, 1) {
				assert.Equal(t, "cli:alice", out.Resources[0].CreatedBy)
			}
		})
	}
	wg.Wait()

	w := send(http.MethodGet, "/api/v2/keys", "11111111-1111-4111-8111-111111111111", "")
	assert.Equal(t, http.StatusUnauthorized, w.Code)
	assert.Contains(t, w.Body.String(), "UNAUTHORIZED_ERR")
	w = send(http.MethodPost, "/identity/token", svc.Instance(), "grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=x")
	assert.Equal(t, http.StatusNotFound, w.Code)

	// The in-process caller is private for allowedNetwork, whatever the request's RemoteAddr
	// (httptest's is the public 192.0.2.1).
	_, err = svc.SetInstancePolicies(t.Context(), crk.InstancePolicyUpdate{AllowedNetwork: &crk.AllowedNetworkSettings{Enabled: true, Network: crk.NetworkPrivateOnly}})
	require.NoError(t, err)
	w = send(http.MethodGet, "/api/v2/keys", svc.Instance(), "")
	assert.Equal(t, http.StatusOK, w.Code, w.Body.String())
}
