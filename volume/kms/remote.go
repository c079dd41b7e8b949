package kms

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/ident"
	"crkvol/volume"
)

// RemoteConfig locates a Key Protect–compatible service: Key Protect, Hyper Protect Crypto
// Services, or `crkvol kms serve`.
type RemoteConfig struct {
	// URL is the service's base URL, such as https://us-south.kms.cloud.ibm.com.
	URL string
	// Instance is the service instance id (the bluemix-instance header).
	Instance string
	// APIKey is exchanged for bearer tokens at TokenURL; or give Token directly.
	APIKey string
	// TokenURL is the IAM token endpoint; default URL + "/identity/token".
	TokenURL string
	// Token is a bearer token used as is (without "Bearer ").
	Token string
	// Timeout bounds each request; default 30 s.
	Timeout time.Duration
	// RootCAs are the certificate authorities trusted for the service's TLS certificate (and
	// the token endpoint's); nil means the system's.
	RootCAs *x509.CertPool
	// CAFile names a PEM file of certificate authorities to trust, such as a private CA's
	// certificate: they are added to RootCAs, or replace the system's when RootCAs is nil.
	CAFile string
	// Insecure allows a URL or TokenURL of plain http to a host that is not loopback, which
	// NewRemote otherwise refuses ([ErrInsecureURL]): the API key, the bearer tokens and the
	// wrapped keys would cross the network in clear.
	Insecure bool
}

// Remote is a volume.KeyService over the Key Protect API v2, through the official
// keyprotect-go-client. A remote service cannot call back on rotation, so OnRotate hooks
// never fire: after rotating a key, run volume.Manager.Sync for it (the CLI does), or follow
// the service's lifecycle feed with [Remote.KeyEvents] (`crkvol kms serve` offers it).
//
// An error response maps back to the crk sentinel the service had ([kpapi.ParseError]), so
// errors.Is(err, crk.ErrKeySuspended) holds as it does with [Local]; every refusal
// ([kpapi.RefusedStatus]: a 4xx other than 408, 425 and 429) also matches
// volume.ErrKeyRefused, while network errors, transient statuses and 5xx do not.
// A success (2xx) answer to a wrap, unwrap or rewrap without its ciphertext or plaintext and
// key version (an empty body, `{}`), or whose key id or key version id is not a well-formed
// UUID, or whose key CRN is not a CRN, is an error matching volume.ErrIncompleteAnswer: a
// failure of the service, not a refusal, and never a result to store (nor text to print).
//
// # Retries
//
// The stateless calls and the reads go through the official client, which retries network
// errors and transient statuses ([kpapi.TransientStatus]: 408, 425, 429, 5xx but 501) and
// never a refusal: Wrap, KeyCRN, [Remote.KeyMetadata], [Remote.ListKeys] and
// [Remote.KeyVersions]. The waits between the attempts of one request stay well inside
// RemoteConfig.Timeout (a Retry-After beyond them hands the status to the official client,
// which applies its own policy), and every call returns when its ctx is done.
//
// Every other call makes one attempt and leaves retrying to the caller: Unwrap, Rewrap and
// the registration calls, and the calls that change keys, [Remote.CreateKey] and
// [Remote.RotateKey], which must never be sent twice: a proxy answering 502 after the
// service acted would otherwise make several keys or several rotations. When one of these two
// meets a 5xx, or loses its connection after sending the request, the service may have acted:
// the error matches [ErrOutcomeUnknown].
//
// A request to the token endpoint is retried on transient statuses, as the official
// client's own token source does.
//
// A certificate error (the service's certificate signed by an authority not trusted, for
// another host, or expired) is never retried, by any of these: the call fails at once with
// an error matching [ErrCertificate]. Trust a private CA with RemoteConfig.CAFile or RootCAs.
//
// # Plain http
//
// NewRemote refuses a URL or TokenURL of plain http to a host that is not loopback (a
// loopback address or the name localhost, never resolved) with [ErrInsecureURL], unless
// RemoteConfig.Insecure: the API key, the bearer tokens and the wrapped keys would cross the
// network in clear.
//
// # Tokens
//
// With an API key, Remote exchanges it for a bearer token that it caches until shortly
// before it expires; when the service answers 401 to a call (the token was revoked, or the
// service rotated its tokens), Remote drops the token and makes the call once more with a
// fresh one. A second 401, or a 401 to a configured Token, which cannot be renewed, is the
// refusal. One exchange runs at a time, and calls that need a token meanwhile wait for it
// until their ctx is done. Every method of Remote, the key management ones included, uses
// these tokens: the official client's own token source serves only calls made through
// [Remote.Client].
//
// A Remote is safe for concurrent use.
type Remote struct {
	cfg    RemoteConfig
	client *kp.Client
	http   *http.Client
	// tokens talks to the token endpoint.
	tokens *http.Client

	// noRewrapBatch and noRegBatch remember that the service has no batch call (a Key
	// Protect without crkvol's extensions): RewrapBatch and UpdateRegistrations then make
	// single calls without asking again for batchRetryAfter (remotebatch.go).
	noRewrapBatch, noRegBatch batchAbsence

	mu      sync.Mutex
	token   string
	expires time.Time
	// exchange is the token exchange in flight, or nil.
	exchange *tokenExchange
}

// tokenExchange is one exchange of the API key for a token, which every call that needs a
// token while it runs shares; done is closed when token or err is set.
type tokenExchange struct {
	done  chan struct{}
	token string
	err   error
}

// ErrOutcomeUnknown means a request that changes the service's state (creating or rotating a
// key) failed in a way that does not tell whether the service acted on it: a 5xx answer
// (perhaps a proxy's, after the service acted) or a connection lost after the request was
// sent. The request is not retried; look at the service's state before sending it again.
var ErrOutcomeUnknown = errors.New("outcome unknown")

// NewRemote returns a key service for volumes at cfg.
func NewRemote(cfg RemoteConfig) (*Remote, error) {
	if cfg.URL == "" || cfg.Instance == "" {
		return nil, fmt.Errorf("kms: a remote key service needs a URL and an instance id")
	}
	if cfg.APIKey == "" && cfg.Token == "" {
		return nil, fmt.Errorf("kms: a remote key service needs an API key or a token")
	}
	cfg.URL = strings.TrimRight(cfg.URL, "/")
	if cfg.TokenURL == "" {
		cfg.TokenURL = cfg.URL + "/identity/token"
	}
	if err := checkURL("service URL", cfg.URL, cfg.Insecure); err != nil {
		return nil, err
	}
	if err := checkURL("token URL", cfg.TokenURL, cfg.Insecure); err != nil {
		return nil, err
	}
	tc, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	kcfg := kp.ClientConfig{BaseURL: cfg.URL, InstanceID: cfg.Instance, TokenURL: cfg.TokenURL, Timeout: cfg.Timeout.Seconds(), Verbose: kp.VerboseNone}
	if cfg.Token != "" {
		kcfg.Authorization = "Bearer " + cfg.Token
	}
	// Never the API key: the official client would exchange it through a client of its own,
	// with none of this one's checks (the CA file, refused redirects, capped answers).
	// Remote's calls carry a token from its own exchange (authorized); see Client.
	transport := kp.DefaultTransport()
	if t, ok := transport.(*http.Transport); ok {
		// The client's default closes every connection; a volume fleet rewraps over many
		// calls, so keep connections alive.
		t.DisableKeepAlives = false
		t.MaxIdleConnsPerHost = 16
		t.TLSClientConfig = tc.Clone()
	}
	// The official client retries 429 and 5xx itself; the transient statuses it does not
	// know (408, 425) are retried below it, with the same policy, inside the Timeout. A
	// certificate error ends the call at once (certGuard).
	c, err := kp.New(kcfg, &retrying{next: certGuard{next: transport}, budget: retryBudget(cfg.Timeout), retry: func(status int) bool {
		return kpapi.TransientStatus(status) && status != http.StatusTooManyRequests && status < 500
	}})
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	// Remote's own calls and the token exchange share a transport of their own.
	plain := http.DefaultTransport.(*http.Transport).Clone()
	plain.TLSClientConfig = tc
	tokens := &http.Client{Timeout: cfg.Timeout, Transport: &retrying{next: certGuard{next: plain}, retry: kpapi.TransientStatus, budget: retryBudget(cfg.Timeout)}}
	return &Remote{cfg: cfg, client: c, http: &http.Client{Timeout: cfg.Timeout, Transport: certGuard{next: plain}}, tokens: tokens}, nil
}

// Client returns the underlying Key Protect client, for calls Remote has no method for. With
// an API key (RemoteConfig.APIKey), make them inside [Remote.Authorized], with its token in
// their context (kp.NewContextWithAuth): the client is not given the API key, so that it
// never exchanges it through a client of its own, without Remote's checks; with a token
// (RemoteConfig.Token) it sends that one. Its errors carry the server's text as sent (map
// them with [ClientError] before printing them); the client retries every request on 5xx, which is unsafe for a request
// that changes state, and on a certificate error (after waits of seconds), and it panics on a
// success answer without resources, which Remote's methods never do: prefer Remote's methods.
func (r *Remote) Client() *kp.Client { return r.client }

// Wrap implements volume.KeyService. Like Unwrap and Rewrap it takes and returns binary
// ciphertexts, as volume.KeyService says: the API's ciphertext strings are their standard
// base64, encoded and decoded here, so a ciphertext made through Remote is one the in-process
// service ([Local]) accepts over the same store, and the reverse.
func (r *Remote) Wrap(ctx context.Context, keyID string, plaintext []byte, aad []string) (volume.Wrapped, error) {
	pt := []byte(base64.StdEncoding.EncodeToString(plaintext))
	var res *kp.KeyActionResponse
	err := r.authorized(ctx, func(ctx context.Context, auth string) (err error) {
		return recovered(func() (err error) {
			res, err = r.client.WrapV2(kp.NewContextWithAuth(ctx, auth), keyID, pt, aadPtr(aad))
			return err
		})
	})
	clear(pt)
	if err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: wrap: %w", clientError(err))
	}
	if res.CipherText == "" {
		return volume.Wrapped{}, fmt.Errorf("kms: wrap: %w: the answer has no ciphertext", volume.ErrIncompleteAnswer)
	}
	ct, err := decodeCiphertext(res.CipherText)
	if err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: wrap: %w", err)
	}
	w := volume.Wrapped{Ciphertext: ct}
	if res.KeyVersion != nil {
		w.VersionID = res.KeyVersion.ID
	}
	if w.VersionID == "" {
		if w.VersionID, err = r.latest(ctx, keyID); err != nil {
			return volume.Wrapped{}, err
		}
	}
	if err := checkID("key version", w.VersionID); err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: wrap: %w", err)
	}
	return w, nil
}

// Unwrap implements volume.KeyService with the API's unwrap action, whose response names the
// version that made the ciphertext and, when that is not the latest, carries the ciphertext
// rewrapped under the latest version with that version's id.
func (r *Remote) Unwrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (volume.Unwrapped, error) {
	body := map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(ciphertext)}
	if aad != nil {
		body["aad"] = aad
	}
	var res struct {
		Plaintext  secretBase64 `json:"plaintext"`
		Ciphertext string       `json:"ciphertext"`
		KeyVersion struct {
			ID string `json:"id"`
		} `json:"keyVersion"`
		RewrappedKeyVersion struct {
			ID string `json:"id"`
		} `json:"rewrappedKeyVersion"`
	}
	err := r.call(ctx, http.MethodPost, "keys/"+url.PathEscape(keyID)+"/actions/unwrap", body, &res)
	pt := []byte(res.Plaintext)
	fail := func(err error) (volume.Unwrapped, error) {
		clear(pt)
		return volume.Unwrapped{}, fmt.Errorf("kms: unwrap: %w", err)
	}
	if err != nil {
		return fail(err)
	}
	if len(pt) == 0 || res.KeyVersion.ID == "" {
		return fail(fmt.Errorf("%w: the answer has no plaintext or no key version", volume.ErrIncompleteAnswer))
	}
	if err := checkID("key version", res.KeyVersion.ID); err != nil {
		return fail(err)
	}
	u := volume.Unwrapped{Plaintext: pt, VersionID: res.KeyVersion.ID}
	if res.Ciphertext != "" {
		if res.RewrappedKeyVersion.ID == "" {
			return fail(errors.New("a rewrapped ciphertext without its key version"))
		}
		if err := checkID("rewrapped key version", res.RewrappedKeyVersion.ID); err != nil {
			return fail(err)
		}
		ct, err := decodeCiphertext(res.Ciphertext)
		if err != nil {
			return fail(err)
		}
		u.Rewrapped = &volume.Wrapped{Ciphertext: ct, VersionID: res.RewrappedKeyVersion.ID}
	}
	return u, nil
}

// Rewrap implements volume.KeyService with the API's rewrap action.
func (r *Remote) Rewrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (volume.Wrapped, error) {
	body := map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(ciphertext)}
	if aad != nil {
		body["aad"] = aad
	}
	var res struct {
		Ciphertext          string `json:"ciphertext"`
		RewrappedKeyVersion struct {
			ID string `json:"id"`
		} `json:"rewrappedKeyVersion"`
	}
	if err := r.call(ctx, http.MethodPost, "keys/"+url.PathEscape(keyID)+"/actions/rewrap", body, &res); err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w", err)
	}
	if res.Ciphertext == "" || res.RewrappedKeyVersion.ID == "" {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w: the answer has no ciphertext or no key version", volume.ErrIncompleteAnswer)
	}
	if err := checkID("rewrapped key version", res.RewrappedKeyVersion.ID); err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w", err)
	}
	ct, err := decodeCiphertext(res.Ciphertext)
	if err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w", err)
	}
	return volume.Wrapped{Ciphertext: ct, VersionID: res.RewrappedKeyVersion.ID}, nil
}

// decodeCiphertext returns the binary ciphertext (what volume.KeyService carries) of the Key
// Protect ciphertext string s. The string must be standard base64 that encodes back to
// exactly s, so that the string a volume's token then holds is the one the service gave.
// Anything else is an answer crkvol cannot store: volume.ErrIncompleteAnswer.
func decodeCiphertext(s string) ([]byte, error) {
	ct, err := base64.StdEncoding.DecodeString(s)
	if err != nil || base64.StdEncoding.EncodeToString(ct) != s {
		return nil, fmt.Errorf("%w: the answer's ciphertext is not standard base64", volume.ErrIncompleteAnswer)
	}
	return ct, nil
}

// KeyCRN implements volume.KeyService. keyID must be the key's id: an alias (which the
// service would resolve) is refused with crk.ErrKeyNotFound, so that what a volume records
// names its key by id and cannot follow an alias moved to another key.
func (r *Remote) KeyCRN(ctx context.Context, keyID string) (string, error) {
	k, err := r.KeyMetadata(ctx, keyID)
	if err != nil {
		return "", err
	}
	if _, err := ident.ParseCRN(k.CRN); err != nil {
		return "", fmt.Errorf("kms: key metadata: %w: the key's CRN: %w", volume.ErrIncompleteAnswer, err)
	}
	if !strings.EqualFold(k.ID, keyID) {
		return "", fmt.Errorf("kms: key metadata: %w: %q is not a key id but names key %s: give the id", crk.ErrKeyNotFound, keyID, k.ID)
	}
	return k.CRN, nil
}

// KeyMetadata returns a key's metadata. A key whose id or key version id is not a
// well-formed UUID is an error matching volume.ErrIncompleteAnswer.
func (r *Remote) KeyMetadata(ctx context.Context, keyID string) (*kp.Key, error) {
	var k *kp.Key
	err := r.authorized(ctx, func(ctx context.Context, auth string) (err error) {
		return recovered(func() (err error) {
			k, err = r.client.GetKeyMetadata(kp.NewContextWithAuth(ctx, auth), keyID)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("kms: key metadata: %w", clientError(err))
	}
	if err := checkID("key id", k.ID); err != nil {
		return nil, fmt.Errorf("kms: key metadata: %w", err)
	}
	if k.KeyVersion != nil {
		if err := checkID("key version", k.KeyVersion.ID); err != nil {
			return nil, fmt.Errorf("kms: key metadata: %w", err)
		}
	}
	return k, nil
}

// KeyState implements volume.KeyService with the key's metadata.
func (r *Remote) KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	k, err := r.KeyMetadata(ctx, keyID)
	if err != nil {
		return volume.KeyStatus{}, err
	}
	if k.KeyVersion == nil {
		return volume.KeyStatus{}, fmt.Errorf("kms: key metadata: %w: the key has no keyVersion", volume.ErrIncompleteAnswer)
	}
	return volume.KeyStatus{State: crk.State(k.State).String(), LatestVersion: k.KeyVersion.ID}, nil
}

// latest returns the id of a key's latest version.
func (r *Remote) latest(ctx context.Context, keyID string) (string, error) {
	k, err := r.KeyMetadata(ctx, keyID)
	if err != nil {
		return "", err
	}
	if k.KeyVersion == nil {
		return "", fmt.Errorf("kms: key metadata: %w: the key has no keyVersion", volume.ErrIncompleteAnswer)
	}
	return k.KeyVersion.ID, nil
}

// checkID refuses an id from the service that is not a well-formed UUID (Key Protect's key and
// version ids are): such an answer is never stored nor printed. what names the id.
func checkID(what, id string) error {
	if _, err := ident.ParseUUID(id); err != nil {
		return fmt.Errorf("%w: the %s is malformed: %w", volume.ErrIncompleteAnswer, what, err)
	}
	return nil
}

// ListKeys lists the instance's keys (the first page of the service's default size). The
// key names and other text in the answer are the service's, unchecked: escape them
// ([kpapi.Printable]) before printing them.
func (r *Remote) ListKeys(ctx context.Context) (*kp.Keys, error) {
	var keys *kp.Keys
	err := r.authorized(ctx, func(ctx context.Context, auth string) error {
		return recovered(func() (err error) {
			keys, err = r.client.GetKeys(kp.NewContextWithAuth(ctx, auth), 0, 0)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("kms: list keys: %w", clientError(err))
	}
	return keys, nil
}

// KeyVersions lists a key's versions. The ids in the answer are the service's, unchecked:
// escape them ([kpapi.Printable]) before printing them.
func (r *Remote) KeyVersions(ctx context.Context, keyID string) (*kp.KeyVersions, error) {
	var vs *kp.KeyVersions
	err := r.authorized(ctx, func(ctx context.Context, auth string) error {
		return recovered(func() (err error) {
			vs, err = r.client.ListKeyVersions(kp.NewContextWithAuth(ctx, auth), keyID, nil)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("kms: key versions: %w", clientError(err))
	}
	return vs, nil
}

// KeyOptions describes a key for [Remote.CreateKey].
type KeyOptions struct {
	// Name is the key's name.
	Name string
	// Description is the key's description, or "".
	Description string
	// Standard makes an extractable standard key instead of a root key.
	Standard bool
	// Material is the key material to import, or nil for the service to generate it.
	// CreateKey clears its base64 copies after sending; Material is the caller's.
	Material []byte
}

// CreateKey creates a key with one request, never retried but once with a fresh token after
// a 401; see [Remote] for why, and [ErrOutcomeUnknown] for a failure that may have created
// the key.
func (r *Remote) CreateKey(ctx context.Context, opts KeyOptions) (*kp.Key, error) {
	type resource struct {
		Type        string          `json:"type"`
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		Extractable bool            `json:"extractable"`
		Payload     json.RawMessage `json:"payload,omitempty"`
	}
	res := resource{Type: kpapi.TypeKey, Name: opts.Name, Description: opts.Description, Extractable: opts.Standard}
	if opts.Material != nil {
		res.Payload = base64JSON(opts.Material)
		defer clear(res.Payload)
	}
	body, err := json.Marshal(map[string]any{
		"metadata":  map[string]any{"collectionType": kpapi.TypeKey, "collectionTotal": 1},
		"resources": []resource{res},
	})
	if err != nil {
		return nil, fmt.Errorf("kms: create key: %w", err)
	}
	defer clear(body)
	var out kp.Keys
	if err := r.callOnce(ctx, "created the key", http.MethodPost, "keys", body, &out); err != nil {
		return nil, fmt.Errorf("kms: create key: %w", err)
	}
	if len(out.Keys) != 1 {
		return nil, fmt.Errorf("kms: create key: %w: the service created the key but its answer does not show it", volume.ErrIncompleteAnswer)
	}
	return &out.Keys[0], nil
}

// RotateKey rotates a root key with one request, never retried but once with a fresh token
// after a 401; see [Remote] for why, and [ErrOutcomeUnknown] for a failure that may have
// rotated the key. material is new key material for an imported key, or nil.
func (r *Remote) RotateKey(ctx context.Context, keyID string, material []byte) error {
	body := []byte("{}")
	if material != nil {
		p := base64JSON(material)
		defer clear(p)
		var err error
		if body, err = json.Marshal(map[string]json.RawMessage{"payload": p}); err != nil {
			return fmt.Errorf("kms: rotate key: %w", err)
		}
		defer clear(body)
	}
	if err := r.callOnce(ctx, "rotated the key", http.MethodPost, "keys/"+url.PathEscape(keyID)+"/actions/rotate", body, nil); err != nil {
		return fmt.Errorf("kms: rotate key: %w", err)
	}
	return nil
}

// SyncKey asks the service to renotify the resources registered with a root key that are
// still on an older version (Key Protect's "sync associated resources"). Key Protect refuses
// it within an hour of the previous sync: the error then matches crk.ErrTooEarly. The
// renotification reaches the services subscribed to the key's events, not this machine's
// volumes: volume.Manager.Sync rewraps those.
func (r *Remote) SyncKey(ctx context.Context, keyID string) error {
	if err := r.call(ctx, http.MethodPost, "keys/"+url.PathEscape(keyID)+"/actions/sync", nil, nil); err != nil {
		return fmt.Errorf("kms: sync key: %w", err)
	}
	return nil
}

// base64JSON returns b in standard base64 as a JSON string.
func base64JSON(b []byte) json.RawMessage {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(b))+2)
	out[0], out[len(out)-1] = '"', '"'
	base64.StdEncoding.Encode(out[1:len(out)-1], b)
	return out
}

// callOnce makes a request that changes the service's state, as call does (one attempt, once
// more with a fresh token after a 401), and marks a failure after which the service may have
// acted with ErrOutcomeUnknown: a 5xx, or an error once the request was written. acted says
// what the service may have done, as in "may have created the key".
func (r *Remote) callOnce(ctx context.Context, acted, method, path string, body []byte, out any) error {
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{
		// A request that could not be written whole was not acted on.
		WroteRequest: func(info httptrace.WroteRequestInfo) { wrote.Store(info.Err == nil) },
	}
	err := r.authorized(ctx, func(ctx context.Context, auth string) error {
		wrote.Store(false)
		return r.send(httptrace.WithClientTrace(ctx, trace), auth, method, path, body, out)
	})
	if err == nil {
		return nil
	}
	var re *kpapi.ResponseError
	switch {
	case errors.As(err, &re):
		if re.Status < 500 {
			return err
		}
	case !wrote.Load():
		return err
	}
	return fmt.Errorf("%w: the service may have %s (%w)", ErrOutcomeUnknown, acted, err)
}

// Register implements volume.KeyService (Key Protect's service-to-service registration API).
func (r *Remote) Register(ctx context.Context, keyID, crn, versionID string, prevent bool) error {
	body := map[string]any{"description": "crkvol volume", "preventKeyDeletion": prevent, "keyVersion": map[string]string{"id": versionID}}
	if err := r.call(ctx, http.MethodPost, regPath(keyID, crn), body, nil); err != nil {
		return fmt.Errorf("kms: register: %w", err)
	}
	return nil
}

// UpdateRegistration implements volume.KeyService.
func (r *Remote) UpdateRegistration(ctx context.Context, keyID, crn, versionID string) error {
	if err := r.call(ctx, http.MethodPatch, regPath(keyID, crn), map[string]any{"keyVersion": map[string]string{"id": versionID}}, nil); err != nil {
		return fmt.Errorf("kms: update registration: %w", err)
	}
	return nil
}

// DeleteRegistration implements volume.KeyService.
func (r *Remote) DeleteRegistration(ctx context.Context, keyID, crn string) error {
	if err := r.call(ctx, http.MethodDelete, regPath(keyID, crn), nil, nil); err != nil {
		return fmt.Errorf("kms: delete registration: %w", err)
	}
	return nil
}

func regPath(keyID, crn string) string {
	return "keys/" + url.PathEscape(keyID) + "/registrations/" + url.PathEscape(crn)
}

// Registrations implements volume.KeyService.
func (r *Remote) Registrations(ctx context.Context, keyID string) ([]volume.Registration, string, error) {
	latest, err := r.latest(ctx, keyID)
	if err != nil {
		return nil, "", err
	}
	var res struct {
		Resources []struct {
			ResourceCRN string `json:"resourceCrn"`
			KeyVersion  struct {
				ID string `json:"id"`
			} `json:"keyVersion"`
		} `json:"resources"`
	}
	if err := r.call(ctx, http.MethodGet, "keys/"+url.PathEscape(keyID)+"/registrations", nil, &res); err != nil {
		return nil, "", fmt.Errorf("kms: registrations: %w", err)
	}
	out := make([]volume.Registration, 0, len(res.Resources))
	for _, x := range res.Resources {
		out = append(out, volume.Registration{CRN: x.ResourceCRN, VersionID: x.KeyVersion.ID})
	}
	return out, latest, nil
}

// OnRotate implements volume.KeyService; a remote service never calls back.
func (r *Remote) OnRotate(func(context.Context, volume.RotationNotice) error) func() {
	return func() {}
}

// authorized runs an API call with the Authorization header value auth ("Bearer " and a
// token), which the official client takes from its context ([kp.NewContextWithAuth]); see
// [Remote] for what a 401 does.
//
// call gets a context derived from ctx to make its requests with: a certificate error or a
// redirect ends it (see certGuard), and authorized then returns that error, which matches
// ErrCertificate or ErrRedirect.
func (r *Remote) authorized(ctx context.Context, call func(ctx context.Context, auth string) error) error {
	ctx, stop := withStop(ctx)
	defer stop(nil)
	for attempt := 0; ; attempt++ {
		tok, err := r.bearer(ctx)
		if cerr := stopped(ctx); cerr != nil {
			return cerr
		}
		if err != nil {
			return err
		}
		err = call(ctx, "Bearer "+tok)
		if cerr := stopped(ctx); cerr != nil {
			return cerr
		}
		if err == nil || r.cfg.Token != "" || attempt > 0 || !unauthorized(err) {
			return err
		}
		r.forget(tok)
	}
}

// unauthorized reports whether err is a 401 response, of the official client or of call.
func unauthorized(err error) bool {
	var kerr *kp.Error
	if errors.As(err, &kerr) {
		return kerr.StatusCode == http.StatusUnauthorized
	}
	var re *kpapi.ResponseError
	return errors.As(err, &re) && re.Status == http.StatusUnauthorized
}

// forget drops the cached token tok, unless another call has already replaced it.
func (r *Remote) forget(tok string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.token == tok {
		r.token, r.expires = "", time.Time{}
	}
}

// call makes an API request the client has no method for.
func (r *Remote) call(ctx context.Context, method, path string, body, out any) error {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return err
		}
	}
	return r.authorized(ctx, func(ctx context.Context, auth string) error { return r.send(ctx, auth, method, path, b, out) })
}

// send makes one API request with the Authorization header value auth. path is under
// /api/v2/, or absolute when it starts with a slash.
func (r *Remote) send(ctx context.Context, auth, method, path string, body []byte, out any) error {
	return r.sendWith(ctx, r.http, auth, method, path, body, out)
}

// sendWith is send with the HTTP client hc.
func (r *Remote) sendWith(ctx context.Context, hc *http.Client, auth, method, path string, body []byte, out any) error {
	return r.sendLimit(ctx, hc, auth, method, path, body, out, maxAnswer, nil)
}

// maxAnswer caps the body of an answer (a batch call's has its own cap).
const maxAnswer = 1 << 20

// sendLimit is sendWith reading at most limit bytes of the answer; when header is not nil,
// it receives the answer's header.
func (r *Remote) sendLimit(ctx context.Context, hc *http.Client, auth, method, path string, body []byte, out any, limit int, header *http.Header) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	u := r.cfg.URL + "/api/v2/" + path
	if strings.HasPrefix(path, "/") {
		u = r.cfg.URL + path
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("bluemix-instance", r.cfg.Instance)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if header != nil {
		*header = resp.Header
	}
	raw, err := readBody(resp.Body, limit)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %w", method, path, responseError(resp.StatusCode, raw, nil))
	}
	// A success answer may carry a plaintext (unwrap): clear it once decoded.
	defer clear(raw)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: %w: the answer is not the JSON expected: %w", method, path, volume.ErrIncompleteAnswer, err)
		}
	}
	return nil
}

// readBody reads at most limit bytes of r, clearing every buffer it outgrows: the body of a
// success answer may hold a plaintext.
func readBody(r io.Reader, limit int) ([]byte, error) {
	buf := make([]byte, 0, 4<<10)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				return buf, nil
			}
			bigger := make([]byte, len(buf), min(2*cap(buf), limit))
			copy(bigger, buf)
			clear(buf)
			buf = bigger
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			clear(buf)
			return nil, err
		}
	}
}

// bearer returns a token: the configured one, or one exchanged for the API key and cached
// until a minute before it expires. A call that needs a new token while an exchange is in
// flight waits for that exchange's token, or until ctx is done.
func (r *Remote) bearer(ctx context.Context) (string, error) {
	if r.cfg.Token != "" {
		return r.cfg.Token, nil
	}
	r.mu.Lock()
	if r.token != "" && time.Now().Before(r.expires) {
		tok := r.token
		r.mu.Unlock()
		return tok, nil
	}
	x := r.exchange
	if x == nil {
		x = &tokenExchange{done: make(chan struct{})}
		r.exchange = x
		// The exchange serves every call waiting for it, so the first caller's cancellation
		// does not end it; the token client's Timeout bounds it. Nor does a certificate
		// error of the exchange end that caller's call (certGuard): it reaches every waiter.
		go r.exchangeToken(context.WithValue(context.WithoutCancel(ctx), stopKey{}, nil), x)
	}
	r.mu.Unlock()
	select {
	case <-x.done:
		return x.token, x.err
	case <-ctx.Done():
		return "", fmt.Errorf("kms: token: %w", context.Cause(ctx))
	}
}

// exchangeToken runs the exchange x, caches its token and ends it.
func (r *Remote) exchangeToken(ctx context.Context, x *tokenExchange) {
	tok, expires, err := r.requestToken(ctx)
	r.mu.Lock()
	if err == nil {
		r.token, r.expires = tok, expires
	}
	r.exchange = nil
	r.mu.Unlock()
	x.token, x.err = tok, err
	close(x.done)
}

// requestToken exchanges the API key for a token at the token endpoint.
func (r *Remote) requestToken(ctx context.Context) (string, time.Time, error) {
	form := url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {r.cfg.APIKey}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("kms: token: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := r.tokens.Do(req)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("kms: token: %w", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		// kms serve's store out of reach (after the retries above): no verdict on the key.
		return "", time.Time{}, fmt.Errorf("kms: token: the token endpoint is unavailable (%d %s): %w",
			resp.StatusCode, http.StatusText(resp.StatusCode), crk.ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tok) != nil || tok.AccessToken == "" {
		// The status code and its standard text: the reason phrase is the server's text.
		err := fmt.Errorf("kms: token: the token endpoint refused the API key (%d %s)", resp.StatusCode, http.StatusText(resp.StatusCode))
		if kpapi.RefusedStatus(resp.StatusCode) {
			return "", time.Time{}, &serviceError{err: err, refused: true, credentials: true}
		}
		return "", time.Time{}, err
	}
	return tok.AccessToken, time.Now().Add(time.Duration(tok.ExpiresIn-60) * time.Second), nil
}

// secretBase64 is a base64 JSON string decoded without a copy that could not be cleared: the
// decoded bytes, cleared again when the text is not base64. Only the escape "\/" is
// accepted inside the string (base64 needs no other).
type secretBase64 []byte

// UnmarshalJSON implements json.Unmarshaler.
func (s *secretBase64) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	if len(data) < 2 || data[0] != '"' || data[len(data)-1] != '"' {
		return errors.New("a secret that is not a JSON string")
	}
	text := make([]byte, 0, len(data)-2)
	defer func() { clear(text) }()
	for i := 1; i < len(data)-1; i++ {
		c := data[i]
		if c == '\\' {
			if i+1 >= len(data)-1 || data[i+1] != '/' {
				return errors.New("a secret that is not base64")
			}
			i++
			c = '/'
		}
		text = append(text, c)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(out, text)
	if err != nil {
		clear(out)
		return errors.New("a secret that is not base64")
	}
	*s = out[:n]
	return nil
}

func aadPtr(aad []string) *[]string {
	if aad == nil {
		return nil
	}
	return &aad
}

var _ volume.KeyService = (*Remote)(nil)
