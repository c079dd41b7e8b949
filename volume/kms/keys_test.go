package kms_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/ident"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// TestRemoteKeyChangesSentOnce: creating and rotating a key are sent exactly once, whatever
// the answer. A 5xx (perhaps a proxy's, after the service acted) or a connection lost after
// the request was sent is an error matching kms.ErrOutcomeUnknown that says so; a refusal or
// a 429 is not (the service did not act), and a 401 is sent once more with a fresh token.
func TestRemoteKeyChangesSentOnce(t *testing.T) {
	const keyID = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"
	calls := map[string]func(r *kms.Remote) error{
		"create root": func(r *kms.Remote) error {
			_, err := r.CreateKey(t.Context(), kms.KeyOptions{Name: "k"})
			return err
		},
		"create imported standard": func(r *kms.Remote) error {
			_, err := r.CreateKey(t.Context(), kms.KeyOptions{Name: "k", Standard: true, Material: material()})
			return err
		},
		"rotate": func(r *kms.Remote) error { return r.RotateKey(t.Context(), keyID, nil) },
		"rotate imported": func(r *kms.Remote) error {
			return r.RotateKey(t.Context(), keyID, material())
		},
	}
	for _, tc := range []struct {
		name     string
		answer   func(w http.ResponseWriter)
		failures int // answers before the service acts normally
		unknown  bool
		refused  bool
		requests int
	}{
		{"503", status(http.StatusServiceUnavailable), 1, true, false, 1},
		{"502", status(http.StatusBadGateway), 1, true, false, 1},
		{"504", status(http.StatusGatewayTimeout), 1, true, false, 1},
		{"500", status(http.StatusInternalServerError), 1, true, false, 1},
		{"connection lost after the request", func(w http.ResponseWriter) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}, 1, true, false, 1},
		{"429: not acted on", status(http.StatusTooManyRequests), 1, false, false, 1},
		{"409: refused", status(http.StatusConflict), 1, false, true, 1},
		{"401: once more with a fresh token", status(http.StatusUnauthorized), 1, false, false, 2},
	} {
		for name, call := range calls {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				var mu sync.Mutex
				requests, left := 0, tc.failures
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/identity/token" {
						_, _ = w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600}`))
						return
					}
					body, _ := io.ReadAll(r.Body)
					mu.Lock()
					requests++
					fail := left > 0
					left--
					mu.Unlock()
					if fail {
						w.Header().Set("Retry-After", "0")
						tc.answer(w)
						return
					}
					if strings.HasSuffix(r.URL.Path, "/actions/rotate") {
						w.WriteHeader(http.StatusNoContent)
						return
					}
					var in struct {
						Resources []struct {
							Name        string `json:"name"`
							Extractable bool   `json:"extractable"`
						} `json:"resources"`
					}
					if json.Unmarshal(body, &in) != nil || len(in.Resources) != 1 {
						w.WriteHeader(http.StatusBadRequest)
						return
					}
					w.WriteHeader(http.StatusCreated)
					_ = json.NewEncoder(w).Encode(map[string]any{"resources": []map[string]any{{"id": keyID, "name": in.Resources[0].Name, "extractable": in.Resources[0].Extractable}}})
				}))
				defer srv.Close()
				r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "inst", APIKey: "k"})
				require.NoError(t, err)
				err = call(r)
				mu.Lock()
				assert.Equal(t, tc.requests, requests, "requests sent")
				mu.Unlock()
				if tc.requests > tc.failures {
					require.NoError(t, err)
					return
				}
				require.Error(t, err)
				assert.Equal(t, tc.unknown, errors.Is(err, kms.ErrOutcomeUnknown), "%v", err)
				assert.Equal(t, tc.refused, errors.Is(err, volume.ErrKeyRefused), "%v", err)
				if tc.unknown {
					assert.Contains(t, err.Error(), "outcome unknown")
					assert.Contains(t, err.Error(), "the service may have")
				}
			})
		}
	}
}

func status(code int) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) { w.WriteHeader(code) }
}

// TestRemoteKeyChangesNotSent: a request that never left (nothing listens at the URL) is not
// of unknown outcome.
func TestRemoteKeyChangesNotSent(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	r, err := kms.NewRemote(kms.RemoteConfig{URL: url, Instance: "inst", Token: "t"})
	require.NoError(t, err)
	_, err = r.CreateKey(t.Context(), kms.KeyOptions{Name: "k"})
	require.Error(t, err)
	assert.NotErrorIs(t, err, kms.ErrOutcomeUnknown)
	err = r.RotateKey(t.Context(), "k1", nil)
	require.Error(t, err)
	assert.NotErrorIs(t, err, kms.ErrOutcomeUnknown)
}

// TestRemoteKeyManagement creates, reads, lists and rotates keys over the kpapi server,
// authenticated with an API key.
func TestRemoteKeyManagement(t *testing.T) {
	tenants, err := kpapi.OpenTenants(filepath.Join(t.TempDir(), "state"), crk.Options{MasterKey: bytes.Repeat([]byte{6}, 32)})
	require.NoError(t, err)
	defer tenants.Close()
	inst, svc := tenants.Default()
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	srv := httptest.NewServer(kpapi.NewServer(tenants))
	defer srv.Close()
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
	require.NoError(t, err)

	for _, tc := range []struct {
		name     string
		opts     kms.KeyOptions
		standard bool
		imported bool
	}{
		{"root", kms.KeyOptions{Name: "root"}, false, false},
		{"standard", kms.KeyOptions{Name: "std", Standard: true}, true, false},
		{"imported root", kms.KeyOptions{Name: "imp", Material: material()}, false, true},
		{"imported standard", kms.KeyOptions{Name: "imp-std", Standard: true, Material: material()}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := r.CreateKey(t.Context(), tc.opts)
			require.NoError(t, err)
			_, err = ident.ParseUUID(k.ID)
			require.NoError(t, err)
			assert.Equal(t, tc.opts.Name, k.Name)
			assert.Equal(t, tc.standard, k.Extractable)
			got, err := svc.GetKeyMetadata(t.Context(), k.ID)
			require.NoError(t, err)
			assert.Equal(t, tc.imported, got.Imported)
			assert.Equal(t, tc.standard, got.Type == crk.StandardKey)

			meta, err := r.KeyMetadata(t.Context(), k.ID)
			require.NoError(t, err)
			assert.Equal(t, got.KeyVersion.ID, meta.KeyVersion.ID)
			if tc.standard {
				return
			}
			var m []byte
			if tc.imported {
				m = material()
				for i := range m {
					m[i] ^= 0x5a
				}
			}
			require.NoError(t, r.RotateKey(t.Context(), k.ID, m))
			rotated, err := svc.GetKeyMetadata(t.Context(), k.ID)
			require.NoError(t, err)
			assert.NotEqual(t, got.KeyVersion.ID, rotated.KeyVersion.ID)
			vs, err := r.KeyVersions(t.Context(), k.ID)
			require.NoError(t, err)
			assert.Len(t, vs.KeyVersion, 2)
		})
	}
	keys, err := r.ListKeys(t.Context())
	require.NoError(t, err)
	assert.Len(t, keys.Keys, 4)
}
