package kpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

const staticToken = "test-token"

type env struct {
	tenants *Tenants
	srv     *httptest.Server
	clock   *crk.ManualClock
	inst    string
	client  *kp.Client
	ctx     context.Context
	store   placed
}

// serverStore is a store the HTTP server's tests run over.
type serverStore struct {
	name string
	// place makes a fresh, empty store of t's own and returns how to open it.
	place func(t testing.TB) placed
	// share returns a store t may share with other tests, each on an instance of its own:
	// with a placed.shared store, a test must not use the default instance nor anything
	// that spans all instances (RunDue, instance listings).
	share func(t testing.TB) placed
}

// placed is a store made by [serverStore.place].
type placed struct {
	// open opens the Tenants of the store; it may be called again after the Tenants it gave
	// is closed, as a restarted server does.
	open func(opts crk.Options) (*Tenants, error)
	// openInstance opens the key service of instance directly on the store with opts, then
	// closes it, as another program would.
	openInstance func(instance string, opts crk.Options) error
	// shared tells a store that other tests use too.
	shared bool
}

// serverStores are the stores the tests of the HTTP server run over: a state directory
// (tenants.json and bbolt files) and a PostgreSQL database, one of the test's own on the
// test binary's shared cluster.
var serverStores = []serverStore{
	{"dir", placeDir, placeDir},
	{"postgres", placePostgres, sharePostgres},
}

func placeDir(t testing.TB) placed {
	dir := t.TempDir()
	var tenants *Tenants
	return placed{
		open: func(opts crk.Options) (*Tenants, error) {
			var err error
			tenants, err = OpenTenants(dir, opts)
			return tenants, err
		},
		openInstance: func(instance string, opts crk.Options) error {
			opts.Instance = instance
			svc, err := crk.Open(tenants.instancePath(instance), opts)
			if err != nil {
				return err
			}
			return svc.Close()
		},
	}
}

// placePostgres places a store on a database of t's own.
func placePostgres(t testing.TB) placed { return postgresAt(pgtest.Start(t).NewDatabase(t), false) }

// sharePostgres places a store on the database the tests of the binary share: creating a
// database and its tables costs about a second on a busy machine.
func sharePostgres(t testing.TB) placed {
	return postgresAt(pgtest.Start(t).SharedDatabase(t, "kpapi_server_tests"), true)
}

func postgresAt(url string, shared bool) placed {
	ctx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), time.Minute)
	}
	return placed{
		open: func(opts crk.Options) (*Tenants, error) {
			ctx, cancel := ctx()
			defer cancel()
			return OpenTenantsDatabase(ctx, url, opts)
		},
		openInstance: func(instance string, opts crk.Options) error {
			ctx, cancel := ctx()
			defer cancel()
			db, err := crk.OpenDatabase(ctx, url, nil)
			if err != nil {
				return err
			}
			defer db.Close()
			opts.Instance = instance
			svc, err := db.Open(opts)
			if err != nil {
				return err
			}
			return svc.Close()
		},
		shared: shared,
	}
}

// forEachServerStore runs test once per store of [serverStores], as parallel subtests
// named after them. The PostgreSQL subtests run in the long run (CRKVOL_LONG_TESTS=1, as in
// CI), to keep a plain go test ./... within its time: crk's own suite, the tenants tests and
// the outage and concurrency tests of this package run on PostgreSQL in every run.
func forEachServerStore(t *testing.T, test func(t *testing.T, st serverStore)) {
	for _, st := range serverStores {
		t.Run(st.name, func(t *testing.T) {
			if st.name == "postgres" && !tooltest.Long() {
				t.Skip("the PostgreSQL variant of the API tests runs with CRKVOL_LONG_TESTS=1 (CI)")
			}
			t.Parallel()
			test(t, st)
		})
	}
}

// forEachEnv runs test once per store of [serverStores], each with a fresh env on it.
func forEachEnv(t *testing.T, test func(t *testing.T, e *env)) {
	forEachServerStore(t, func(t *testing.T, st serverStore) { test(t, newEnvOn(t, st)) })
}

// newEnv is an env on a state directory, for the benchmarks.
func newEnv(t testing.TB) *env { return newEnvOn(t, serverStores[0]) }

// svc is the key service of e's instance.
func (e *env) svc(t testing.TB) *crk.Service {
	t.Helper()
	svc, err := e.tenants.Service(e.inst)
	require.NoError(t, err)
	return svc
}

// newEnvOn starts a server on a store of kind st (on an instance of its own when the store
// is shared), its clock manual, the static token
// accepted, and a client of the official library for the default instance.
func newEnvOn(t testing.TB, st serverStore) *env {
	t.Helper()
	return newEnvWith(t, st, nil)
}

// newEnvWith is newEnvOn with the service options changed by opt (nil: none).
func newEnvWith(t testing.TB, st serverStore, opt func(*crk.Options)) *env {
	t.Helper()
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	p := st.share(t)
	o := crk.Options{Clock: clock, MasterKey: bytes.Repeat([]byte{3}, 32)}
	if opt != nil {
		opt(&o)
	}
	tenants, err := p.open(o)
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	tenants.SetStaticToken(staticToken)
	srv := httptest.NewServer(NewServer(tenants))
	t.Cleanup(srv.Close)
	inst, _ := tenants.Default()
	if p.shared {
		inst, err = tenants.CreateInstance(t.Name())
		require.NoError(t, err)
	}
	e := &env{tenants: tenants, srv: srv, clock: clock, inst: inst, ctx: context.Background(), store: p}
	e.client = e.newClient(t, kp.ClientConfig{Authorization: "Bearer " + staticToken, InstanceID: inst})
	return e
}

func (e *env) newClient(t testing.TB, cfg kp.ClientConfig) *kp.Client {
	t.Helper()
	cfg.BaseURL = e.srv.URL
	cfg.Verbose = kp.VerboseNone
	c, err := kp.New(cfg, kp.DefaultTransport())
	require.NoError(t, err)
	return c
}

// reason returns the Key Protect reason code and HTTP status of a client error.
func reason(t testing.TB, err error) (string, int) {
	t.Helper()
	require.Error(t, err)
	var kerr *kp.Error
	require.True(t, errors.As(err, &kerr), "%T: %v", err, err)
	code := ""
	if len(kerr.Reasons) > 0 {
		code = kerr.Reasons[0].Code
	}
	return code, kerr.StatusCode
}

func TestOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx

		root, err := c.CreateRootKey(ctx, "root", nil)
		require.NoError(t, err)
		assert.False(t, root.Extractable)
		assert.Equal(t, 1, root.State)
		imported, err := c.CreateImportedRootKey(ctx, "imported", nil, base64.StdEncoding.EncodeToString(mat(32, 1)), "", "")
		require.NoError(t, err)
		assert.True(t, imported.Imported)
		std, err := c.CreateStandardKey(ctx, "standard", nil)
		require.NoError(t, err)
		assert.True(t, std.Extractable)

		// Listing with paging.
		page, err := c.GetKeys(ctx, 2, 0)
		require.NoError(t, err)
		assert.Len(t, page.Keys, 2)
		page, err = c.GetKeys(ctx, 2, 2)
		require.NoError(t, err)
		assert.Len(t, page.Keys, 1)

		got, err := c.GetKey(ctx, std.ID)
		require.NoError(t, err)
		assert.NotEmpty(t, got.Payload, "standard keys return their payload")
		meta, err := c.GetKeyMetadata(ctx, root.ID)
		require.NoError(t, err)
		assert.Equal(t, root.CRN, meta.CRN)
		assert.Empty(t, meta.Payload)

		// Wrap and unwrap, with and without AAD; WrapCreateDEK.
		dek := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
		aad := []string{"volume-1"}
		ct, err := c.Wrap(ctx, root.ID, []byte(dek), &aad)
		require.NoError(t, err)
		pt, err := c.Unwrap(ctx, root.ID, ct, &aad)
		require.NoError(t, err)
		assert.Equal(t, dek, string(pt))
		_, err = c.Unwrap(ctx, root.ID, ct, nil)
		code, status := reason(t, err)
		assert.Equal(t, "UNPROCESSABLE_CIPHERTEXT_ERR", code)
		assert.Equal(t, http.StatusUnprocessableEntity, status)
		ct2, err := c.Wrap(ctx, root.ID, []byte(dek), nil)
		require.NoError(t, err)
		genPT, genCT, err := c.WrapCreateDEK(ctx, root.ID, nil)
		require.NoError(t, err)
		pt, err = c.Unwrap(ctx, root.ID, genCT, nil)
		require.NoError(t, err)
		assert.Equal(t, genPT, pt)

		// Rotation: the first at once, a second within the hour refused, allowed an hour later.
		require.NoError(t, c.Rotate(ctx, root.ID, ""))
		code, status = reason(t, c.Rotate(ctx, root.ID, ""))
		assert.Equal(t, "KEY_ROTATION_NOT_PERMITTED", code)
		assert.Equal(t, http.StatusConflict, status)
		e.clock.Advance(time.Hour)
		require.NoError(t, c.Rotate(ctx, root.ID, ""))
		code, status = reason(t, c.Rotate(ctx, imported.ID, ""))
		assert.Equal(t, "KEY_PAYLOAD_REQ_ERR", code)
		assert.Equal(t, http.StatusBadRequest, status)
		code, _ = reason(t, c.Rotate(ctx, root.ID, base64.StdEncoding.EncodeToString(mat(32, 5))))
		assert.Equal(t, "INVALID_QUERY_PARAM_ERR", code)
		require.NoError(t, c.Rotate(ctx, imported.ID, base64.StdEncoding.EncodeToString(mat(32, 2))))
		code, _ = reason(t, c.Rotate(ctx, std.ID, ""))
		assert.Equal(t, "KEY_ROOT_REQ_ERR", code)

		versions, err := c.ListKeyVersions(ctx, root.ID, nil)
		require.NoError(t, err)
		assert.Len(t, versions.KeyVersion, 3)

		// An old ciphertext unwraps and comes back rewrapped.
		pt, rewrapped, err := c.UnwrapV2(ctx, root.ID, ct2, nil)
		require.NoError(t, err)
		assert.Equal(t, dek, string(pt))
		require.NotEmpty(t, rewrapped)
		res, err := c.WrapV2(ctx, root.ID, []byte(dek), nil)
		require.NoError(t, err)
		assert.Equal(t, versions.KeyVersion[0].ID, res.KeyVersion.ID)

		// Rotation policies.
		p, err := c.SetRotationPolicy(ctx, root.ID, 12)
		require.NoError(t, err)
		assert.Equal(t, 12, p.Rotation.Interval)
		_, err = c.SetRotationPolicy(ctx, root.ID, 13)
		code, status = reason(t, err)
		assert.Equal(t, "INVALID_FIELD_ERR", code)
		assert.Equal(t, http.StatusBadRequest, status)
		_, err = c.SetRotationPolicy(ctx, imported.ID, 3)
		_, status = reason(t, err)
		assert.Equal(t, http.StatusBadRequest, status)
		p, err = c.GetRotationPolicy(ctx, root.ID)
		require.NoError(t, err)
		assert.Equal(t, 12, p.Rotation.Interval)

		// Disable and enable.
		require.NoError(t, c.DisableKey(ctx, root.ID))
		_, err = c.Wrap(ctx, root.ID, []byte(dek), nil)
		code, status = reason(t, err)
		assert.Equal(t, "KEY_ACTION_INVALID_STATE_ERR", code)
		assert.Equal(t, http.StatusConflict, status)
		code, _ = reason(t, c.EnableKey(ctx, root.ID))
		assert.Equal(t, "REQ_TOO_EARLY_ERR", code)
		e.clock.Advance(31 * time.Second)
		require.NoError(t, c.EnableKey(ctx, root.ID))

		// Registrations protect the key; delete, restore.
		regURL := e.srv.URL + "/api/v2/keys/" + root.ID + "/registrations/" + "crn%3Av1%3Alocal%3Apublic%3Ais%3Alocal%3Aa%2Fcrkvol%3A%3Avolume%3Av1"
		resp := e.do(t, http.MethodPost, regURL, `{"preventKeyDeletion":false,"description":"vol"}`, nil)
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		regs, err := c.ListRegistrations(ctx, root.ID, "")
		require.NoError(t, err)
		require.Len(t, regs.Registrations, 1)
		assert.Equal(t, "crn:v1:local:public:is:local:a/crkvol::volume:v1", regs.Registrations[0].ResourceCrn)
		_, err = c.DeleteKey(ctx, root.ID, kp.ReturnMinimal)
		code, status = reason(t, err)
		assert.Equal(t, "PROTECTED_RESOURCE_ERR", code)
		assert.Equal(t, http.StatusConflict, status)
		require.Equal(t, http.StatusNoContent, e.do(t, http.MethodDelete, regURL, "", nil).StatusCode)
		deleted, err := c.DeleteKey(ctx, root.ID, kp.ReturnRepresentation)
		require.NoError(t, err)
		assert.Equal(t, 5, deleted.State)
		_, err = c.Unwrap(ctx, root.ID, ct, &aad)
		_, status = reason(t, err)
		assert.Equal(t, http.StatusGone, status)
		e.clock.Advance(31 * time.Second)
		restored, err := c.RestoreKey(ctx, root.ID)
		require.NoError(t, err)
		assert.Equal(t, 1, restored.State)
		pt, err = c.Unwrap(ctx, root.ID, ct, &aad)
		require.NoError(t, err)
		assert.Equal(t, dek, string(pt))

		_, err = c.GetKey(ctx, "00000000-0000-4000-8000-000000000000")
		code, status = reason(t, err)
		assert.Equal(t, "KEY_NOT_FOUND_ERR", code)
		assert.Equal(t, http.StatusNotFound, status)
	})
}

// do sends a raw request with the static token and the default instance.
func (e *env) do(t testing.TB, method, url, body string, hdr http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+staticToken)
	req.Header.Set("bluemix-instance", e.inst)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestAPIKeysAndInstances(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		inst, err := e.tenants.CreateInstance("team-a")
		require.NoError(t, err)
		apiKey, err := e.tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		c := e.newClient(t, kp.ClientConfig{APIKey: apiKey, TokenURL: e.srv.URL + "/identity/token", InstanceID: inst})
		k, err := c.CreateRootKey(e.ctx, "team-a-key", nil)
		require.NoError(t, err)
		assert.Contains(t, k.CRN, ":"+inst+":key:")
		// The audit log names the API key behind the token, not the instance; the static
		// token, which has no key, by its own name.
		instSvc, err := e.tenants.Service(inst)
		require.NoError(t, err)
		evs, err := instSvc.Events(e.ctx, crk.EventFilter{KeyID: k.ID})
		require.NoError(t, err)
		require.NotEmpty(t, evs)
		for _, ev := range evs {
			assert.Equal(t, "kpapi:"+APIKeyID(apiKey), ev.Initiator, "%s", ev.Action)
		}
		dk, err := e.client.CreateRootKey(e.ctx, "static-key", nil)
		require.NoError(t, err)
		evs, err = e.svc(t).Events(e.ctx, crk.EventFilter{KeyID: dk.ID})
		require.NoError(t, err)
		require.NotEmpty(t, evs)
		for _, ev := range evs {
			assert.Equal(t, "kpapi:"+StaticTokenID, ev.Initiator, "%s", ev.Action)
		}

		// The default instance sees none of team-a's keys, and team-a's token is no good there.
		keys, err := e.client.GetKeys(e.ctx, 0, 0)
		require.NoError(t, err)
		assert.Len(t, keys.Keys, 1, "only its own static-key")
		_, err = e.client.GetKey(e.ctx, k.ID)
		_, status := reason(t, err)
		assert.Equal(t, http.StatusNotFound, status)
		other := e.newClient(t, kp.ClientConfig{APIKey: apiKey, TokenURL: e.srv.URL + "/oidc/token", InstanceID: e.inst})
		_, err = other.GetKeys(e.ctx, 0, 0)
		_, status = reason(t, err)
		assert.Equal(t, http.StatusUnauthorized, status)

		bad := e.newClient(t, kp.ClientConfig{APIKey: "nope", TokenURL: e.srv.URL + "/identity/token", InstanceID: inst})
		_, err = bad.GetKeys(e.ctx, 0, 0)
		assert.Error(t, err)

		// Missing token, unknown instance, malformed instance header.
		for _, tc := range []struct {
			auth, instance string
			status         int
		}{
			{"", inst, http.StatusUnauthorized},
			{"Bearer wrong", inst, http.StatusUnauthorized},
			{"Bearer " + staticToken, "11111111-1111-4111-8111-111111111111", http.StatusUnauthorized},
			{"Bearer " + staticToken, "", http.StatusBadRequest},
			{"Bearer " + staticToken, "not-a-uuid", http.StatusBadRequest},
			{staticToken, inst, http.StatusBadRequest}, // no "Bearer "
			{"Bearer " + staticToken, strings.ToUpper(inst), http.StatusOK},
		} {
			req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/api/v2/keys", nil)
			req.Header.Set("Authorization", tc.auth)
			req.Header.Set("bluemix-instance", tc.instance)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tc.status, resp.StatusCode, "%+v", tc)
		}
	})
}

// TestCurlExamples runs the seed document's curl examples as written.
func TestCurlExamples(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k, err := e.client.CreateImportedRootKey(e.ctx, "imported", nil, base64.StdEncoding.EncodeToString(mat(32, 3)), "", "")
		require.NoError(t, err)
		ct := http.Header{"Content-Type": {"application/vnd.ibm.kms.key_action+json"}}
		resp := e.do(t, http.MethodPost, e.srv.URL+"/api/v2/keys/"+k.ID+"?action=rotate",
			`{"payload":"`+base64.StdEncoding.EncodeToString(mat(32, 4))+`"}`, ct)
		assert.Equal(t, http.StatusNoContent, resp.StatusCode)
		for _, path := range []string{"/keys/" + k.ID + "/registrations", "/keys/metadata", "/keys/" + k.ID + "/versions"} {
			resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2"+path, "", http.Header{"Accept": {"application/vnd.ibm.collection+json"}})
			require.Equal(t, http.StatusOK, resp.StatusCode, path)
			var body struct {
				Metadata  Metadata          `json:"metadata"`
				Resources []json.RawMessage `json:"resources"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body), path)
			assert.NotEmpty(t, body.Metadata.CollectionType, path)
		}
		// State filters: deleted keys are listed only on request.
		countState := func(q string) int {
			resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys"+q, "", nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			var body struct {
				Metadata Metadata `json:"metadata"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			return body.Metadata.CollectionTotal
		}
		gone, err := e.client.CreateRootKey(e.ctx, "gone", nil)
		require.NoError(t, err)
		_, err = e.client.DeleteKey(e.ctx, gone.ID, kp.ReturnMinimal)
		require.NoError(t, err)
		assert.Equal(t, 1, countState(""))
		assert.Equal(t, 1, countState("?state=5"))
		assert.Equal(t, 2, countState("?state=1,5"))

		resp = e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys/metadata", "", nil)
		var list struct {
			Resources []Key `json:"resources"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
		require.Len(t, list.Resources, 1)
		assert.NotEmpty(t, list.Resources[0].LastRotateDate)
		assert.NotNil(t, list.Resources[0].KeyVersion)
	})
}

// TestMalformedRequests: each gets its 4xx and the error envelope, and none changes state.
func TestMalformedRequests(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k, err := e.client.CreateRootKey(e.ctx, "key1", nil)
		require.NoError(t, err)
		before, err := e.client.GetKeys(e.ctx, 0, 0)
		require.NoError(t, err)
		keys := e.srv.URL + "/api/v2/keys"
		for _, tc := range []struct {
			name, method, url, body string
			status                  int
			code                    string
		}{
			{"bad json", http.MethodPost, keys, `{"resources":[`, 400, "BAD_BODY_ERR"},
			{"trailing junk", http.MethodPost, keys, `{"resources":[{"name":"abc"}]}}}`, 400, "BAD_BODY_ERR"},
			{"versions limit", http.MethodGet, keys + "/" + k.ID + "/versions?limit=0", ``, 400, "INVALID_QUERY_PARAM_ERR"},
			{"unknown path", http.MethodGet, e.srv.URL + "/api/v2/nothing", ``, 404, "NOT_FOUND_ERR"},
			{"wrong type", http.MethodPost, keys, `{"resources":[{"name":5}]}`, 400, "BAD_BODY_ERR"},
			{"two keys", http.MethodPost, keys, `{"metadata":{"collectionTotal":2},"resources":[{"name":"a"},{"name":"b"}]}`, 400, "BAD_BODY_ERR"},
			{"total mismatch", http.MethodPost, keys, `{"metadata":{"collectionTotal":2},"resources":[{"name":"a"}]}`, 400, "COLLECTION_TOTAL_MISMATCH_ERR"},
			{"huge body", http.MethodPost, keys, `{"resources":[{"name":"` + strings.Repeat("x", MaxBody) + `"}]}`, 413, "BAD_BODY_ERR"},
			{"bad base64", http.MethodPost, keys + "/" + k.ID + "/actions/wrap", `{"plaintext":"!!!"}`, 400, "INVALID_FIELD_ERR"},
			{"wrong key size", http.MethodPost, keys, `{"resources":[{"name":"imp","payload":"AAECAw=="}]}`, 400, "INVALID_FIELD_ERR"},
			{"unknown action", http.MethodPost, keys + "/" + k.ID + "/actions/explode", ``, 400, "INVALID_QUERY_PARAM_ERR"},
			{"wrong method", http.MethodPut, keys + "/" + k.ID, ``, 405, "METHOD_NOT_ALLOWED_ERR"},
			{"limit", http.MethodGet, keys + "?limit=0", ``, 400, "INVALID_QUERY_PARAM_ERR"},
			{"bidi override in a name", http.MethodPost, keys, `{"resources":[{"name":"invoice\u202efdp.exe"}]}`, 400, "INVALID_FIELD_ERR"},
			{"control character in a description", http.MethodPost, keys, `{"resources":[{"name":"ok","description":"a\u001b[2Jb"}]}`, 400, "INVALID_FIELD_ERR"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp := e.do(t, tc.method, tc.url, tc.body, nil)
				assert.Equal(t, tc.status, resp.StatusCode)
				raw, _ := io.ReadAll(resp.Body)
				var env ErrorBody
				require.NoError(t, json.Unmarshal(raw, &env), "%s", raw)
				require.Len(t, env.Resources, 1)
				assert.NotEmpty(t, env.Resources[0].ErrorMsg)
				assert.Equal(t, tc.code, env.Resources[0].Reasons[0].Code)
			})
		}
		after, err := e.client.GetKeys(e.ctx, 0, 0)
		require.NoError(t, err)
		assert.Equal(t, len(before.Keys), len(after.Keys), "no state changed")
		vs, err := e.client.ListKeyVersions(e.ctx, k.ID, nil)
		require.NoError(t, err)
		assert.Len(t, vs.KeyVersion, 1)
		svc := e.svc(t)
		evs, err := svc.Events(e.ctx, crk.EventFilter{Action: crk.ActionDefault})
		require.NoError(t, err)
		assert.NotEmpty(t, evs, "refused requests are audited")
	})
}

// BenchmarkServerWrapUnwrap measures a wrap and an unwrap through the official client over
// loopback, with keep-alive, against the in-process figure of BenchmarkInProcessWrapUnwrap.
func BenchmarkServerWrapUnwrap(b *testing.B) {
	e := newEnv(b)
	transport := kp.DefaultTransport().(*http.Transport)
	transport.DisableKeepAlives = false
	transport.MaxIdleConnsPerHost = 16 // the client's default pools no idle connection
	c, err := kp.New(kp.ClientConfig{BaseURL: e.srv.URL, Authorization: "Bearer " + staticToken, InstanceID: e.inst, Verbose: kp.VerboseNone}, transport)
	require.NoError(b, err)
	k, err := c.CreateRootKey(e.ctx, "bench", nil)
	require.NoError(b, err)
	dek := []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)))
	b.ReportAllocs()
	for b.Loop() {
		ct, err := c.Wrap(e.ctx, k.ID, dek, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Unwrap(e.ctx, k.ID, ct, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "wrap+unwrap/s")
}

// BenchmarkInProcessWrapUnwrap is the in-process reference for BenchmarkServerWrapUnwrap.
func BenchmarkInProcessWrapUnwrap(b *testing.B) {
	e := newEnv(b)
	svc := e.svc(b)
	k, err := svc.CreateRootKey(e.ctx, "bench")
	require.NoError(b, err)
	dek := bytes.Repeat([]byte{1}, 32)
	b.ReportAllocs()
	for b.Loop() {
		w, err := svc.Wrap(e.ctx, k.ID, dek, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := svc.Unwrap(e.ctx, k.ID, w.Ciphertext, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "wrap+unwrap/s")
}

// mat returns n bytes of non-trivial key material.
func mat(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed*31 + byte(i*i+7*i)
	}
	return b
}

// TestStrictBodies: a member given twice (in any letter case, at any depth) and a null inside
// aad are refused with 400 and a reason naming the member, instead of the last value winning
// or null becoming "".
func TestStrictBodies(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k, err := e.client.CreateRootKey(e.ctx, "key1", nil)
		require.NoError(t, err)
		keys := e.srv.URL + "/api/v2/keys"
		wrap := keys + "/" + k.ID + "/actions/wrap"
		p1 := base64.StdEncoding.EncodeToString(mat(32, 1))
		p2 := base64.StdEncoding.EncodeToString(mat(32, 2))
		for _, tc := range []struct {
			name, url, body string
			status          int
			code, msg       string
		}{
			{"duplicate plaintext", wrap, `{"plaintext":"` + p1 + `","plaintext":"` + p2 + `"}`, 400, "BAD_BODY_ERR", `duplicate member "plaintext"`},
			{"duplicate aad", wrap, `{"plaintext":"` + p1 + `","aad":["a"],"aad":["b"]}`, 400, "BAD_BODY_ERR", `duplicate member "aad"`},
			{"duplicate in another case", wrap, `{"plaintext":"` + p1 + `","PlainText":"` + p2 + `"}`, 400, "BAD_BODY_ERR", `duplicate member "PlainText"`},
			{"duplicate with escapes", wrap, `{"plaintext":"` + p1 + `","pl\u0061intext":"` + p2 + `"}`, 400, "BAD_BODY_ERR", `duplicate member "plaintext"`},
			{"duplicate nested", keys, `{"resources":[{"name":"a","name":"b"}]}`, 400, "BAD_BODY_ERR", `duplicate member "name" in resources[0]`},
			{"duplicate top level of create", keys, `{"resources":[{"name":"a"}],"resources":[{"name":"b"}]}`, 400, "BAD_BODY_ERR", `duplicate member "resources"`},
			{"duplicate ciphertext", keys + "/" + k.ID + "/actions/unwrap", `{"ciphertext":"AAAA","ciphertext":"BBBB"}`, 400, "BAD_BODY_ERR", `duplicate member "ciphertext"`},
			{"null in aad", wrap, `{"plaintext":"` + p1 + `","aad":["a",null]}`, 400, "INVALID_FIELD_ERR", `aad[1] is null`},
			{"null only in aad", wrap, `{"aad":[null]}`, 400, "INVALID_FIELD_ERR", `aad[0] is null`},
			{"number in aad", wrap, `{"aad":[1]}`, 400, "BAD_BODY_ERR", `aad`},
			{"same name in different objects", keys, `{"metadata":{"collectionTotal":1},"resources":[{"name":"ok","description":"metadata"}]}`, 201, "", ""},
			{"aad null as a whole", wrap, `{"plaintext":"` + p1 + `","aad":null}`, 200, "", ""},
			{"empty aad", wrap, `{"plaintext":"` + p1 + `","aad":[]}`, 200, "", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp := e.do(t, http.MethodPost, tc.url, tc.body, nil)
				raw, _ := io.ReadAll(resp.Body)
				require.Equal(t, tc.status, resp.StatusCode, "%s", raw)
				if tc.code == "" {
					return
				}
				var env ErrorBody
				require.NoError(t, json.Unmarshal(raw, &env), "%s", raw)
				require.Len(t, env.Resources, 1)
				require.NotEmpty(t, env.Resources[0].Reasons)
				assert.Equal(t, tc.code, env.Resources[0].Reasons[0].Code)
				assert.Contains(t, env.Resources[0].Reasons[0].Message, tc.msg)
			})
		}
	})
}

// TestAuthorizationScheme: the auth scheme is case-insensitive (RFC 7235 section 2.1), so
// "bearer", "BEARER" and "Bearer" all work; other schemes and a missing token do not.
func TestAuthorizationScheme(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name, auth string
			status     int
		}{
			{"canonical", "Bearer " + staticToken, http.StatusOK},
			{"lower case", "bearer " + staticToken, http.StatusOK},
			{"upper case", "BEARER " + staticToken, http.StatusOK},
			{"mixed case", "bEaReR " + staticToken, http.StatusOK},
			{"several spaces", "Bearer   " + staticToken, http.StatusOK},
			{"tab", "bearer\t" + staticToken, http.StatusOK},
			{"wrong token", "bearer wrong", http.StatusUnauthorized},
			{"no separator", "bearer" + staticToken, http.StatusBadRequest},
			{"no token", "bearer", http.StatusBadRequest},
			{"blank token", "BEARER   ", http.StatusBadRequest},
			{"other scheme", "Basic " + staticToken, http.StatusBadRequest},
			{"prefix of bearer", "Bear " + staticToken, http.StatusBadRequest},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys", "", http.Header{"Authorization": {tc.auth}})
				assert.Equal(t, tc.status, resp.StatusCode)
			})
		}
	})
}

// FuzzCheckMembers: the duplicate-member check never panics, and what it accepts as one JSON
// value has no object with two members that encoding/json would put in the same field.
func FuzzCheckMembers(f *testing.F) {
	for _, s := range []string{
		`{"plaintext":"AA==","aad":["a","b"]}`, `{"a":1,"A":2}`, `{"a":{"a":{"a":[{"a":1},{"a":2}]}}}`,
		`[{"x":1,"x":2}]`, `{"\u212a":1,"k":2}`, `{"a":[1,{"b":null}],"b":"}"}`, `{`, `[]`, `"s"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		err := checkMembers(raw)
		if err != nil || !json.Valid(raw) {
			return
		}
		var walk func(v any)
		walk = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				seen := map[string]string{}
				for k, e := range x {
					if prev, dup := seen[foldName(k)]; dup {
						t.Fatalf("accepted members %q and %q in %s", prev, k, raw)
					}
					seen[foldName(k)] = k
					walk(e)
				}
			case []any:
				for _, e := range x {
					walk(e)
				}
			}
		}
		var v any
		if json.Unmarshal(raw, &v) == nil {
			walk(v)
		}
	})
}

// TestTokenEndpointTellsRefusalFromFailure: an unknown API key is refused (400 BXNIM0415E);
// a failure of the server itself (its API key table unreadable) is a 500, which a client
// tries again, never a refusal of the key. It breaks the state directory's tenants.json, so
// it runs on that store only; TestDatabaseOutage is its counterpart on PostgreSQL.
func TestTokenEndpointTellsRefusalFromFailure(t *testing.T) {
	dir := t.TempDir()
	tenants, err := OpenTenants(dir, crk.Options{MasterKey: bytes.Repeat([]byte{3}, 32)})
	require.NoError(t, err)
	defer tenants.Close()
	inst, _ := tenants.Default()
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	srv := httptest.NewServer(NewServer(tenants))
	defer srv.Close()
	exchange := func(key string) (int, string) {
		resp, err := http.PostForm(srv.URL+"/identity/token", url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {key}})
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, _ := exchange(apiKey)
	require.Equal(t, http.StatusOK, status)
	status, body := exchange("nope")
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Contains(t, body, "BXNIM0415E")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "tenants.json"), []byte("{"), 0o600))
	status, body = exchange(apiKey)
	assert.Equal(t, http.StatusInternalServerError, status, body)
	assert.NotContains(t, body, "BXNIM0415E")
}
