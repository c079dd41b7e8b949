package kms_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// errFixture is one crk service seen in-process (Local) and over HTTP (Remote through the
// real kpapi server), with a middleware that records the last error response, counts API
// calls and can answer a request for the key "inject" with a given error through
// kpapi.WriteError, the path the server writes every error with.
type errFixture struct {
	ctx    context.Context
	dir    string
	clock  *crk.ManualClock
	svc    *crk.Service
	local  *kms.Local
	remote *kms.Remote
	// remoteURL, instance and apiKey configure more Remote clients.
	remoteURL, instance, apiKey string
	tenants                     *kpapi.Tenants

	mu      sync.Mutex
	inject  error
	calls   int
	status  int
	body    []byte
	respond func(w http.ResponseWriter) bool // answers instead of the server when it returns true
}

func newErrFixture(t *testing.T) *errFixture { return newErrFixtureOn(t, serverStores[0]) }

// newErrFixtureOn is newErrFixture with the server on a store of kind st.
func newErrFixtureOn(t *testing.T, st serverStore) *errFixture {
	t.Helper()
	f := &errFixture{ctx: context.Background(), dir: t.TempDir(),
		clock: crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))}
	tenants, inst, svc := st.open(t, f.dir, crk.Options{Clock: f.clock, MasterKey: bytes.Repeat([]byte{4}, 32), ImportTokenKey: fixtureTokenKey})
	f.svc, f.local = svc, kms.NewLocal(svc)
	api := kpapi.NewServer(tenants)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/api/") {
			api.ServeHTTP(w, r)
			return
		}
		f.mu.Lock()
		f.calls++
		inject, respond := f.inject, f.respond
		f.mu.Unlock()
		rec := &recorder{ResponseWriter: w}
		switch {
		case respond != nil && respond(w):
			return
		case inject != nil && strings.HasPrefix(r.URL.Path, "/api/v2/keys/inject/"):
			kpapi.WriteError(rec, inject)
		default:
			api.ServeHTTP(rec, r)
		}
		if rec.status >= 400 {
			f.mu.Lock()
			f.status, f.body = rec.status, rec.body.Bytes()
			f.mu.Unlock()
		}
	}))
	t.Cleanup(srv.Close)
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	f.remoteURL, f.instance, f.apiKey, f.tenants = srv.URL, inst, apiKey, tenants
	f.remote, err = kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
	require.NoError(t, err)
	return f
}

// reset forgets the last error response and the call count.
func (f *errFixture) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls, f.status, f.body = 0, 0, nil
}

// wire returns the last error response's status and first reason.
func (f *errFixture) wire(t *testing.T) (int, kpapi.ErrorReason, int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var env kpapi.ErrorBody
	require.NoError(t, json.Unmarshal(f.body, &env), "%s", f.body)
	require.Len(t, env.Resources, 1)
	require.NotEmpty(t, env.Resources[0].Reasons)
	return f.status, env.Resources[0].Reasons[0], f.calls
}

type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(s int) { r.status = s; r.ResponseWriter.WriteHeader(s) }

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

func (f *errFixture) root(t *testing.T, name string) *crk.Key {
	t.Helper()
	k, err := f.svc.CreateRootKey(f.ctx, name)
	require.NoError(t, err)
	return k
}

func (f *errFixture) imported(t *testing.T) *crk.Key {
	t.Helper()
	k, err := f.svc.ImportRootKey(f.ctx, "imported", material())
	require.NoError(t, err)
	return k
}

// wrap wraps a secret on both sides and returns each side's ciphertext (binary on both).
func (f *errFixture) wrap(t *testing.T, keyID string) map[volume.KeyService][]byte {
	t.Helper()
	out := map[volume.KeyService][]byte{}
	for _, ks := range []volume.KeyService{f.local, f.remote} {
		w, err := ks.Wrap(f.ctx, keyID, bytes.Repeat([]byte{1}, 32), []string{"vol"})
		require.NoError(t, err)
		out[ks] = w.Ciphertext
	}
	return out
}

// material returns 256 bits of non-trivial key material.
func material() []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i*i + 7*i + 3)
	}
	return b
}

const crn = "crn:v1:local:public:is:local:a/crkvol::volume:v1"

// fixtureTokenKey is the fixtures' crk.Options.ImportTokenKey: the RSA-4096 key of crk's test
// fixture crk/testdata/import-token-a.pem (made once with openssl; it protects nothing), read
// when a token is created. Generating such a key costs seconds of CPU.
func fixtureTokenKey() (*rsa.PrivateKey, error) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "crk", "testdata", "import-token-a.pem"))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("import-token-a.pem holds no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("import-token-a.pem holds a %T, not an RSA key", k)
	}
	return priv, nil
}

// sealThroughToken creates an import token on f's service, retrieves it and returns root key
// material sealed through it as a client seals it: the material encrypted with the token's
// public key (RSA-OAEP, SHA-256) and nonce encrypted with AES-GCM under the material. The
// caller's alter changes the sealed nonce or IV before it is returned.
func (f *errFixture) sealThroughToken(t *testing.T, alter func(em *crk.EncryptedMaterial, nonce []byte)) *crk.EncryptedMaterial {
	t.Helper()
	_, err := f.svc.CreateImportToken(f.ctx, crk.ImportTokenOptions{})
	require.NoError(t, err)
	tok, err := f.svc.GetImportToken(f.ctx)
	require.NoError(t, err)
	block, _ := pem.Decode(tok.PublicKey)
	require.NotNil(t, block)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	m := material()
	payload, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), m, nil)
	require.NoError(t, err)
	em := &crk.EncryptedMaterial{Payload: payload, Algorithm: crk.AlgorithmRSAOAEPSHA256, IV: bytes.Repeat([]byte{9}, crk.ImportTokenNonceSize)}
	nonce := bytes.Clone(tok.Nonce)
	alter(em, nonce)
	block2, err := aes.NewCipher(m)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block2)
	require.NoError(t, err)
	em.EncryptedNonce = gcm.Seal(nil, bytes.Repeat([]byte{9}, crk.ImportTokenNonceSize), nonce, nil)
	return em
}

// TestErrorTableBothSides makes every sentinel of crk's error table happen and checks that
// the in-process key service (Local) and the remote one (Remote over the kpapi server)
// return the same sentinel, that both mark refusals (and only refusals) with
// volume.ErrKeyRefused, that the wire carries the table's status, reason code and id, and
// that the remote client sent the request once: a refusal is never retried.
//
// A row with a volume.KeyService trigger runs it on both sides. The others are refusals of
// calls a volume never makes (rotate, delete, policies); their trigger runs on the in-process
// service, and the remote side gets that very error written by kpapi.WriteError.
func TestErrorTableBothSides(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		pt := bytes.Repeat([]byte{7}, 32)
		type trigger struct {
			// ks runs a KeyService call on either side, after setup on f.
			ks func(t *testing.T, f *errFixture) func(volume.KeyService) error
			// svc produces the error on the in-process service.
			svc func(t *testing.T, f *errFixture) error
		}
		triggers := map[error]trigger{
			crk.ErrKeyNotFound: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				return func(ks volume.KeyService) error {
					_, err := ks.Wrap(f.ctx, "00000000-0000-4000-8000-000000000000", pt, nil)
					return err
				}
			}},
			crk.ErrNotRootKey: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "standard", Type: crk.StandardKey})
				require.NoError(t, err)
				return func(ks volume.KeyService) error { _, err := ks.Wrap(f.ctx, k.ID, pt, nil); return err }
			}},
			crk.ErrInvalidMaterial: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.ImportRootKey(f.ctx, "short", []byte{1, 2, 3})
				return err
			}},
			crk.ErrMaterialRequired: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.RotateKey(f.ctx, f.imported(t).ID, nil)
				return err
			}},
			crk.ErrMaterialNotAllowed: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.RotateKey(f.ctx, f.root(t, "gen").ID, material())
				return err
			}},
			crk.ErrRotationTooSoon: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "twice")
				_, err := f.svc.RotateKey(f.ctx, k.ID, nil)
				require.NoError(t, err)
				_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
				return err
			}},
			crk.ErrInvalidPolicy: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.SetRotationPolicy(f.ctx, f.root(t, "policy").ID, 13, true)
				return err
			}},
			crk.ErrPolicyNotAllowed: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.SetRotationPolicy(f.ctx, f.imported(t).ID, 3, true)
				return err
			}},
			crk.ErrKeySuspended: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "suspended")
				_, err := f.svc.DisableKey(f.ctx, k.ID)
				require.NoError(t, err)
				return func(ks volume.KeyService) error { _, err := ks.Wrap(f.ctx, k.ID, pt, nil); return err }
			}},
			crk.ErrKeyDeactivated: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "expiring", ExpirationDate: f.clock.Now().Add(time.Hour)})
				require.NoError(t, err)
				f.clock.Advance(2 * time.Hour)
				return func(ks volume.KeyService) error { _, err := ks.Wrap(f.ctx, k.ID, pt, nil); return err }
			}},
			crk.ErrKeyDestroyed: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "deleted")
				ct := f.wrap(t, k.ID)
				_, err := f.svc.DeleteKey(f.ctx, k.ID, crk.DeleteOptions{})
				require.NoError(t, err)
				return func(ks volume.KeyService) error {
					_, err := ks.Unwrap(f.ctx, k.ID, ct[ks], []string{"vol"})
					return err
				}
			}},
			// Over the Key Protect API a purged key is not found (404, as Key Protect): the
			// in-process service's refusal, and crkvol's acknowledgement routes, carry it.
			crk.ErrKeyPurged: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "purged")
				ct := f.wrap(t, k.ID)
				_, err := f.svc.DeleteKey(f.ctx, k.ID, crk.DeleteOptions{})
				require.NoError(t, err)
				f.clock.Advance(crk.RestoreWindow + time.Hour)
				_, err = f.svc.PurgeKey(f.ctx, k.ID)
				require.NoError(t, err)
				_, err = f.svc.Rewrap(f.ctx, k.ID, ct[f.local], []string{"vol"})
				return err
			}},
			crk.ErrInvalidState: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.PurgeKey(f.ctx, f.root(t, "active").ID)
				return err
			}},
			crk.ErrTooEarly: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "flapping")
				_, err := f.svc.DisableKey(f.ctx, k.ID)
				require.NoError(t, err)
				_, err = f.svc.EnableKey(f.ctx, k.ID)
				return err
			}},
			crk.ErrRestoreExpired: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "late")
				_, err := f.svc.DeleteKey(f.ctx, k.ID, crk.DeleteOptions{})
				require.NoError(t, err)
				f.clock.Advance(crk.RestoreWindow + time.Hour)
				_, err = f.svc.RestoreKey(f.ctx, k.ID)
				return err
			}},
			crk.ErrProtectedResource: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "protected")
				_, err := f.svc.Register(f.ctx, k.ID, crn, crk.RegisterOptions{})
				require.NoError(t, err)
				_, err = f.svc.DeleteKey(f.ctx, k.ID, crk.DeleteOptions{})
				return err
			}},
			crk.ErrPreventKeyDeletion: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "retained")
				_, err := f.svc.Register(f.ctx, k.ID, crn, crk.RegisterOptions{PreventKeyDeletion: true})
				require.NoError(t, err)
				_, err = f.svc.DeleteKey(f.ctx, k.ID, crk.DeleteOptions{Force: true})
				return err
			}},
			crk.ErrAuth: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "aad")
				ct := f.wrap(t, k.ID)
				return func(ks volume.KeyService) error {
					_, err := ks.Unwrap(f.ctx, k.ID, ct[ks], []string{"other volume"})
					return err
				}
			}},
			crk.ErrVersionNotFound: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "versions")
				return func(ks volume.KeyService) error {
					return ks.Register(f.ctx, k.ID, crn, "00000000-0000-4000-8000-00000000000f", false)
				}
			}},
			crk.ErrVersionDestroyed: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "pruned")
				ct := f.wrap(t, k.ID)
				_, err := f.svc.RotateKey(f.ctx, k.ID, nil)
				require.NoError(t, err)
				res, err := f.svc.Prune(f.ctx, k.ID)
				require.NoError(t, err)
				require.Len(t, res.Destroyed, 1)
				return func(ks volume.KeyService) error {
					_, err := ks.Unwrap(f.ctx, k.ID, ct[ks], []string{"vol"})
					return err
				}
			}},
			crk.ErrVersionInUse: {svc: func(t *testing.T, f *errFixture) error {
				k := f.root(t, "in use")
				_, err := f.svc.Register(f.ctx, k.ID, crn, crk.RegisterOptions{})
				require.NoError(t, err)
				_, err = f.svc.RotateKey(f.ctx, k.ID, nil)
				require.NoError(t, err)
				return f.svc.PruneVersion(f.ctx, k.ID, k.KeyVersion.ID)
			}},
			crk.ErrRegistrationNotFound: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "unregistered")
				return func(ks volume.KeyService) error { return ks.DeleteRegistration(f.ctx, k.ID, crn) }
			}},
			crk.ErrRegistrationExists: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "registered")
				_, err := f.svc.Register(f.ctx, k.ID, crn, crk.RegisterOptions{})
				require.NoError(t, err)
				return func(ks volume.KeyService) error { return ks.Register(f.ctx, k.ID, crn, k.KeyVersion.ID, false) }
			}},
			crk.ErrInvalidArgument: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				k := f.root(t, "bad crn")
				return func(ks volume.KeyService) error { return ks.Register(f.ctx, k.ID, "not-a-crn", k.KeyVersion.ID, false) }
			}},
			crk.ErrResyncNeeded: {ks: func(t *testing.T, f *errFixture) func(volume.KeyService) error {
				return func(ks volume.KeyService) error {
					feed, ok := ks.(volume.KeyFeed)
					if !ok {
						return fmt.Errorf("%T is not a volume.KeyFeed", ks)
					}
					// A cursor ahead of the feed's head (the feed is empty): another store's.
					_, err := feed.KeyEvents(f.ctx, "42", 0)
					if err != nil && !errors.Is(err, volume.ErrResyncNeeded) {
						return fmt.Errorf("%w (does not match volume.ErrResyncNeeded)", err)
					}
					return err
				}
			}},
			crk.ErrInvalidQuery: {svc: func(t *testing.T, f *errFixture) error {
				_, err := crk.ParseKeyFilter("name=web")
				return err
			}},
			crk.ErrCreateImportAccess: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.SetInstancePolicies(f.ctx, crk.InstancePolicyUpdate{KeyCreateImportAccess: &crk.KeyCreateImportAccessSettings{Enabled: true}})
				require.NoError(t, err)
				_, err = f.svc.CreateRootKey(f.ctx, "not allowed")
				return err
			}},
			crk.ErrNetworkNotAllowed: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.SetInstancePolicies(f.ctx, crk.InstancePolicyUpdate{AllowedNetwork: &crk.AllowedNetworkSettings{Enabled: true, Network: crk.NetworkPrivateOnly}})
				require.NoError(t, err)
				err = f.svc.CheckNetwork(f.ctx, false)
				_, uerr := f.svc.SetInstancePolicies(f.ctx, crk.InstancePolicyUpdate{AllowedNetwork: &crk.AllowedNetworkSettings{}})
				require.NoError(t, uerr, "the fixture's own remote requests come from loopback, but leave nothing behind")
				return err
			}},
			crk.ErrDualAuthNotMet: {svc: func(t *testing.T, f *errFixture) error {
				k, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "two users", Policies: &crk.CreatePolicies{DualAuthDelete: &crk.DualAuthSettings{Enabled: true}}})
				require.NoError(t, err)
				_, err = f.svc.DeleteKey(f.ctx, k.ID, crk.DeleteOptions{})
				return err
			}},
			crk.ErrNotDualAuth: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.SetKeyForDeletion(f.ctx, f.root(t, "one user").ID)
				return err
			}},
			crk.ErrMasterKey: {svc: func(t *testing.T, f *errFixture) error {
				_, err := crk.Open(filepath.Join(f.dir, "other.db"), crk.Options{Clock: f.clock, MasterKey: []byte("short")})
				return err
			}},
			// crk's own tests make a real audit write fail (TestAuditFailureFailsOperation);
			// the fault is not reachable from here, so the error is built as crk builds it.
			crk.ErrAudit: {svc: func(t *testing.T, f *errFixture) error {
				return fmt.Errorf("crk: %w: wrap: %w", crk.ErrAudit, errors.New("bbolt: disk full"))
			}},
			// A real outage is TestRemoteDatabaseOutage's; here the error is built as crk's
			// PostgreSQL store builds it.
			crk.ErrUnavailable: {svc: func(t *testing.T, f *errFixture) error {
				return fmt.Errorf("crk: %w: %w", crk.ErrUnavailable, errors.New("database unavailable after 3 attempts"))
			}},
			// Aliases and key rings (crk's aliases.go and keyrings.go).
			crk.ErrInvalidAlias: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateAlias(f.ctx, f.root(t, "alias syntax").ID, "no way")
				return err
			}},
			crk.ErrAliasNotUnique: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateAlias(f.ctx, f.root(t, "first owner").ID, "taken")
				require.NoError(t, err)
				_, err = f.svc.CreateAlias(f.ctx, f.root(t, "second owner").ID, "taken")
				return err
			}},
			crk.ErrAliasQuota: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "six", Aliases: []string{"a1", "a2", "a3", "a4", "a5", "a6"}})
				return err
			}},
			crk.ErrAliasNotFound: {svc: func(t *testing.T, f *errFixture) error {
				return f.svc.DeleteAlias(f.ctx, f.root(t, "no alias").ID, "absent")
			}},
			crk.ErrInvalidKeyRing: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateKeyRing(f.ctx, "bad_ring")
				return err
			}},
			crk.ErrKeyRingNotFound: {svc: func(t *testing.T, f *errFixture) error {
				return f.svc.DeleteKeyRing(f.ctx, "nowhere", false)
			}},
			crk.ErrKeyRingExists: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateKeyRing(f.ctx, crk.DefaultKeyRing)
				return err
			}},
			crk.ErrKeyRingNotEmpty: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateKeyRing(f.ctx, "full")
				require.NoError(t, err)
				_, err = f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "member", KeyRingID: "full"})
				require.NoError(t, err)
				return f.svc.DeleteKeyRing(f.ctx, "full", true)
			}},
			// Import tokens (crk's importtoken.go), with the fixture's RSA key.
			crk.ErrImportTokenNotFound: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.GetImportToken(f.ctx)
				return err
			}},
			crk.ErrImportTokenExpired: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateImportToken(f.ctx, crk.ImportTokenOptions{Expiration: crk.MinImportTokenExpiration})
				require.NoError(t, err)
				f.clock.Advance(crk.MinImportTokenExpiration)
				_, err = f.svc.GetImportToken(f.ctx)
				return err
			}},
			crk.ErrImportTokenUsedUp: {svc: func(t *testing.T, f *errFixture) error {
				_, err := f.svc.CreateImportToken(f.ctx, crk.ImportTokenOptions{MaxRetrievals: 1})
				require.NoError(t, err)
				_, err = f.svc.GetImportToken(f.ctx)
				require.NoError(t, err)
				_, err = f.svc.GetImportToken(f.ctx)
				return err
			}},
			crk.ErrIncorrectNonce: {svc: func(t *testing.T, f *errFixture) error {
				em := f.sealThroughToken(t, func(_ *crk.EncryptedMaterial, nonce []byte) { nonce[0] ^= 1 })
				_, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "other nonce", Type: crk.RootKey, Encrypted: em})
				return err
			}},
			crk.ErrNonceIV: {svc: func(t *testing.T, f *errFixture) error {
				em := f.sealThroughToken(t, func(em *crk.EncryptedMaterial, _ []byte) { em.IV = bytes.Repeat([]byte{8}, crk.ImportTokenNonceSize) })
				_, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "other iv", Type: crk.RootKey, Encrypted: em})
				return err
			}},
			crk.ErrEncryptionAlgorithm: {svc: func(t *testing.T, f *errFixture) error {
				em := &crk.EncryptedMaterial{Payload: []byte{1}, Algorithm: "RSAES_PKCS1_V1_5", EncryptedNonce: []byte{1}, IV: make([]byte, crk.ImportTokenNonceSize)}
				_, err := f.svc.CreateKey(f.ctx, crk.CreateOptions{Name: "pkcs1", Type: crk.RootKey, Encrypted: em})
				return err
			}},
			crk.ErrKeyRingQuota: {svc: func(t *testing.T, f *errFixture) error {
				for i := range crk.MaxKeyRings {
					_, err := f.svc.CreateKeyRing(f.ctx, fmt.Sprintf("ring-%d", i))
					require.NoError(t, err)
				}
				_, err := f.svc.CreateKeyRing(f.ctx, "one-more")
				return err
			}},
		}

		for _, info := range crk.Errors() {
			t.Run(info.ID, func(t *testing.T) {
				tr, ok := triggers[info.Err]
				require.True(t, ok, "no trigger for %v: add one", info.Err)
				refusal := info.Class == crk.Refusal
				f := newErrFixtureOn(t, st)

				var localErr, remoteErr error
				if tr.ks != nil {
					call := tr.ks(t, f)
					localErr = call(f.local)
					f.reset()
					remoteErr = call(f.remote)
				} else {
					svcErr := tr.svc(t, f)
					require.ErrorIs(t, svcErr, info.Err, "the in-process service")
					localErr = kms.LocalError(svcErr)
					f.mu.Lock()
					f.inject = svcErr
					f.mu.Unlock()
					f.reset()
					_, remoteErr = f.remote.Unwrap(f.ctx, "inject", []byte("ct"), nil)
				}

				for side, err := range map[string]error{"local": localErr, "remote": remoteErr} {
					require.Error(t, err, side)
					assert.ErrorIs(t, err, info.Err, side)
					assert.Equal(t, refusal, errors.Is(err, volume.ErrKeyRefused), "%s: refused mark on %v", side, err)
					for _, other := range crk.Errors() {
						if other.Err != info.Err && !errors.Is(info.Err, other.Err) && !(info.Err == crk.ErrAuth && other.Err == crk.ErrVersionNotFound) {
							assert.NotErrorIs(t, err, other.Err, "%s: %s", side, other.ID)
						}
					}
				}
				status, reason, calls := f.wire(t)
				assert.Equal(t, info.Status, status)
				assert.Equal(t, info.Status, reason.Status)
				assert.Equal(t, info.Code, reason.Code)
				assert.Equal(t, info.ID, reason.CrkvolError)
				assert.Equal(t, 1, calls, "one request: the remote client does not retry")
			})
		}
		assert.Len(t, triggers, len(crk.Errors()), "a trigger for a sentinel the table does not have")
	})
}

// TestRemoteRetriesOnlyTransient: the remote client's calls through the official client
// retry 429, 503, 408 and 425 (honouring Retry-After) and succeed; a refusal is sent once; a
// transient status on a call of its own is an error without the refused mark, sent once. A
// 401 is sent once with a fixed token, and once more with a fresh token when the client
// exchanges an API key, on both paths; a second 401 is the refusal.
func TestRemoteRetriesOnlyTransient(t *testing.T) {
	for _, tc := range []struct {
		name       string
		status     int
		failures   int // responses with status before the server answers normally
		call       string
		wantErr    bool
		refused    bool
		wantCalls  int
		fixedToken bool // a Remote configured with a Token instead of the API key
	}{
		{"429 retried", http.StatusTooManyRequests, 2, "wrap", false, false, 3, false},
		{"503 retried", http.StatusServiceUnavailable, 1, "wrap", false, false, 2, false},
		{"408 retried", http.StatusRequestTimeout, 2, "wrap", false, false, 3, false},
		{"425 retried", http.StatusTooEarly, 1, "wrap", false, false, 2, false},
		{"409 not retried", http.StatusConflict, 1, "wrap", true, true, 1, false},
		{"401 not retried", http.StatusUnauthorized, 1, "wrap", true, true, 1, true},
		{"401 on rewrap, fixed token", http.StatusUnauthorized, 1, "rewrap", true, true, 1, true},
		{"401 once more with a fresh token", http.StatusUnauthorized, 1, "wrap", false, false, 2, false},
		{"401 on rewrap, once more with a fresh token", http.StatusUnauthorized, 1, "rewrap", false, false, 2, false},
		{"401 twice", http.StatusUnauthorized, 2, "wrap", true, true, 2, false},
		{"401 twice on rewrap", http.StatusUnauthorized, 2, "rewrap", true, true, 2, false},
		{"503 on rewrap", http.StatusServiceUnavailable, 1, "rewrap", true, false, 1, false},
		{"429 on rewrap", http.StatusTooManyRequests, 1, "rewrap", true, false, 1, false},
		{"408 on rewrap", http.StatusRequestTimeout, 1, "rewrap", true, false, 1, false},
		{"425 on rewrap", http.StatusTooEarly, 1, "rewrap", true, false, 1, false},
		{"400 on rewrap", http.StatusBadRequest, 1, "rewrap", true, true, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newErrFixture(t)
			k := f.root(t, "retry")
			ct := f.wrap(t, k.ID)
			remote := f.remote
			if tc.fixedToken {
				tok, _, err := f.tenants.Exchange(f.apiKey)
				require.NoError(t, err)
				remote, err = kms.NewRemote(kms.RemoteConfig{URL: f.remoteURL, Instance: f.instance, Token: tok})
				require.NoError(t, err)
			}
			left := tc.failures
			f.mu.Lock()
			f.respond = func(w http.ResponseWriter) bool {
				if left == 0 {
					return false
				}
				left--
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(tc.status)
				return true
			}
			f.mu.Unlock()
			f.reset()
			var err error
			if tc.call == "wrap" {
				_, err = remote.Wrap(f.ctx, k.ID, []byte("0123456789abcdef"), nil)
			} else {
				_, err = remote.Rewrap(f.ctx, k.ID, ct[f.remote], []string{"vol"})
			}
			if tc.wantErr {
				require.Error(t, err)
				assert.Equal(t, tc.refused, errors.Is(err, volume.ErrKeyRefused), "%v", err)
				assert.Contains(t, err.Error(), http.StatusText(tc.status))
			} else {
				require.NoError(t, err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			assert.Equal(t, tc.wantCalls, f.calls)
		})
	}
}

// TestRemoteBadAPIKeyIsRefused: the token endpoint refusing the API key is a refusal on
// both of Remote's paths, the official client's (Wrap) and its own (Rewrap).
func TestRemoteBadAPIKeyIsRefused(t *testing.T) {
	forEachStore(t, func(t *testing.T, st serverStore) {
		f := newErrFixtureOn(t, st)
		k := f.root(t, "locked out")
		ct := f.wrap(t, k.ID)
		bad, err := kms.NewRemote(kms.RemoteConfig{URL: f.remoteURL, Instance: f.instance, APIKey: "crkvol-not-a-key"})
		require.NoError(t, err)
		_, err = bad.Wrap(f.ctx, k.ID, []byte("0123456789abcdef"), nil)
		require.Error(t, err)
		assert.ErrorIs(t, err, volume.ErrKeyRefused, "wrap: %v", err)
		_, err = bad.Rewrap(f.ctx, k.ID, ct[f.remote], []string{"vol"})
		require.Error(t, err)
		assert.ErrorIs(t, err, volume.ErrKeyRefused, "rewrap: %v", err)
		assert.NotContains(t, err.Error(), "crkvol-not-a-key", "the API key stays out of errors")
	})
}
