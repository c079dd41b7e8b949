package kms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// tokenServer is the kpapi server behind a gate that revokes bearer tokens as an IAM service
// does: it sees every token the token endpoint issues, and a request that carries a revoked
// one reaches the server with a token it does not know, which it answers 401.
type tokenServer struct {
	url, instance, apiKey string
	svc                   *crk.Service

	mu      sync.Mutex
	issued  []string
	revoked map[string]bool
	// rotate revokes every earlier token when one is issued; revokeAll revokes each token as
	// it is issued.
	rotate, revokeAll bool
	exchanges, calls  int
	// key is the root key the test made.
	key string
	// hold, when set, runs on each API request before the server answers it.
	hold func(r *http.Request)
}

func newTokenServer(t *testing.T) *tokenServer {
	t.Helper()
	tenants, err := kpapi.OpenTenants(filepath.Join(t.TempDir(), "state"), crk.Options{MasterKey: bytes.Repeat([]byte{5}, 32)})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	ts := &tokenServer{revoked: map[string]bool{}}
	ts.instance, ts.svc = tenants.Default()
	ts.apiKey, err = tenants.CreateAPIKey(ts.instance)
	require.NoError(t, err)
	api := kpapi.NewServer(tenants)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/identity/token" {
			rec := &recorder{ResponseWriter: w}
			api.ServeHTTP(rec, r)
			var tok struct {
				AccessToken string `json:"access_token"`
			}
			if json.Unmarshal(rec.body.Bytes(), &tok) == nil && tok.AccessToken != "" {
				ts.mu.Lock()
				ts.exchanges++
				if ts.rotate {
					for _, old := range ts.issued {
						ts.revoked[old] = true
					}
				}
				ts.issued = append(ts.issued, tok.AccessToken)
				if ts.revokeAll {
					ts.revoked[tok.AccessToken] = true
				}
				ts.mu.Unlock()
			}
			return
		}
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		ts.mu.Lock()
		ts.calls++
		if ts.revoked[tok] {
			r.Header.Set("Authorization", "Bearer revoked")
		}
		hold := ts.hold
		ts.mu.Unlock()
		if hold != nil {
			hold(r)
		}
		api.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ts.url = srv.URL
	return ts
}

// revokeIssued revokes every token issued so far.
func (ts *tokenServer) revokeIssued() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, tok := range ts.issued {
		ts.revoked[tok] = true
	}
}

// counts returns the token exchanges and API calls since the last counts.
func (ts *tokenServer) counts() (exchanges, calls int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	exchanges, calls = ts.exchanges, ts.calls
	ts.exchanges, ts.calls = 0, 0
	return exchanges, calls
}

// TestRemoteRenewsRevokedToken: a client that exchanges an API key drops its cached token
// when the service answers 401 (the token was revoked, or the service rotated its tokens)
// and makes the call once more with a fresh token, on the official client's path (wrap, key
// metadata) and on its own (rewrap, registrations, the lifecycle feed); a second 401 is a refusal; a configured
// token, which cannot be renewed, is sent once. Without the renewal, every call after a
// revocation is refused until the cached token expires.
func TestRemoteRenewsRevokedToken(t *testing.T) {
	ops := map[string]func(t *testing.T, ts *tokenServer, r *kms.Remote, keyID string, ct []byte) error{
		"wrap": func(t *testing.T, ts *tokenServer, r *kms.Remote, keyID string, ct []byte) error {
			_, err := r.Wrap(t.Context(), keyID, []byte("0123456789abcdef"), nil)
			return err
		},
		"key crn": func(t *testing.T, ts *tokenServer, r *kms.Remote, keyID string, ct []byte) error {
			_, err := r.KeyCRN(t.Context(), keyID)
			return err
		},
		"rewrap": func(t *testing.T, ts *tokenServer, r *kms.Remote, keyID string, ct []byte) error {
			_, err := r.Rewrap(t.Context(), keyID, ct, []string{"vol"})
			return err
		},
		"key events": func(t *testing.T, ts *tokenServer, r *kms.Remote, keyID string, ct []byte) error {
			p, err := r.KeyEvents(t.Context(), "", 0)
			if err == nil {
				assert.Equal(t, "0", p.Cursor)
			}
			return err
		},
		"unwrap": func(t *testing.T, ts *tokenServer, r *kms.Remote, keyID string, ct []byte) error {
			u, err := r.Unwrap(t.Context(), keyID, ct, []string{"vol"})
			if err == nil {
				assert.Equal(t, bytes.Repeat([]byte{1}, 32), u.Plaintext)
			}
			return err
		},
	}
	for _, tc := range []struct {
		name string
		// revoke runs after the first, successful call and before the one under test;
		// second is another client with the same API key, for rotation.
		revoke     func(ts *tokenServer, second *kms.Remote, t *testing.T)
		fixedToken bool
		wantErr    bool
		exchanges  int // during the call under test
		calls      int // API requests of the call under test
	}{
		{name: "token revoked", revoke: func(ts *tokenServer, _ *kms.Remote, _ *testing.T) { ts.revokeIssued() },
			exchanges: 1, calls: 2},
		{name: "tokens rotated by another client's exchange", revoke: func(ts *tokenServer, second *kms.Remote, t *testing.T) {
			ts.mu.Lock()
			ts.rotate = true
			ts.mu.Unlock()
			_, _, err := second.Registrations(t.Context(), ts.issuedKey(t))
			require.NoError(t, err)
		}, exchanges: 1, calls: 2},
		{name: "every token revoked: second 401 refuses", revoke: func(ts *tokenServer, _ *kms.Remote, _ *testing.T) {
			ts.mu.Lock()
			ts.revokeAll = true
			ts.mu.Unlock()
			ts.revokeIssued()
		}, wantErr: true, exchanges: 1, calls: 2},
		{name: "fixed token revoked: sent once", fixedToken: true, revoke: func(ts *tokenServer, _ *kms.Remote, _ *testing.T) { ts.revokeIssued() },
			wantErr: true, exchanges: 0, calls: 1},
		{name: "no revocation: cached token", revoke: func(*tokenServer, *kms.Remote, *testing.T) {},
			exchanges: 0, calls: 1},
	} {
		for opName, op := range ops {
			t.Run(tc.name+"/"+opName, func(t *testing.T) {
				ts := newTokenServer(t)
				k, err := ts.svc.CreateRootKey(t.Context(), "renew")
				require.NoError(t, err)
				ts.key = k.ID
				cfg := kms.RemoteConfig{URL: ts.url, Instance: ts.instance, APIKey: ts.apiKey}
				if tc.fixedToken {
					// A token the gate has seen issued, so that it can be revoked.
					bootstrap, err := kms.NewRemote(cfg)
					require.NoError(t, err)
					_, err = bootstrap.KeyCRN(t.Context(), k.ID)
					require.NoError(t, err)
					ts.mu.Lock()
					cfg = kms.RemoteConfig{URL: ts.url, Instance: ts.instance, Token: ts.issued[len(ts.issued)-1]}
					ts.mu.Unlock()
				}
				r, err := kms.NewRemote(cfg)
				require.NoError(t, err)
				second, err := kms.NewRemote(kms.RemoteConfig{URL: ts.url, Instance: ts.instance, APIKey: ts.apiKey})
				require.NoError(t, err)

				w, err := r.Wrap(t.Context(), k.ID, bytes.Repeat([]byte{1}, 32), []string{"vol"})
				require.NoError(t, err, "the first call")
				tc.revoke(ts, second, t)
				ts.counts()

				err = op(t, ts, r, k.ID, w.Ciphertext)
				exchanges, calls := ts.counts()
				if tc.wantErr {
					require.Error(t, err)
					assert.ErrorIs(t, err, volume.ErrKeyRefused, "%v", err)
					assert.ErrorIs(t, err, kms.ErrCredentialsRefused, "%v", err)
					assert.Contains(t, err.Error(), "401")
				} else {
					require.NoError(t, err)
				}
				assert.Equal(t, tc.exchanges, exchanges, "token exchanges")
				assert.Equal(t, tc.calls, calls, "API requests")
			})
		}
	}
}

// TestRemoteCredentialsRefused: the token endpoint refusing the API key, and the service
// answering 401 or 403, match kms.ErrCredentialsRefused whatever the call; other refusals
// (a key not found) do not.
func TestRemoteCredentialsRefused(t *testing.T) {
	ts := newTokenServer(t)
	k, err := ts.svc.CreateRootKey(t.Context(), "creds")
	require.NoError(t, err)
	good, err := kms.NewRemote(kms.RemoteConfig{URL: ts.url, Instance: ts.instance, APIKey: ts.apiKey})
	require.NoError(t, err)
	unknownKey, err := kms.NewRemote(kms.RemoteConfig{URL: ts.url, Instance: ts.instance, APIKey: "not-an-api-key"})
	require.NoError(t, err)
	badToken, err := kms.NewRemote(kms.RemoteConfig{URL: ts.url, Instance: ts.instance, Token: "not-a-token"})
	require.NoError(t, err)
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"metadata":{"collectionTotal":1},"resources":[{"errorMsg":"Forbidden"}]}`))
	}))
	t.Cleanup(forbidden.Close)
	denied, err := kms.NewRemote(kms.RemoteConfig{URL: forbidden.URL, Instance: ts.instance, Token: "tok"})
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		r    *kms.Remote
		key  string
		want bool
	}{
		{"API key refused by the token endpoint", unknownKey, k.ID, true},
		{"token refused (401)", badToken, k.ID, true},
		{"forbidden (403)", denied, k.ID, true},
		{"key not found", good, "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.r.KeyState(t.Context(), tc.key)
			require.Error(t, err)
			assert.Equal(t, tc.want, errors.Is(err, kms.ErrCredentialsRefused), "KeyState: %v", err)
			_, err = tc.r.KeyEvents(t.Context(), "", 0)
			if tc.want {
				assert.ErrorIs(t, err, kms.ErrCredentialsRefused, "KeyEvents: %v", err)
			}
		})
	}
}

// issuedKey returns the key the test made.
func (ts *tokenServer) issuedKey(t *testing.T) string {
	t.Helper()
	require.NotEmpty(t, ts.key)
	return ts.key
}

// TestRemoteRenewsTokenConcurrently: many calls that meet the revoked token at once all
// succeed, with a handful of exchanges (a call drops the cached token only if no other call
// has replaced it already).
func TestRemoteRenewsTokenConcurrently(t *testing.T) {
	ts := newTokenServer(t)
	k, err := ts.svc.CreateRootKey(t.Context(), "busy")
	require.NoError(t, err)
	r, err := kms.NewRemote(kms.RemoteConfig{URL: ts.url, Instance: ts.instance, APIKey: ts.apiKey})
	require.NoError(t, err)
	w, err := r.Wrap(t.Context(), k.ID, bytes.Repeat([]byte{1}, 32), []string{"vol"})
	require.NoError(t, err)
	ts.revokeIssued()
	ts.counts()

	const n = 8
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := r.Rewrap(t.Context(), k.ID, w.Ciphertext, []string{"vol"})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	exchanges, calls := ts.counts()
	assert.GreaterOrEqual(t, exchanges, 1)
	assert.LessOrEqual(t, exchanges, n)
	assert.LessOrEqual(t, calls, 2*n)
}

// TestRemoteErrorTextEscaped: a server's text in an error response, on both of Remote's
// paths, and the token endpoint's status line reach the caller's error with their control
// characters escaped.
func TestRemoteErrorTextEscaped(t *testing.T) {
	const evil = "\x1b[31m\nfake line\u202e"
	body, err := json.Marshal(kpapi.ErrorBody{Resources: []kpapi.ErrorResource{{ErrorMsg: evil,
		Reasons: []kpapi.ErrorReason{{Code: "BAD\x1b[0m_ERR", Message: evil, Status: 400}}}}})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/identity/token" {
			if r.PostFormValue("apikey") == "evil-status" {
				// A reason phrase of the server's choosing, which net/http passes on.
				conn, buf, err := w.(http.Hijacker).Hijack()
				if err != nil {
					return
				}
				defer conn.Close()
				buf.WriteString("HTTP/1.1 403 \x1b[31mForbidden\x1b[0m\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				buf.Flush()
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	const inst = "11111111-1111-4111-8111-111111111111"
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: "k"})
	require.NoError(t, err)
	evilStatus, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: "evil-status", Timeout: 5 * time.Second})
	require.NoError(t, err)
	for name, call := range map[string]func() error{
		"wrap":   func() error { _, err := r.Wrap(t.Context(), "k1", []byte("0123456789abcdef"), nil); return err },
		"rewrap": func() error { _, err := r.Rewrap(t.Context(), "k1", []byte("ct"), nil); return err },
		"token status line": func() error {
			_, err := evilStatus.Rewrap(t.Context(), "k1", []byte("ct"), nil)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := call()
			require.Error(t, err)
			assert.ErrorIs(t, err, volume.ErrKeyRefused)
			text := err.Error()
			assert.False(t, strings.ContainsFunc(text, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\u202e' }), "%q", text)
			if name != "token status line" {
				assert.Contains(t, text, `\x1b[31m\nfake line\u202e`)
				assert.Contains(t, text, `BAD\x1b[0m_ERR`)
			}
			var re *kpapi.ResponseError
			if errors.As(err, &re) {
				assert.NotContains(t, re.Message, "\x1b")
			}
		})
	}
}

// TestClientErrorEscapes: an error of a key management call through Remote.Client, mapped by
// kms.ClientError as the CLI does, keeps the crk sentinel and refusal mark and prints the
// server's text escaped, while the official client's own error carries it as sent.
func TestClientErrorEscapes(t *testing.T) {
	const evil = "\x1b[31m\nfake line"
	body, err := json.Marshal(kpapi.ErrorBody{Resources: []kpapi.ErrorResource{{ErrorMsg: evil,
		Reasons: []kpapi.ErrorReason{{Code: "KEY_NOT_FOUND_ERR", Message: evil, Status: 404}}}}})
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "11111111-1111-4111-8111-111111111111", Token: "t"})
	require.NoError(t, err)
	_, raw := r.Client().GetKeyMetadata(t.Context(), "k1")
	require.Error(t, raw)
	require.Contains(t, raw.Error(), "\x1b", "the official client's text is the server's")

	for _, tc := range []struct {
		name    string
		in      error
		refused bool
		escaped bool
	}{
		{"error response", raw, true, true},
		{"other error", errors.New("dial tcp: connection refused"), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := kms.ClientError(tc.in)
			assert.Equal(t, tc.refused, errors.Is(got, volume.ErrKeyRefused))
			if tc.escaped {
				assert.ErrorIs(t, got, crk.ErrKeyNotFound)
				assert.NotContains(t, got.Error(), "\x1b")
				assert.NotContains(t, got.Error(), "\n")
				assert.Contains(t, got.Error(), `\x1b[31m\nfake line`)
			} else {
				assert.Equal(t, tc.in, got)
			}
		})
	}
}

// TestRemoteKeepsAnotherCallsToken: call A meets a 401 with the revoked token after call B
// met its own 401 and renewed the token. A must not drop B's fresh token: it makes its second
// attempt with it, and there is exactly one token exchange. Dropping the token whatever it
// is now would make a second exchange.
func TestRemoteKeepsAnotherCallsToken(t *testing.T) {
	ts := newTokenServer(t)
	k, err := ts.svc.CreateRootKey(t.Context(), "shared")
	require.NoError(t, err)
	r, err := kms.NewRemote(kms.RemoteConfig{URL: ts.url, Instance: ts.instance, APIKey: ts.apiKey})
	require.NoError(t, err)
	w, err := r.Wrap(t.Context(), k.ID, bytes.Repeat([]byte{1}, 32), []string{"vol"})
	require.NoError(t, err)
	ts.revokeIssued()

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ts.mu.Lock()
	ts.hold = func(req *http.Request) {
		if strings.HasSuffix(req.URL.Path, "/actions/rewrap") {
			once.Do(func() {
				close(held)
				<-release
			})
		}
	}
	ts.mu.Unlock()
	ts.counts()

	errA := make(chan error, 1)
	go func() {
		_, err := r.Rewrap(t.Context(), k.ID, w.Ciphertext, []string{"vol"})
		errA <- err
	}()
	<-held // A's request, with the revoked token, is at the server
	_, err = r.KeyCRN(t.Context(), k.ID)
	require.NoError(t, err, "call B renews the token")
	close(release) // A's request is answered 401 now
	require.NoError(t, <-errA, "call A, once more with B's token")
	exchanges, calls := ts.counts()
	assert.Equal(t, 1, exchanges, "B's exchange only: A kept B's token")
	assert.Equal(t, 4, calls, "A and B each: a 401, then the call with the fresh token")
}

// TestRemoteTokenWaitHonoursContext: while a token exchange is blocked at the token endpoint,
// a second call that needs a token returns when its own ctx is done, with
// context.DeadlineExceeded, and does not start an exchange of its own; the first call gets
// the token once the endpoint answers.
func TestRemoteTokenWaitHonoursContext(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var mu sync.Mutex
	exchanges := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/identity/token" {
			mu.Lock()
			exchanges++
			mu.Unlock()
			select {
			case entered <- struct{}{}:
			default:
			}
			<-release
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"tok","token_type":"Bearer","expires_in":3600}`))
			return
		}
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ciphertext":"Y3Q=","keyVersion":{"id":"0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"},"rewrappedKeyVersion":{"id":"0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"}}`))
	}))
	defer srv.Close()
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "inst", APIKey: "k"})
	require.NoError(t, err)

	first := make(chan error, 1)
	go func() {
		_, err := r.Rewrap(context.Background(), "k1", []byte("ct"), nil)
		first <- err
	}()
	<-entered

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	second := make(chan error, 1)
	go func() {
		_, err := r.Rewrap(ctx, "k1", []byte("ct"), nil)
		second <- err
	}()
	select {
	case err := <-second:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(10 * time.Second):
		t.Fatal("the second call still waits for the first call's token exchange, past its own deadline")
	}
	releaseOnce.Do(func() { close(release) })
	require.NoError(t, <-first)
	_, err = r.Rewrap(t.Context(), "k1", []byte("ct"), nil)
	require.NoError(t, err, "the token is cached")
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 1, exchanges)
}

// TestClientErrorEscapesTokenEndpoint: the official client's own token source (of a client
// given an API key, as a caller may make one; Remote never gives it one) returns the token
// endpoint's error text raw (iam.Error); kms.ClientError keeps its status, marks a refusal
// and escapes the text.
func TestClientErrorEscapesTokenEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		refused bool
	}{
		{"400", http.StatusBadRequest, true},
		{"501", http.StatusNotImplemented, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(`{"errorCode":"BXNIM0415E\u001b]0;x\u0007","errorMessage":"bad key\u001b[31m\nforged"}`))
			}))
			defer srv.Close()
			c, err := kp.New(kp.ClientConfig{BaseURL: srv.URL, InstanceID: "inst", APIKey: "k", TokenURL: srv.URL + "/identity/token",
				Timeout: 2, Verbose: kp.VerboseNone}, kp.DefaultTransport())
			require.NoError(t, err)
			_, raw := c.GetKeys(t.Context(), 0, 0)
			require.Error(t, raw)
			require.Contains(t, raw.Error(), "\x1b", "the official client's text is the server's")
			got := kms.ClientError(raw)
			text := got.Error()
			assert.False(t, strings.ContainsFunc(text, func(r rune) bool { return r < 0x20 || r == 0x7f }), "%q", text)
			assert.Contains(t, text, `BXNIM0415E\x1b]0;x\x07`)
			assert.Contains(t, text, http.StatusText(tc.status))
			assert.Equal(t, tc.refused, errors.Is(got, volume.ErrKeyRefused))
		})
	}
}
