package crk

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// The import token tests use RSA-4096 keys made once with openssl (testdata/import-token-*.pem,
// test fixtures that protect nothing) through Options.ImportTokenKey: generating one costs
// 0.2 to 3 CPU-seconds. Only TestImportTokenGeneratesItsKey, in the long run, generates one.

var fixtureKeys struct {
	once sync.Once
	keys map[string]*rsa.PrivateKey
	err  error
}

// tokenKey returns the fixture key named name ("a" or "b").
func tokenKey(t testing.TB, name string) *rsa.PrivateKey {
	t.Helper()
	fixtureKeys.once.Do(func() {
		fixtureKeys.keys = map[string]*rsa.PrivateKey{}
		for _, n := range []string{"a", "b"} {
			raw, err := os.ReadFile(filepath.Join("testdata", "import-token-"+n+".pem"))
			if err != nil {
				fixtureKeys.err = err
				return
			}
			block, _ := pem.Decode(raw)
			if block == nil {
				fixtureKeys.err = os.ErrInvalid
				return
			}
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				fixtureKeys.err = err
				return
			}
			fixtureKeys.keys[n] = k.(*rsa.PrivateKey)
		}
	})
	require.NoError(t, fixtureKeys.err)
	return fixtureKeys.keys[name]
}

// tokenKeys is an Options.ImportTokenKey that gives the fixture key a test chooses.
type tokenKeys struct {
	mu   sync.Mutex
	next *rsa.PrivateKey
}

func (k *tokenKeys) use(key *rsa.PrivateKey) { k.mu.Lock(); k.next = key; k.mu.Unlock() }

func (k *tokenKeys) get() (*rsa.PrivateKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.next, nil
}

// newTokenFixture is newFixture with import token keys from the fixtures (key "a" first).
func newTokenFixture(t *testing.T, st *testStore) (*fixture, *tokenKeys) {
	t.Helper()
	keys := &tokenKeys{next: tokenKey(t, "a")}
	clock := NewManualClock(t0)
	path := tempPath(t)
	svc, err := st.open(path, Options{Clock: clock, ImportTokenKey: keys.get})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	return &fixture{st: st, svc: svc, clock: clock, path: path, ctx: context.Background()}, keys
}

// encryptFor does what a client does with a retrieved token: the material under its public
// key by RSA-OAEP with h, and the nonce under the material by AES-GCM with a random IV.
func encryptFor(t testing.TB, tok *ImportTokenKey, material, nonce []byte, h hash.Hash, alg string) *EncryptedMaterial {
	t.Helper()
	aesBlock, err := aes.NewCipher(material)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(aesBlock)
	require.NoError(t, err)
	iv := make([]byte, 12)
	_, err = rand.Read(iv)
	require.NoError(t, err)
	return &EncryptedMaterial{Payload: payloadFor(t, tok, material, h), Algorithm: alg, EncryptedNonce: gcm.Seal(nil, iv, nonce, nil), IV: iv}
}

// payloadFor encrypts material with the token's public key by RSA-OAEP with h.
func payloadFor(t testing.TB, tok *ImportTokenKey, material []byte, h hash.Hash) []byte {
	t.Helper()
	block, _ := pem.Decode(tok.PublicKey)
	require.NotNil(t, block)
	require.Equal(t, "PUBLIC KEY", block.Type)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	payload, err := rsa.EncryptOAEP(h, rand.Reader, pub.(*rsa.PublicKey), material, nil)
	require.NoError(t, err)
	return payload
}

// openedBy reports whether a wrap ciphertext of key id opens under material, as the
// ciphertext format says: the imported material is the one the key uses.
func openedBy(t testing.TB, keyID string, ct, material []byte) []byte {
	t.Helper()
	vid, err := CiphertextVersion(ct)
	require.NoError(t, err)
	block, err := aes.NewCipher(material)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	pt, err := gcm.Open(nil, ct[20:ctHeader], ct[ctHeader:], wrapAAD(keyID, vid, nil))
	require.NoError(t, err, "the ciphertext is not sealed under the imported material")
	return pt
}

// countKeys returns the number of keys of the store, in any state.
func countKeys(t testing.TB, f *fixture) int {
	t.Helper()
	ks, err := f.svc.ListKeys(f.ctx, ListOptions{States: []State{StateActive, StateSuspended, StateDeactivated, StateDestroyed}})
	require.NoError(t, err)
	return len(ks)
}

func TestImportTokenOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   ImportTokenOptions
		want ImportTokenOptions
		bad  string // what the error names
	}{
		{"defaults", ImportTokenOptions{}, ImportTokenOptions{Expiration: 600 * time.Second, MaxRetrievals: 1}, ""},
		{"least", ImportTokenOptions{Expiration: 300 * time.Second, MaxRetrievals: 1}, ImportTokenOptions{Expiration: 300 * time.Second, MaxRetrievals: 1}, ""},
		{"most", ImportTokenOptions{Expiration: 86400 * time.Second, MaxRetrievals: 500}, ImportTokenOptions{Expiration: 86400 * time.Second, MaxRetrievals: 500}, ""},
		{"expiration too short", ImportTokenOptions{Expiration: 299 * time.Second}, ImportTokenOptions{}, "expiration"},
		{"expiration too long", ImportTokenOptions{Expiration: 86401 * time.Second}, ImportTokenOptions{}, "expiration"},
		{"expiration negative", ImportTokenOptions{Expiration: -time.Second}, ImportTokenOptions{}, "expiration"},
		{"expiration not whole seconds", ImportTokenOptions{Expiration: 300*time.Second + time.Millisecond}, ImportTokenOptions{}, "expiration"},
		{"retrievals negative", ImportTokenOptions{MaxRetrievals: -1}, ImportTokenOptions{}, "maxAllowedRetrievals"},
		{"retrievals too many", ImportTokenOptions{MaxRetrievals: 501}, ImportTokenOptions{}, "maxAllowedRetrievals"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := checkImportTokenOptions(tc.in)
			if tc.bad != "" {
				require.ErrorIs(t, err, ErrInvalidArgument)
				assert.Contains(t, err.Error(), tc.bad)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestImportToken(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f, keys := newTokenFixture(t, st)
		ctx := WithInitiator(f.ctx, "alice")
		m1, m2 := material(32, 11), material(16, 23)

		// No token yet.
		_, err := f.svc.GetImportToken(ctx)
		assert.ErrorIs(t, err, ErrImportTokenNotFound)
		_, err = f.svc.ImportTokenStatus(ctx)
		assert.ErrorIs(t, err, ErrImportTokenNotFound)
		_, err = f.svc.CreateKey(ctx, CreateOptions{Name: "early", Encrypted: &EncryptedMaterial{Payload: []byte{1}, EncryptedNonce: []byte{1}, IV: make([]byte, 12)}})
		assert.ErrorIs(t, err, ErrImportTokenNotFound)
		assert.Equal(t, 1, strings.Count(err.Error(), "no import token"), "said once: %v", err)

		// Options out of range create nothing.
		_, err = f.svc.CreateImportToken(ctx, ImportTokenOptions{MaxRetrievals: 501})
		require.ErrorIs(t, err, ErrInvalidArgument)
		_, err = f.svc.ImportTokenStatus(ctx)
		assert.ErrorIs(t, err, ErrImportTokenNotFound)

		created, err := f.svc.CreateImportToken(ctx, ImportTokenOptions{Expiration: 300 * time.Second, MaxRetrievals: 2})
		require.NoError(t, err)
		assert.Equal(t, ImportToken{CreationDate: t0, ExpirationDate: t0.Add(300 * time.Second), MaxRetrievals: 2, RemainingRetrievals: 2, CreatedBy: "alice"}, *created)

		// Retrievals are counted; the status is not one.
		tok, err := f.svc.GetImportToken(ctx)
		require.NoError(t, err)
		assert.Equal(t, 1, tok.RemainingRetrievals)
		assert.Len(t, tok.Nonce, ImportTokenNonceSize)
		block, _ := pem.Decode(tok.PublicKey)
		require.NotNil(t, block)
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		require.NoError(t, err)
		assert.True(t, tokenKey(t, "a").PublicKey.Equal(pub))
		status, err := f.svc.ImportTokenStatus(ctx)
		require.NoError(t, err)
		assert.Equal(t, 1, status.RemainingRetrievals)
		again, err := f.svc.GetImportToken(ctx)
		require.NoError(t, err)
		assert.Equal(t, 0, again.RemainingRetrievals)
		assert.Equal(t, tok.Nonce, again.Nonce)
		_, err = f.svc.GetImportToken(ctx)
		assert.ErrorIs(t, err, ErrImportTokenUsedUp)
		status, err = f.svc.ImportTokenStatus(ctx)
		require.NoError(t, err)
		assert.Equal(t, 0, status.RemainingRetrievals, "a refused retrieval counts nothing")

		// Imports: the retrievals used up do not stop them, nor does an import use the token.
		k, err := f.svc.CreateKey(ctx, CreateOptions{Name: "via-token", Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")})
		require.NoError(t, err)
		assert.True(t, k.Imported)
		assert.Equal(t, RootKey, k.Type)
		w, err := f.svc.Wrap(ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)
		assert.Equal(t, []byte("dek"), openedBy(t, k.ID, w.Ciphertext, m1))
		k1, err := f.svc.CreateKey(ctx, CreateOptions{Name: "via-token-sha1", Encrypted: encryptFor(t, tok, m2, tok.Nonce, sha1.New(), AlgorithmRSAOAEPSHA1)})
		require.NoError(t, err)
		w1, err := f.svc.Wrap(ctx, k1.ID, []byte("dek1"), nil)
		require.NoError(t, err)
		assert.Equal(t, []byte("dek1"), openedBy(t, k1.ID, w1.Ciphertext, m2))

		// Refusals change nothing.
		before := countKeys(t, f)
		other := &ImportTokenKey{PublicKey: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: mustPKIX(t, &tokenKey(t, "b").PublicKey)})}
		badIV := encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")
		badIV.IV[0] ^= 1
		for _, tc := range []struct {
			name string
			opts CreateOptions
			want error
		}{
			{"wrong nonce", CreateOptions{Encrypted: encryptFor(t, tok, m1, bytes.Repeat([]byte{7}, 12), sha256.New(), "")}, ErrIncorrectNonce},
			{"wrong iv", CreateOptions{Encrypted: badIV}, ErrNonceIV},
			{"nonce under other material", CreateOptions{Encrypted: func() *EncryptedMaterial {
				em := encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")
				em.EncryptedNonce = encryptFor(t, tok, material(32, 99), tok.Nonce, sha256.New(), "").EncryptedNonce
				return em
			}()}, ErrNonceIV},
			{"unknown algorithm", CreateOptions{Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "RSAES_PKCS1_V1_5")}, ErrEncryptionAlgorithm},
			{"algorithm not the one used", CreateOptions{Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha1.New(), AlgorithmRSAOAEPSHA256)}, ErrInvalidMaterial},
			{"payload for another token", CreateOptions{Encrypted: encryptFor(t, other, m1, tok.Nonce, sha256.New(), "")}, ErrInvalidMaterial},
			{"material of 20 bytes", CreateOptions{Encrypted: func() *EncryptedMaterial {
				em := encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")
				em.Payload = payloadFor(t, tok, material(20, 5), sha256.New())
				return em
			}()}, ErrInvalidMaterial},
			{"trivial material", CreateOptions{Encrypted: encryptFor(t, tok, make([]byte, 32), tok.Nonce, sha256.New(), "")}, ErrInvalidMaterial},
			{"standard key", CreateOptions{Type: StandardKey, Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")}, ErrInvalidArgument},
			{"material twice", CreateOptions{Material: m1, Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")}, ErrInvalidArgument},
			{"no iv", CreateOptions{Encrypted: &EncryptedMaterial{Payload: []byte{1}, EncryptedNonce: []byte{1}}}, ErrInvalidArgument},
			{"iv of 16 bytes", CreateOptions{Encrypted: &EncryptedMaterial{Payload: []byte{1}, EncryptedNonce: []byte{1}, IV: make([]byte, 16)}}, ErrInvalidArgument},
			{"no nonce", CreateOptions{Encrypted: &EncryptedMaterial{Payload: []byte{1}, IV: make([]byte, 12)}}, ErrInvalidArgument},
			{"no payload", CreateOptions{Encrypted: &EncryptedMaterial{EncryptedNonce: []byte{1}, IV: make([]byte, 12)}}, ErrInvalidArgument},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tc.opts.Name = "refused"
				_, err := f.svc.CreateKey(ctx, tc.opts)
				require.ErrorIs(t, err, tc.want)
				info, ok := LookupError(err)
				require.True(t, ok)
				assert.Same(t, tc.want, info.Err, "%v", err)
			})
		}
		assert.Equal(t, before, countKeys(t, f))

		// Rotation through the token: the new material is used, old ciphertexts still open.
		_, err = f.svc.RotateKeyEncrypted(ctx, k.ID, encryptFor(t, tok, m2, bytes.Repeat([]byte{7}, 12), sha256.New(), ""))
		require.ErrorIs(t, err, ErrIncorrectNonce)
		rotated, err := f.svc.RotateKeyEncrypted(ctx, k.ID, encryptFor(t, tok, m2, tok.Nonce, sha256.New(), ""))
		require.NoError(t, err)
		assert.NotEqual(t, k.KeyVersion.ID, rotated.KeyVersion.ID)
		w2, err := f.svc.Wrap(ctx, k.ID, []byte("dek2"), nil)
		require.NoError(t, err)
		assert.Equal(t, []byte("dek2"), openedBy(t, k.ID, w2.Ciphertext, m2))
		u, err := f.svc.Unwrap(ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err)
		assert.Equal(t, []byte("dek"), u.Plaintext)
		generated := f.root(t, "generated")
		_, err = f.svc.RotateKeyEncrypted(ctx, generated.ID, encryptFor(t, tok, m2, tok.Nonce, sha256.New(), ""))
		assert.ErrorIs(t, err, ErrMaterialNotAllowed)

		// A master key rotation re-encrypts the token's private key with the key material.
		require.NoError(t, f.svc.RotateMasterKey(ctx, bytes.Repeat([]byte{9}, 32)))
		k2, err := f.svc.CreateKey(ctx, CreateOptions{Name: "after-master-key", Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")})
		require.NoError(t, err)

		// Expiry, by the service clock: retrieval, import and rotation refused.
		f.clock.Advance(300 * time.Second)
		_, err = f.svc.GetImportToken(ctx)
		assert.ErrorIs(t, err, ErrImportTokenExpired)
		_, err = f.svc.CreateKey(ctx, CreateOptions{Name: "late", Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")})
		assert.ErrorIs(t, err, ErrImportTokenExpired)
		f.clock.Advance(time.Hour)
		_, err = f.svc.RotateKeyEncrypted(ctx, k2.ID, encryptFor(t, tok, m2, tok.Nonce, sha256.New(), ""))
		assert.ErrorIs(t, err, ErrImportTokenExpired)
		vs, err := f.svc.ListVersions(ctx, k2.ID)
		require.NoError(t, err)
		assert.Len(t, vs, 1)

		// A new token replaces the old: what was encrypted for the old one no longer imports.
		keys.use(tokenKey(t, "b"))
		_, err = f.svc.CreateImportToken(ctx, ImportTokenOptions{})
		require.NoError(t, err)
		fresh, err := f.svc.GetImportToken(ctx)
		require.NoError(t, err)
		assert.NotEqual(t, tok.Nonce, fresh.Nonce)
		_, err = f.svc.CreateKey(ctx, CreateOptions{Name: "old-token", Encrypted: encryptFor(t, tok, m1, fresh.Nonce, sha256.New(), "")})
		assert.ErrorIs(t, err, ErrInvalidMaterial)
		_, err = f.svc.CreateKey(ctx, CreateOptions{Name: "new-token", Encrypted: encryptFor(t, fresh, m1, fresh.Nonce, sha256.New(), "")})
		require.NoError(t, err)

		// A copy of the store under another master key imports through the same token.
		dst, err := Open(tempPath(t), Options{Instance: f.svc.Instance(), MasterKey: material(32, 77), Clock: f.clock})
		require.NoError(t, err)
		defer dst.Close()
		_, err = CopyStore(ctx, f.svc, dst)
		require.NoError(t, err)
		copied, err := dst.CreateKey(ctx, CreateOptions{Name: "in-copy", Encrypted: encryptFor(t, fresh, m2, fresh.Nonce, sha256.New(), "")})
		require.NoError(t, err)
		wc, err := dst.Wrap(ctx, copied.ID, []byte("dek3"), nil)
		require.NoError(t, err)
		assert.Equal(t, []byte("dek3"), openedBy(t, copied.ID, wc.Ciphertext, m2))

		// Events: creations, retrievals and refusals, with no secret in them.
		evs, err := f.svc.Events(f.ctx, EventFilter{Action: ActionImportTokenRead, OldestFirst: true})
		require.NoError(t, err)
		var outcomes []string
		for _, e := range evs {
			outcomes = append(outcomes, e.Outcome)
			assert.Equal(t, "alice", e.Initiator)
		}
		assert.Equal(t, []string{"failure", "success", "success", "failure", "failure", "success"}, outcomes)
		evs, err = f.svc.Events(f.ctx, EventFilter{Action: ActionImportTokenCreate, OldestFirst: true})
		require.NoError(t, err)
		require.Len(t, evs, 3)
		assert.Equal(t, OutcomeFailure, evs[0].Outcome)
		assert.Contains(t, evs[1].Reason, "maxAllowedRetrievals 2")
		all, err := f.svc.Events(f.ctx, EventFilter{})
		require.NoError(t, err)
		for _, e := range all {
			for _, secret := range [][]byte{m1, m2, tok.Nonce} {
				assert.NotContains(t, e.Reason, string(secret))
			}
		}
	})
}

func mustPKIX(t testing.TB, pub *rsa.PublicKey) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	return b
}

// TestImportTokenKeySize: a key of another size than 4096 bits never backs a token.
func TestImportTokenKeySize(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	svc, err := Open(tempPath(t), Options{ImportTokenKey: func() (*rsa.PrivateKey, error) { return small, nil }})
	require.NoError(t, err)
	defer svc.Close()
	_, err = svc.CreateImportToken(context.Background(), ImportTokenOptions{})
	require.ErrorContains(t, err, "not a 4096-bit RSA key")
	_, err = svc.ImportTokenStatus(context.Background())
	assert.ErrorIs(t, err, ErrImportTokenNotFound)
}

// TestImportTokenGeneratesItsKey makes a token as production does: a new RSA-4096 key.
func TestImportTokenGeneratesItsKey(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("generating an RSA-4096 key costs seconds of CPU: runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	svc, err := Open(tempPath(t), Options{})
	require.NoError(t, err)
	defer svc.Close()
	ctx := context.Background()
	_, err = svc.CreateImportToken(ctx, ImportTokenOptions{})
	require.NoError(t, err)
	tok, err := svc.GetImportToken(ctx)
	require.NoError(t, err)
	block, _ := pem.Decode(tok.PublicKey)
	require.NotNil(t, block)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	require.NoError(t, err)
	assert.Equal(t, 4096, pub.(*rsa.PublicKey).N.BitLen())
	for _, name := range []string{"a", "b"} {
		assert.False(t, tokenKey(t, name).PublicKey.Equal(pub), "a generated key, not a fixture")
	}
	m := material(32, 3)
	k, err := svc.CreateKey(ctx, CreateOptions{Name: "generated-token", Encrypted: encryptFor(t, tok, m, tok.Nonce, sha256.New(), "")})
	require.NoError(t, err)
	w, err := svc.Wrap(ctx, k.ID, []byte("x"), nil)
	require.NoError(t, err)
	assert.Equal(t, []byte("x"), openedBy(t, k.ID, w.Ciphertext, m))
}

// TestImportTokenRetrievalsConcurrently: of concurrent retrievals (on PostgreSQL, of
// processes sharing the store alike), exactly the token's limit succeed.
func TestImportTokenRetrievalsConcurrently(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f, _ := newTokenFixture(t, st)
		_, err := f.svc.CreateImportToken(f.ctx, ImportTokenOptions{MaxRetrievals: 5})
		require.NoError(t, err)
		other := f.svc
		if st.kind == "postgres" {
			// A second process on the same instance.
			other, err = st.open(f.path, Options{Clock: f.clock})
			require.NoError(t, err)
			defer other.Close()
		}
		var (
			wg             sync.WaitGroup
			mu             sync.Mutex
			ok, usedUp     int
			unexpected     []error
			remainingsSeen = map[int]bool{}
		)
		for i := range 12 {
			svc := f.svc
			if i%2 == 1 {
				svc = other
			}
			wg.Go(func() {
				tok, err := svc.GetImportToken(f.ctx)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
					remainingsSeen[tok.RemainingRetrievals] = true
				case errors.Is(err, ErrImportTokenUsedUp):
					usedUp++
				default:
					unexpected = append(unexpected, err)
				}
			})
		}
		wg.Wait()
		require.Empty(t, unexpected)
		assert.Equal(t, 5, ok)
		assert.Equal(t, 7, usedUp)
		assert.Equal(t, map[int]bool{0: true, 1: true, 2: true, 3: true, 4: true}, remainingsSeen, "each retrieval counted once")
	})
}

// TestImportTokenAndCreateImportAccess: the keyCreateImportAccess instance policy governs the
// import token paths. enforce_token refuses plain imports (creation and rotation) and allows
// them through the token; without import_root_key no token is created or retrieved, and
// nothing imports through one.
func TestImportTokenAndCreateImportAccess(t *testing.T) {
	f, _ := newTokenFixture(t, &testStore{kind: "bolt"})
	ctx := f.ctx
	_, err := f.svc.CreateImportToken(ctx, ImportTokenOptions{MaxRetrievals: 3})
	require.NoError(t, err)
	tok, err := f.svc.GetImportToken(ctx)
	require.NoError(t, err)
	m1, m2 := material(32, 41), material(32, 42)

	enforce := DefaultKeyCreateImportAccess()
	enforce.EnforceToken = true
	_, err = f.svc.SetInstancePolicies(ctx, InstancePolicyUpdate{KeyCreateImportAccess: &enforce})
	require.NoError(t, err)
	_, err = f.svc.ImportRootKey(ctx, "plain", m1)
	require.ErrorIs(t, err, ErrCreateImportAccess)
	k, err := f.svc.CreateKey(ctx, CreateOptions{Name: "through-token", Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")})
	require.NoError(t, err)
	_, err = f.svc.RotateKey(ctx, k.ID, m2)
	require.ErrorIs(t, err, ErrCreateImportAccess)
	_, err = f.svc.RotateKeyEncrypted(ctx, k.ID, encryptFor(t, tok, m2, tok.Nonce, sha256.New(), ""))
	require.NoError(t, err)

	noImport := DefaultKeyCreateImportAccess()
	noImport.ImportRootKey = false
	_, err = f.svc.SetInstancePolicies(ctx, InstancePolicyUpdate{KeyCreateImportAccess: &noImport})
	require.NoError(t, err)
	before := countKeys(t, f)
	_, err = f.svc.CreateKey(ctx, CreateOptions{Name: "refused", Encrypted: encryptFor(t, tok, m1, tok.Nonce, sha256.New(), "")})
	require.ErrorIs(t, err, ErrCreateImportAccess)
	assert.Equal(t, before, countKeys(t, f))
	_, err = f.svc.GetImportToken(ctx)
	require.ErrorIs(t, err, ErrCreateImportAccess)
	_, err = f.svc.CreateImportToken(ctx, ImportTokenOptions{})
	require.ErrorIs(t, err, ErrCreateImportAccess)
	status, err := f.svc.ImportTokenStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, status.RemainingRetrievals, "the refused retrieval counted nothing")
	assert.Equal(t, 3, status.MaxRetrievals, "the refused creation replaced nothing")
}
