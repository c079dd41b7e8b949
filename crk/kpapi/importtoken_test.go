package kpapi

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// The import token tests take their RSA-4096 keys from crk's test fixtures
// (crk/testdata/import-token-*.pem) through crk.Options.ImportTokenKey: generating one costs
// seconds of CPU. crk's TestImportTokenGeneratesItsKey covers generation, in the long run.

// fixtureKey reads the fixture key name ("a" or "b").
func fixtureKey(t testing.TB, name string) *rsa.PrivateKey {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "testdata", "import-token-"+name+".pem"))
	require.NoError(t, err)
	block, _ := pem.Decode(raw)
	require.NotNil(t, block)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	return k.(*rsa.PrivateKey)
}

// tokenKeySource hands out the key a test chooses for the next import token.
type tokenKeySource struct {
	mu   sync.Mutex
	next *rsa.PrivateKey
}

func (s *tokenKeySource) use(k *rsa.PrivateKey) { s.mu.Lock(); s.next = k; s.mu.Unlock() }

func (s *tokenKeySource) get() (*rsa.PrivateKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == nil {
		return nil, errors.New("no fixture key chosen")
	}
	return s.next, nil
}

// newTokenEnv is newEnvOn with import token keys from keys.
func newTokenEnv(t testing.TB, st serverStore, keys *tokenKeySource) *env {
	t.Helper()
	return newEnvWith(t, st, func(o *crk.Options) { o.ImportTokenKey = keys.get })
}

// crkvolReason returns the crkvolError id of a client error's first reason.
func crkvolReason(t testing.TB, err error) string {
	t.Helper()
	var kerr *kp.Error
	require.True(t, errors.As(err, &kerr), "%T: %v", err, err)
	var env ErrorBody
	require.NoError(t, json.Unmarshal(kerr.BodyContent, &env))
	require.NotEmpty(t, env.Resources)
	require.NotEmpty(t, env.Resources[0].Reasons)
	return env.Resources[0].Reasons[0].CrkvolError
}

// openedWith opens a wrap ciphertext (as the client returns it: base64) of key keyID, made
// with no AAD, under material, as crk's documented ciphertext format says; it fails the test
// if the ciphertext is not sealed under that material.
func openedWith(t testing.TB, keyID string, ct []byte, material []byte) []byte {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(string(ct))
	require.NoError(t, err)
	vid, err := crk.CiphertextVersion(raw)
	require.NoError(t, err)
	block, err := aes.NewCipher(material)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	const header = 4 + 16 + 12 // "CRK1", version id, GCM nonce
	pt, err := gcm.Open(nil, raw[20:header], raw[header:], []byte("crkvol wrap v1\x00"+keyID+"\x00"+vid))
	require.NoError(t, err, "the ciphertext is not sealed under the imported material")
	return pt
}

// sealed is one key material sent through a token as the official client prepares it.
type sealed struct{ payload, nonce, iv string }

// TestImportTokensOfficialClient runs Key Protect's secure import with keyprotect-go-client:
// create and retrieve a token, encrypt material and nonce with the client's helpers, create
// and rotate imported root keys with them, and every refusal with its status, reason code and
// no change.
func TestImportTokensOfficialClient(t *testing.T) {
	forEachServerStore(t, func(t *testing.T, st serverStore) {
		keys := &tokenKeySource{next: fixtureKey(t, "a")}
		e := newTokenEnv(t, st, keys)
		c, ctx := e.client, e.ctx
		svc := e.svc(t)
		m1, m2, m3 := mat(32, 1), mat(16, 2), mat(24, 3)
		b64 := base64.StdEncoding.EncodeToString

		keyCount := func() int {
			ks, err := c.GetKeys(ctx, 0, 0)
			require.NoError(t, err)
			return len(ks.Keys)
		}
		refused := func(err error, status int, code, id string) {
			t.Helper()
			gotCode, gotStatus := reason(t, err)
			assert.Equal(t, status, gotStatus, "%v", err)
			assert.Equal(t, code, gotCode, "%v", err)
			assert.Equal(t, id, crkvolReason(t, err))
		}

		// No token: retrieval and secure import refused.
		_, err := c.GetImportTokenTransportKey(ctx)
		refused(err, http.StatusNotFound, "NOT_FOUND_ERR", "import_token_not_found")
		_, err = c.CreateImportedRootKey(ctx, "early", nil, b64([]byte("x")), b64([]byte("y")), b64(make([]byte, 12)))
		refused(err, http.StatusNotFound, "NOT_FOUND_ERR", "import_token_not_found")

		// Bounds of the token's policy; each refusal creates nothing.
		for _, bad := range [][2]int{{299, 1}, {86401, 1}, {600, 501}, {600, -1}, {-5, 1}} {
			_, err := c.CreateImportToken(ctx, bad[0], bad[1])
			refused(err, http.StatusBadRequest, "INVALID_FIELD_ERR", "invalid_argument")
		}
		_, err = svc.ImportTokenStatus(ctx)
		require.ErrorIs(t, err, crk.ErrImportTokenNotFound)

		created, err := c.CreateImportToken(ctx, 300, 3)
		require.NoError(t, err)
		assert.Equal(t, e.clock.Now(), *created.CreationDate)
		assert.Equal(t, e.clock.Now().Add(300*time.Second), *created.ExpirationDate)
		assert.Equal(t, 3, created.MaxAllowedRetrievals)
		assert.Equal(t, 3, created.RemainingRetrievals)

		tok, err := c.GetImportTokenTransportKey(ctx)
		require.NoError(t, err)
		require.NotEmpty(t, tok.Payload)
		nonce, err := base64.StdEncoding.DecodeString(tok.Nonce)
		require.NoError(t, err)
		assert.Len(t, nonce, 12)
		pemKey, err := base64.StdEncoding.DecodeString(tok.Payload)
		require.NoError(t, err)
		block, _ := pem.Decode(pemKey)
		require.NotNil(t, block)
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		require.NoError(t, err)
		assert.Equal(t, 4096, pub.(*rsa.PublicKey).N.BitLen())

		// seal prepares material as the client's helpers do: EncryptKey (or EncryptKeyWithSHA1)
		// with the token's public key, EncryptNonce with the material (a random IV when iv is
		// "", else iv's own bytes).
		seal := func(m []byte, pubKey, nonce64, iv string, sha1 bool) sealed {
			t.Helper()
			encrypt := kp.EncryptKey
			if sha1 {
				encrypt = kp.EncryptKeyWithSHA1
			}
			payload, err := encrypt(b64(m), pubKey)
			require.NoError(t, err)
			encNonce, gotIV, err := kp.EncryptNonce(b64(m), nonce64, iv)
			require.NoError(t, err)
			return sealed{payload, encNonce, gotIV}
		}

		// A root key imported through the token (RSAES_OAEP_SHA_256): wraps with its material.
		s1 := seal(m1, tok.Payload, tok.Nonce, "", false)
		k1, err := c.CreateImportedRootKey(ctx, "secure-import", nil, s1.payload, s1.nonce, s1.iv)
		require.NoError(t, err)
		assert.True(t, k1.Imported)
		assert.False(t, k1.Extractable)
		dek := []byte("0123456789abcdef0123456789abcdef")
		ct1, err := c.Wrap(ctx, k1.ID, []byte(b64(dek)), nil)
		require.NoError(t, err)
		assert.Equal(t, dek, openedWith(t, k1.ID, ct1, m1))

		// RSAES_OAEP_SHA_1, with an IV the caller chose (EncryptNonce sends it unencoded).
		s2 := seal(m2, tok.Payload, tok.Nonce, "caller-iv-12", true)
		assert.Equal(t, "caller-iv-12", s2.iv)
		k2, err := c.CreateImportedKeyWithSHA1(ctx, "secure-import-sha1", nil, s2.payload, s2.nonce, s2.iv, false, nil)
		require.NoError(t, err)
		ct2, err := c.Wrap(ctx, k2.ID, []byte(b64(dek)), nil)
		require.NoError(t, err)
		assert.Equal(t, dek, openedWith(t, k2.ID, ct2, m2))

		// The policy overrides route takes the token's members too.
		s5 := seal(m3, tok.Payload, tok.Nonce, "", false)
		k5, err := c.CreateImportedRootKeyWithPolicyOverrides(ctx, "secure-import-overrides", nil, s5.payload, s5.nonce, s5.iv, nil, kp.Policy{})
		require.NoError(t, err)
		ct5, err := c.Wrap(ctx, k5.ID, []byte(b64(dek)), nil)
		require.NoError(t, err)
		assert.Equal(t, dek, openedWith(t, k5.ID, ct5, m3))

		// Refusals of a creation: status, reason code, and no key made.
		before := keyCount()
		otherPub, err := x509.MarshalPKIXPublicKey(&fixtureKey(t, "b").PublicKey)
		require.NoError(t, err)
		otherPayload := b64(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: otherPub}))
		wrongNonce := seal(m1, tok.Payload, b64(bytes.Repeat([]byte{9}, 12)), "", false)
		otherIV := seal(m1, tok.Payload, tok.Nonce, "", false)
		otherIV.iv = b64(bytes.Repeat([]byte{1}, 12))
		sha1Payload := seal(m1, tok.Payload, tok.Nonce, "", true)
		forOtherToken := seal(m1, otherPayload, tok.Nonce, "", false)
		for _, tc := range []struct {
			name        string
			s           sealed
			sha1        bool
			status      int
			code, id    string
			extractable bool
		}{
			{"wrong nonce", wrongNonce, false, 400, "INCORRECT_NONCE_ERR", "incorrect_nonce", false},
			{"iv not the one used", otherIV, false, 400, "INCORRECT_NONCE_IV_ERR", "incorrect_nonce_iv", false},
			{"sha-1 payload sent as sha-256", sha1Payload, false, 400, "INVALID_FIELD_ERR", "invalid_material", false},
			{"sha-256 payload sent as sha-1", s1, true, 400, "INVALID_FIELD_ERR", "invalid_material", false},
			{"payload for another token's key", forOtherToken, false, 400, "INVALID_FIELD_ERR", "invalid_material", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var err error
				if tc.sha1 {
					_, err = c.CreateImportedKeyWithSHA1(ctx, "refused", nil, tc.s.payload, tc.s.nonce, tc.s.iv, false, nil)
				} else {
					_, err = c.CreateImportedRootKey(ctx, "refused", nil, tc.s.payload, tc.s.nonce, tc.s.iv)
				}
				refused(err, tc.status, tc.code, tc.id)
			})
		}
		// Requests the client cannot make: an unknown algorithm, an iv that is not base64, a
		// standard key through the token.
		for _, tc := range []struct {
			name, body string
			status     int
			code       string
		}{
			{"unknown algorithm", `{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},"resources":[{"name":"x","extractable":false,"payload":"` + s1.payload + `","encryptedNonce":"` + s1.nonce + `","iv":"` + s1.iv + `","encryptionAlgorithm":"RSAES_PKCS1_V1_5"}]}`, 400, "INVALID_FIELD_ERR"},
			{"iv not base64", `{"resources":[{"name":"x","payload":"` + s1.payload + `","encryptedNonce":"` + s1.nonce + `","iv":"%%%"}]}`, 400, "INVALID_FIELD_ERR"},
			{"nonce without iv", `{"resources":[{"name":"x","payload":"` + s1.payload + `","encryptedNonce":"` + s1.nonce + `"}]}`, 400, "INVALID_FIELD_ERR"},
			{"standard key", `{"resources":[{"name":"x","extractable":true,"payload":"` + s1.payload + `","encryptedNonce":"` + s1.nonce + `","iv":"` + s1.iv + `"}]}`, 400, "INVALID_FIELD_ERR"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp := e.do(t, http.MethodPost, e.srv.URL+"/api/v2/keys", tc.body, nil)
				raw, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				assert.Equal(t, tc.status, resp.StatusCode, "%s", raw)
				got := ParseError(resp.StatusCode, raw)
				assert.Equal(t, tc.code, got.Code)
			})
		}
		assert.Equal(t, before, keyCount(), "a refused import creates no key")

		// Rotation through the token (RotateV2 with a KeyPayload): the new material wraps,
		// and the old ciphertexts still unwrap. A wrong nonce rotates nothing.
		s3 := seal(m3, tok.Payload, tok.Nonce, "", false)
		bad := seal(m3, tok.Payload, b64(bytes.Repeat([]byte{9}, 12)), "", false)
		badPayload := kp.NewKeyPayload(bad.payload, bad.nonce, bad.iv).WithRSA256()
		refused(c.RotateV2(ctx, k1.ID, &badPayload), 400, "INCORRECT_NONCE_ERR", "incorrect_nonce")
		versions, err := c.ListKeyVersions(ctx, k1.ID, nil)
		require.NoError(t, err)
		assert.Len(t, versions.KeyVersion, 1)
		good := kp.NewKeyPayload(s3.payload, s3.nonce, s3.iv).WithRSA256()
		require.NoError(t, c.RotateV2(ctx, k1.ID, &good))
		ct3, err := c.Wrap(ctx, k1.ID, []byte(b64(dek)), nil)
		require.NoError(t, err)
		assert.Equal(t, dek, openedWith(t, k1.ID, ct3, m3))
		pt, err := c.Unwrap(ctx, k1.ID, ct1, nil)
		require.NoError(t, err)
		assert.Equal(t, b64(dek), string(pt))
		s4 := seal(m1, tok.Payload, tok.Nonce, "", true)
		sha1Rotate := kp.NewKeyPayload(s4.payload, s4.nonce, s4.iv).WithRSA1()
		require.NoError(t, c.RotateV2(ctx, k2.ID, &sha1Rotate))
		ct4, err := c.Wrap(ctx, k2.ID, []byte(b64(dek)), nil)
		require.NoError(t, err)
		assert.Equal(t, dek, openedWith(t, k2.ID, ct4, m1))

		// Retrievals: two left, then none; a refused one counts nothing.
		for _, left := range []int{1, 0} {
			resp := e.do(t, http.MethodGet, e.srv.URL+ImportTokenPath, "", nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			var got ImportToken
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
			assert.Equal(t, left, got.RemainingRetrievals)
			assert.Equal(t, 3, got.MaxAllowedRetrievals)
			assert.Equal(t, tok.Payload, got.Payload)
		}
		_, err = c.GetImportTokenTransportKey(ctx)
		refused(err, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR", "import_token_used_up")
		status, err := svc.ImportTokenStatus(ctx)
		require.NoError(t, err)
		assert.Equal(t, 0, status.RemainingRetrievals)

		// Expiry by the service clock: retrieval, import and rotation refused, nothing
		// changed.
		e.clock.Advance(300 * time.Second)
		_, err = c.GetImportTokenTransportKey(ctx)
		refused(err, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR", "import_token_expired")
		late := seal(m2, tok.Payload, tok.Nonce, "", false)
		_, err = c.CreateImportedRootKey(ctx, "late", nil, late.payload, late.nonce, late.iv)
		refused(err, http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR", "import_token_expired")
		lateRotate := kp.NewKeyPayload(late.payload, late.nonce, late.iv)
		refused(c.RotateV2(ctx, k2.ID, &lateRotate), http.StatusConflict, "IMPORT_TOKEN_EXPIRED_ERR", "import_token_expired")
		assert.Equal(t, before, keyCount())
		versions, err = c.ListKeyVersions(ctx, k2.ID, nil)
		require.NoError(t, err)
		assert.Len(t, versions.KeyVersion, 2)

		// A new token (the defaults: 600 s, one retrieval) replaces the old one: material
		// encrypted for the old key pair no longer imports.
		keys.use(fixtureKey(t, "b"))
		created, err = c.CreateImportToken(ctx, 0, 0)
		require.NoError(t, err)
		assert.Equal(t, e.clock.Now().Add(600*time.Second), *created.ExpirationDate)
		assert.Equal(t, 1, created.MaxAllowedRetrievals)
		fresh, err := c.GetImportTokenTransportKey(ctx)
		require.NoError(t, err)
		stale := seal(m2, tok.Payload, fresh.Nonce, "", false)
		_, err = c.CreateImportedRootKey(ctx, "stale", nil, stale.payload, stale.nonce, stale.iv)
		refused(err, http.StatusBadRequest, "INVALID_FIELD_ERR", "invalid_material")
		ok := seal(m2, fresh.Payload, fresh.Nonce, "", false)
		_, err = c.CreateImportedRootKey(ctx, "fresh", nil, ok.payload, ok.nonce, ok.iv)
		require.NoError(t, err)

		// The keyCreateImportAccess instance policy without import_root_key: no token is
		// created or retrieved, nothing imports through one.
		noImport := crk.DefaultKeyCreateImportAccess()
		noImport.ImportRootKey = false
		_, err = svc.SetInstancePolicies(ctx, crk.InstancePolicyUpdate{KeyCreateImportAccess: &noImport})
		require.NoError(t, err)
		_, err = c.CreateImportToken(ctx, 600, 1)
		refused(err, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR", "create_import_access")
		_, err = c.GetImportTokenTransportKey(ctx)
		refused(err, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR", "create_import_access")
		again := seal(m3, fresh.Payload, fresh.Nonce, "", false)
		_, err = c.CreateImportedRootKey(ctx, "refused", nil, again.payload, again.nonce, again.iv)
		refused(err, http.StatusConflict, "KEY_CREATE_IMPORT_ACCESS_ERR", "create_import_access")
		assert.Equal(t, before+1, keyCount())

		// The audit log has the token's actions, and a failure for each refusal.
		evs, err := svc.Events(ctx, crk.EventFilter{Action: crk.ActionImportTokenRead})
		require.NoError(t, err)
		assert.Len(t, evs, 8) // 4 successes; not found, used up, expired, policy
		evs, err = svc.Events(ctx, crk.EventFilter{Action: crk.ActionImportTokenCreate, Outcome: crk.OutcomeSuccess})
		require.NoError(t, err)
		assert.Len(t, evs, 2)
		for _, ev := range evs {
			assert.Equal(t, "kpapi:"+StaticTokenID, ev.Initiator)
		}
	})
}

// TestImportTokenBodies: malformed token requests get a clear 400 and change nothing.
func TestImportTokenBodies(t *testing.T) {
	keys := &tokenKeySource{next: fixtureKey(t, "a")}
	e := newTokenEnv(t, serverStores[0], keys)
	for _, tc := range []struct {
		name, body string
		code       string
	}{
		{"expiration not a number", `{"expiration":"600"}`, "BAD_BODY_ERR"},
		{"expiration not an integer", `{"expiration":600.5}`, "BAD_BODY_ERR"},
		{"expiration beyond a duration", `{"expiration":9223372036854775807}`, "INVALID_FIELD_ERR"},
		{"retrievals beyond the limit", `{"maxAllowedRetrievals":100000}`, "INVALID_FIELD_ERR"},
		{"duplicate member", `{"expiration":600,"Expiration":900}`, "BAD_BODY_ERR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(t, http.MethodPost, e.srv.URL+ImportTokenPath, tc.body, nil)
			raw, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s", raw)
			assert.Equal(t, tc.code, ParseError(resp.StatusCode, raw).Code)
		})
	}
	_, err := e.svc(t).ImportTokenStatus(e.ctx)
	assert.ErrorIs(t, err, crk.ErrImportTokenNotFound)
	resp := e.do(t, http.MethodDelete, e.srv.URL+ImportTokenPath, "", nil)
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

// FuzzImportFields reads arbitrary import members. It must never panic; a request with none
// of them is a plain one; otherwise the iv is the 12 characters themselves or the base64 of
// what it carries, and every refusal is a 400 naming the member.
func FuzzImportFields(f *testing.F) {
	f.Add("cGF5bG9hZA==", "bm9uY2U=", "AAAAAAAAAAAAAAAA", "RSAES_OAEP_SHA_256")
	f.Add("", "", "caller-iv-12", "")
	f.Add("%%", "x", "", "RSAES_OAEP_SHA_1")
	f.Add("", "", "", "")
	f.Fuzz(func(t *testing.T, payload, nonce, iv, alg string) {
		fields := importFields{EncryptedNonce: &nonce, IV: &iv, EncryptionAlgorithm: &alg}
		em, err := fields.material(&payload)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != http.StatusBadRequest || ae.target == "" {
				t.Fatalf("refusal %v is not a 400 naming a member", err)
			}
			return
		}
		if nonce == "" && iv == "" && alg == "" {
			if em != nil {
				t.Fatal("a request without import members is a plain one")
			}
			return
		}
		if em == nil {
			t.Fatal("a request with import members has no encrypted material")
		}
		want := []byte(iv)
		if len(iv) != 12 {
			want, _ = base64.StdEncoding.DecodeString(iv)
		}
		if !bytes.Equal(em.IV, want) || em.Algorithm != alg {
			t.Fatalf("iv %q read as %x, algorithm %q as %q", iv, em.IV, alg, em.Algorithm)
		}
	})
}
