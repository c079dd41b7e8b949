package kpapi

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgdb"
	"crkvol/internal/tooltest"
)

// TestUnavailableMessage: a 503 tells the client what it is (the store out of reach, try
// again) without the cause's text; other failures stay "internal error".
func TestUnavailableMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		msg  string
	}{
		{"store unavailable", fmt.Errorf("crk: %w: dial 10.0.0.7: connection refused", crk.ErrUnavailable), "the key service's store is unavailable; try again later"},
		{"database unwrapped", fmt.Errorf("%w: password authentication failed", pgdb.ErrUnavailable), "the key service's store is unavailable; try again later"},
		{"master key", fmt.Errorf("crk: %w: key file mode 0644", crk.ErrMasterKey), "internal error"},
		{"other", errors.New("disk on fire"), "internal error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeError(rec, tc.err)
			got := ParseError(rec.Code, rec.Body.Bytes())
			assert.Equal(t, tc.msg, got.Message)
			for _, secret := range []string{"10.0.0.7", "password", "0644", "fire"} {
				assert.NotContains(t, rec.Body.String(), secret)
			}
		})
	}
}

// TestServerLogsFailures: a 500 is logged at ERROR with method, path and the error, a 503 at
// WARN; refusals are not logged; neither the bearer token, the query string nor an API key
// appears in the log.
func TestServerLogsFailures(t *testing.T) {
	dir := t.TempDir()
	tenants, err := OpenTenants(dir, crk.Options{MasterKey: bytes.Repeat([]byte{3}, 32)})
	require.NoError(t, err)
	defer tenants.Close()
	tenants.SetStaticToken(staticToken)
	inst, _ := tenants.Default()
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	var logs tooltest.SyncBuffer
	s := NewServer(tenants, WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))

	for _, tc := range []struct {
		name   string
		err    error
		status int
		want   []string // in the log; nil: nothing logged
	}{
		{"internal", errors.New("disk on fire"), http.StatusInternalServerError,
			[]string{"level=ERROR", "method=POST", "path=/api/v2/keys/k1", "disk on fire"}},
		{"unavailable", fmt.Errorf("reading key k1: %w: dial: connection refused", pgdb.ErrUnavailable), http.StatusServiceUnavailable,
			[]string{"level=WARN", "method=POST", "path=/api/v2/keys/k1", "connection refused"}},
		{"refusal", fmt.Errorf("wrap: %w", crk.ErrKeyNotFound), http.StatusNotFound, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logs.String())
			req := httptest.NewRequest(http.MethodPost, "/api/v2/keys/k1?action=wrap&secret=q", strings.NewReader("{}"))
			req.Header.Set("Authorization", "Bearer "+staticToken)
			req.Header.Set("bluemix-instance", inst)
			rec := httptest.NewRecorder()
			s.serveAPI(rec, req, func(*request) error { return tc.err })
			require.Equal(t, tc.status, rec.Code, rec.Body.String())
			got := logs.String()[before:]
			if tc.want == nil {
				assert.Empty(t, got)
				return
			}
			for _, w := range tc.want {
				assert.Contains(t, got, w)
			}
			assert.NotContains(t, got, staticToken)
			assert.NotContains(t, got, "secret=q")
			assert.NotContains(t, got, "action=wrap")
		})
	}

	t.Run("token endpoint", func(t *testing.T) {
		srv := httptest.NewServer(s)
		defer srv.Close()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "tenants.json"), []byte("{"), 0o600))
		before := len(logs.String())
		resp, err := http.PostForm(srv.URL+"/identity/token", url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {apiKey}})
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
		got := logs.String()[before:]
		assert.Contains(t, got, "level=ERROR")
		assert.Contains(t, got, "path=/identity/token")
		assert.NotContains(t, got, apiKey)
	})
}
