package kpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
)

// TestDatabaseOutage: a server whose database is down answers 503 with the Key Protect error
// envelope (reason SERVICE_UNAVAILABLE_ERR, id "unavailable", a failure: not a refusal), on
// the key service's path (the static token, the instance's service already open: in long
// runs only), on the tenants' path (a token issued for an API key, checked in the database) and at the token
// endpoint: never a 401 nor a 400, for an outage is no bad credential, and never a 500.
// Once the database is back the same server answers 200, without a restart of its own.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()       // its own cluster, and mostly waiting: beside the others
	c := pgtest.New(t) // a cluster of the test's own, since it stops it
	dbURL := c.NewDatabase(t)
	ctx := testContext(t)
	// The tenants' transactions give up after a short retry time, and requests end after a
	// second (as behind a proxy's timeout), so that the outage is answered quickly: by
	// default a transaction keeps trying to reach the database for 10 s (pgdb.DefaultRetryFor).
	db, err := pgdb.Open(ctx, dbURL, pgdb.Options{RetryFor: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	services, err := crk.OpenDatabase(ctx, dbURL, nil)
	require.NoError(t, err)
	t.Cleanup(func() { services.Close() })
	tenants, err := OpenTenantsPostgres(ctx, db, func(id string) (*crk.Service, error) {
		return services.Open(crk.Options{MasterKey: testMasterKey(), Instance: id})
	})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	tenants.SetStaticToken(staticToken)
	api := NewServer(tenants)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		api.ServeHTTP(w, r.WithContext(ctx))
	}))
	t.Cleanup(srv.Close)

	inst, svc := tenants.Default()
	require.NotNil(t, svc)
	k, err := svc.CreateRootKey(ctx, "through the outage")
	require.NoError(t, err)
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	tok, _, err := tenants.Exchange(apiKey)
	require.NoError(t, err)

	get := func(token string) func() (int, []byte) {
		return func() (int, []byte) {
			req, err := http.NewRequest(http.MethodGet, srv.URL+"/api/v2/keys/"+k.ID+"/metadata", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("bluemix-instance", inst)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp.StatusCode, body
		}
	}
	exchange := func() (int, []byte) {
		resp, err := http.PostForm(srv.URL+"/identity/token", url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {apiKey}})
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, body
	}
	requests := []struct {
		name     string
		do       func() (int, []byte)
		envelope bool // a Key Protect error envelope, not the token endpoint's IAM body
	}{
		{"tenants, issued token", get(tok), true},
		{"token endpoint", exchange, false},
		// The key service's transactions end with the request's deadline.
		{"key service, static token", get(staticToken), true},
	}
	for _, r := range requests {
		status, body := r.do()
		require.Equal(t, http.StatusOK, status, "%s before the outage: %s", r.name, body)
	}

	c.Stop()
	for _, r := range requests {
		t.Run("down/"+r.name, func(t *testing.T) {
			status, body := r.do()
			require.Equal(t, http.StatusServiceUnavailable, status, "%s", body)
			if !r.envelope {
				assert.NotContains(t, string(body), "BXNIM0415E", "an outage is not an unknown API key")
				var iam map[string]any
				require.NoError(t, json.Unmarshal(body, &iam), "%s", body)
				assert.NotEmpty(t, iam["errorCode"])
				return
			}
			var env ErrorBody
			require.NoError(t, json.Unmarshal(body, &env), "%s", body)
			require.Len(t, env.Resources, 1)
			require.Len(t, env.Resources[0].Reasons, 1)
			reason := env.Resources[0].Reasons[0]
			assert.Equal(t, "SERVICE_UNAVAILABLE_ERR", reason.Code)
			assert.Equal(t, "unavailable", reason.CrkvolError)
			assert.Equal(t, http.StatusServiceUnavailable, reason.Status)
			assert.False(t, strings.Contains(reason.Message, "postgres"), "no database detail in the answer: %s", reason.Message)
			got := ParseError(status, body)
			assert.ErrorIs(t, got, crk.ErrUnavailable)
			assert.False(t, got.Refused())
		})
	}

	c.StartAgain(t)
	for _, r := range requests {
		status, body := r.do()
		assert.Equal(t, http.StatusOK, status, "%s after the outage: %s", r.name, body)
	}
}
