package kms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"crkvol/crk/kpapi"
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
}

// Remote is a volume.KeyService over the Key Protect API v2, through the official
// keyprotect-go-client. A remote service cannot call back on rotation, so OnRotate hooks
// never fire: after rotating a key, run volume.Manager.Sync for it (the CLI does).
//
// An error response maps back to the crk sentinel the service had ([kpapi.ParseError]), so
// errors.Is(err, crk.ErrKeySuspended) holds as it does with [Local]; every refusal
// ([kpapi.RefusedStatus]: a 4xx other than 408, 425 and 429) also matches
// volume.ErrKeyRefused, while network errors, transient statuses and 5xx do not.
// A success (2xx) answer to a wrap, unwrap or rewrap without its ciphertext or plaintext and
// key version (an empty body, `{}`) is an error matching volume.ErrIncompleteAnswer: a failure
// of the service, not a refusal, and never a result to store.
//
// The official client, which Wrap and KeyCRN go through, retries network errors and
// transient statuses ([kpapi.TransientStatus]: 408, 425, 429, 5xx but 501) and never a
// refusal; the other calls make one attempt and leave retrying to the caller. A request to
// the token endpoint is retried on transient statuses, as the official client's own token
// source does.
//
// With an API key, Remote exchanges it for a bearer token that it caches until shortly
// before it expires; when the service answers 401 to a call (the token was revoked, or the
// service rotated its tokens), Remote drops the token and makes the call once more with a
// fresh one. A second 401, or a 401 to a configured Token, which cannot be renewed, is the
// refusal.
type Remote struct {
	cfg    RemoteConfig
	client *kp.Client
	http   *http.Client
	// tokens talks to the token endpoint.
	tokens *http.Client

	mu      sync.Mutex
	token   string
	expires time.Time
}

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
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	kcfg := kp.ClientConfig{BaseURL: cfg.URL, InstanceID: cfg.Instance, TokenURL: cfg.TokenURL, Timeout: cfg.Timeout.Seconds(), Verbose: kp.VerboseNone}
	if cfg.Token != "" {
		kcfg.Authorization = "Bearer " + cfg.Token
	} else {
		kcfg.APIKey = cfg.APIKey
	}
	transport := kp.DefaultTransport()
	if t, ok := transport.(*http.Transport); ok {
		// The client's default closes every connection; a volume fleet rewraps over many
		// calls, so keep connections alive.
		t.DisableKeepAlives = false
		t.MaxIdleConnsPerHost = 16
	}
	// The official client retries 429 and 5xx itself; the transient statuses it does not
	// know (408, 425) are retried below it, with the same policy.
	c, err := kp.New(kcfg, &retrying{next: transport, retry: func(status int) bool {
		return kpapi.TransientStatus(status) && status != http.StatusTooManyRequests && status < 500
	}})
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	tokens := &http.Client{Timeout: cfg.Timeout, Transport: &retrying{next: http.DefaultTransport, retry: kpapi.TransientStatus}}
	return &Remote{cfg: cfg, client: c, http: &http.Client{Timeout: cfg.Timeout}, tokens: tokens}, nil
}

// Client returns the underlying Key Protect client, for key management calls. Those calls
// use the client's own token source, not Remote's token cache and its renewal on 401.
func (r *Remote) Client() *kp.Client { return r.client }

// Wrap implements volume.KeyService.
func (r *Remote) Wrap(ctx context.Context, keyID string, plaintext []byte, aad []string) (volume.Wrapped, error) {
	pt := []byte(base64.StdEncoding.EncodeToString(plaintext))
	var res *kp.KeyActionResponse
	err := r.authorized(ctx, func(auth string) (err error) {
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
	w := volume.Wrapped{Ciphertext: []byte(res.CipherText)}
	if res.KeyVersion != nil {
		w.VersionID = res.KeyVersion.ID
	}
	if w.VersionID == "" {
		if w.VersionID, err = r.latest(ctx, keyID); err != nil {
			return volume.Wrapped{}, err
		}
	}
	return w, nil
}

// Unwrap implements volume.KeyService with the API's unwrap action, whose response names the
// version that made the ciphertext and, when that is not the latest, carries the ciphertext
// rewrapped under the latest version with that version's id.
func (r *Remote) Unwrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (volume.Unwrapped, error) {
	body := map[string]any{"ciphertext": string(ciphertext)}
	if aad != nil {
		body["aad"] = aad
	}
	var res struct {
		Plaintext  string `json:"plaintext"`
		Ciphertext string `json:"ciphertext"`
		KeyVersion struct {
			ID string `json:"id"`
		} `json:"keyVersion"`
		RewrappedKeyVersion struct {
			ID string `json:"id"`
		} `json:"rewrappedKeyVersion"`
	}
	if err := r.call(ctx, http.MethodPost, "keys/"+url.PathEscape(keyID)+"/actions/unwrap", body, &res); err != nil {
		return volume.Unwrapped{}, fmt.Errorf("kms: unwrap: %w", err)
	}
	if res.Plaintext == "" || res.KeyVersion.ID == "" {
		return volume.Unwrapped{}, fmt.Errorf("kms: unwrap: %w: the answer has no plaintext or no key version", volume.ErrIncompleteAnswer)
	}
	pt, err := base64.StdEncoding.DecodeString(res.Plaintext)
	if err != nil {
		return volume.Unwrapped{}, fmt.Errorf("kms: unwrap: the service returned a plaintext that is not base64")
	}
	u := volume.Unwrapped{Plaintext: pt, VersionID: res.KeyVersion.ID}
	if res.Ciphertext != "" {
		if res.RewrappedKeyVersion.ID == "" {
			clear(pt)
			return volume.Unwrapped{}, fmt.Errorf("kms: unwrap: a rewrapped ciphertext without its key version")
		}
		u.Rewrapped = &volume.Wrapped{Ciphertext: []byte(res.Ciphertext), VersionID: res.RewrappedKeyVersion.ID}
	}
	return u, nil
}

// Rewrap implements volume.KeyService with the API's rewrap action.
func (r *Remote) Rewrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (volume.Wrapped, error) {
	body := map[string]any{"ciphertext": string(ciphertext)}
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
	return volume.Wrapped{Ciphertext: []byte(res.Ciphertext), VersionID: res.RewrappedKeyVersion.ID}, nil
}

// KeyCRN implements volume.KeyService.
func (r *Remote) KeyCRN(ctx context.Context, keyID string) (string, error) {
	k, err := r.keyMetadata(ctx, keyID)
	if err != nil {
		return "", fmt.Errorf("kms: key metadata: %w", clientError(err))
	}
	return k.CRN, nil
}

// keyMetadata reads a key's metadata through the official client.
func (r *Remote) keyMetadata(ctx context.Context, keyID string) (k *kp.Key, err error) {
	err = r.authorized(ctx, func(auth string) (err error) {
		return recovered(func() (err error) {
			k, err = r.client.GetKeyMetadata(kp.NewContextWithAuth(ctx, auth), keyID)
			return err
		})
	})
	return k, err
}

func (r *Remote) latest(ctx context.Context, keyID string) (string, error) {
	k, err := r.keyMetadata(ctx, keyID)
	if err != nil {
		return "", fmt.Errorf("kms: key metadata: %w", clientError(err))
	}
	if k.KeyVersion == nil {
		return "", fmt.Errorf("kms: key %s has no keyVersion", keyID)
	}
	return k.KeyVersion.ID, nil
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
func (r *Remote) authorized(ctx context.Context, call func(auth string) error) error {
	for attempt := 0; ; attempt++ {
		tok, err := r.bearer(ctx)
		if err != nil {
			return err
		}
		err = call("Bearer " + tok)
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
	return r.authorized(ctx, func(auth string) error { return r.send(ctx, auth, method, path, b, out) })
}

// send makes one API request with the Authorization header value auth.
func (r *Remote) send(ctx context.Context, auth, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.cfg.URL+"/api/v2/"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("bluemix-instance", r.cfg.Instance)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %w", method, path, responseError(resp.StatusCode, raw, nil))
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// bearer returns a token: the configured one, or one exchanged for the API key and cached
// until a minute before it expires.
func (r *Remote) bearer(ctx context.Context) (string, error) {
	if r.cfg.Token != "" {
		return r.cfg.Token, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.token != "" && time.Now().Before(r.expires) {
		return r.token, nil
	}
	form := url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {r.cfg.APIKey}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := r.tokens.Do(req)
	if err != nil {
		return "", fmt.Errorf("kms: token: %w", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&tok) != nil || tok.AccessToken == "" {
		// The status code and its standard text: the reason phrase is the server's text.
		err := fmt.Errorf("kms: token: the token endpoint refused the API key (%d %s)", resp.StatusCode, http.StatusText(resp.StatusCode))
		if kpapi.RefusedStatus(resp.StatusCode) {
			return "", &serviceError{err: err, refused: true}
		}
		return "", err
	}
	r.token, r.expires = tok.AccessToken, time.Now().Add(time.Duration(tok.ExpiresIn-60)*time.Second)
	return r.token, nil
}

func aadPtr(aad []string) *[]string {
	if aad == nil {
		return nil
	}
	return &aad
}

var _ volume.KeyService = (*Remote)(nil)
