package kpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"crkvol/crk"
	"crkvol/internal/ident"
	"crkvol/internal/pgdb"
)

// TokenLifetime is how long a bearer token from the token endpoint is valid. It runs on the
// wall clock, not the service clock (crk.Options.Clock): clients cache tokens by wall-clock
// time (expires_in), so a service clock moved ahead by a test or simulation must not expire
// them.
const TokenLifetime = time.Hour

// MaxTokens is the most bearer tokens a Tenants holds at once. Expired tokens are dropped
// first; when the table is still full, a new token evicts the oldest one, whose holder gets
// 401 and fetches another (as keyprotect-go-client does after its cached token's lifetime).
// 10000 tokens of one hour allow a new token every 0.36 s, sustained, before any live one is
// evicted, in about 1.5 MB.
const MaxTokens = 10000

// MaxTokensPerKey is the most bearer tokens one API key holds at once: a new token beyond it
// evicts that key's own oldest, so one key exchanged in a loop cannot push the tokens of
// other keys (other tenants) out of the table.
const MaxTokensPerKey = 1000

// storeTimeout bounds one call into a tenant store on a database, whose methods take no
// context of their own.
const storeTimeout = RequestTimeout

// Tenants holds service instances, their API keys (only sha256 hashes are stored) and the
// bearer tokens issued for them (only sha256 hashes too), in one of two stores:
//
//   - a state directory ([OpenTenants]): the default instance is the CLI's embedded store,
//     dir/crk.db, those made by CreateInstance live in dir/instances/ID/crk.db; instances and
//     API-key hashes are kept in dir/tenants.json (mode 0600), tokens in memory;
//   - a PostgreSQL database ([OpenTenantsPostgres]): instances, API-key hashes and token
//     hashes are rows shared by every process on the database (every `kms serve` replica),
//     so a token issued by one replica is accepted by all.
//
// At most [MaxTokens] tokens are held, [MaxTokensPerKey] per API key. A token is valid for
// [TokenLifetime] and only while its API key exists: revoking the key, from this process or
// another one sharing the directory or database, ends its tokens at once. It is safe for
// concurrent use.
type Tenants struct {
	store tenantStore
	// open opens an instance's service; def tells the default instance.
	open func(id string, def bool) (*crk.Service, error)

	mu         sync.Mutex
	services   map[string]*crk.Service
	def        string
	maxTokens  int
	maxPerKey  int
	tokenClock crk.Clock // the wall clock; tests in this package set a manual one
	static     string
	closed     bool
	// db is the database of tenants on PostgreSQL, nil for a state directory's.
	db *pgdb.DB
	// closers close what the Tenants owns beyond its services (OpenTenantsDatabase's
	// databases), after them.
	closers []func()
}

// tenantStore keeps what a Tenants knows of instances, API keys and tokens. Every method is
// one atomic step of its store (one transaction of the database, one locked rewrite of
// tenants.json); errors of the credentials' own (unknown, expired, revoked, other instance)
// wrap [ErrUnauthorized].
type tenantStore interface {
	// ensureDefault returns the default instance's id; when there is none yet it records
	// the one mk returns, unless another process recorded one first, whose id it returns.
	ensureDefault(ctx context.Context, mk func() (string, error)) (string, error)
	// createInstance records a new instance.
	createInstance(ctx context.Context, in instanceEntry) error
	// known reports whether id is a recorded instance (the default one included).
	known(ctx context.Context, id string) (bool, error)
	// instances returns the default instance, then the others, oldest first.
	instances(ctx context.Context) ([]InstanceInfo, error)
	// addAPIKey records an API key's hash for a recorded instance.
	addAPIKey(ctx context.Context, k apiKeyEntry) error
	// apiKeys returns the API keys, oldest first.
	apiKeys(ctx context.Context) ([]apiKeyEntry, error)
	// revokeAPIKeys deletes the API keys whose id (see keyID) is id, and their tokens, and
	// says how many keys it deleted.
	revokeAPIKeys(ctx context.Context, id string) (int, error)
	// issueToken records a token hash for the API key with hash keyHash, after dropping the
	// tokens expired at now and evicting the oldest ones beyond the limits, and returns the
	// key's instance.
	issueToken(ctx context.Context, keyHash string, tok tokenEntry, now time.Time, lim tokenLimits) (string, error)
	// authorize checks that the token with hash sum is unexpired at now, of instance and of
	// an API key that still exists.
	authorize(ctx context.Context, sum [sha256.Size]byte, instance string, now time.Time) error
	// expireTokens drops the tokens expired at now.
	expireTokens(ctx context.Context, now time.Time) error
	// tokenCount returns how many tokens are held.
	tokenCount(ctx context.Context) (int, error)
}

// tokenLimits are the most tokens held in all and per API key.
type tokenLimits struct{ total, perKey int }

// tokenEntry is one issued token, known by its hash.
type tokenEntry struct {
	sum      [sha256.Size]byte // of the token
	instance string
	keyHash  string // the hex sha256 of the API key it was issued for
	expires  time.Time
}

type instanceEntry struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

type apiKeyEntry struct {
	Hash     string    `json:"hash"`
	Instance string    `json:"instance"`
	Created  time.Time `json:"created"`
}

// ErrUnauthorized means a missing, unknown or expired credential, or one for another
// instance.
var ErrUnauthorized = errors.New("unauthorized")

// ErrAPIKeyNotFound means no API key has the id given.
var ErrAPIKeyNotFound = errors.New("api key not found")

// errUnknownInstance is the ErrUnauthorized of an instance that does not exist, which the API
// words differently.
var errUnknownInstance = errors.New("unknown instance")

// The refusals of a credential, the same from every store.
var (
	errTokenUnknown     = fmt.Errorf("%w: unknown or expired token", ErrUnauthorized)
	errTokenRevoked     = fmt.Errorf("%w: the token's API key was revoked", ErrUnauthorized)
	errAPIKeyUnknown    = fmt.Errorf("%w: unknown API key", ErrUnauthorized)
	errTenantsAreClosed = errors.New("kpapi: tenants are closed")
)

func errOtherInstance(instance string) error {
	return fmt.Errorf("%w: the token is not for instance %s", ErrUnauthorized, instance)
}

func errNoInstance(instance string) error {
	return fmt.Errorf("%w: %w %s", ErrUnauthorized, errUnknownInstance, instance)
}

// OpenTenants opens the state directory dir; opts configure every instance's crk service.
// Services are opened when first needed, so managing instances and API keys (which only
// touches tenants.json) works while a server holds the stores; only the very first call
// opens the default store to learn its instance id.
func OpenTenants(dir string, opts crk.Options) (*Tenants, error) {
	store, err := openFileStore(dir)
	if err != nil {
		return nil, err
	}
	t := newTenants(store, func(id string, def bool) (*crk.Service, error) {
		if def {
			return crk.Open(filepath.Join(dir, "crk.db"), opts)
		}
		o := opts
		o.Instance = id
		return crk.Open(store.instancePath(id), o)
	})
	def, err := store.ensureDefault(context.Background(), func() (string, error) {
		svc, err := crk.Open(filepath.Join(dir, "crk.db"), opts)
		if err != nil {
			return "", err
		}
		t.services[svc.Instance()] = svc
		return svc.Instance(), nil
	})
	if err != nil {
		t.Close()
		return nil, err
	}
	t.def = def
	return t, nil
}

func newTenants(store tenantStore, open func(id string, def bool) (*crk.Service, error)) *Tenants {
	return &Tenants{store: store, open: open, services: map[string]*crk.Service{},
		maxTokens: MaxTokens, maxPerKey: MaxTokensPerKey, tokenClock: crk.SystemClock{}}
}

// storeContext is the context of one call into the store.
func storeContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), storeTimeout)
}

// Default returns the default instance's id and service.
func (t *Tenants) Default() (string, *crk.Service) {
	svc, err := t.Service(t.def)
	if err != nil {
		return t.def, nil
	}
	return t.def, svc
}

// SetStaticToken makes tok valid for every instance (for tests).
func (t *Tenants) SetStaticToken(tok string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.static = tok
}

// Close closes every open service; the Tenants cannot be used afterwards. The database of
// [OpenTenantsPostgres] stays open: it belongs to the caller.
func (t *Tenants) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	var errs []error
	for _, s := range t.services {
		errs = append(errs, s.Close())
	}
	t.services = map[string]*crk.Service{}
	for _, c := range t.closers {
		c()
	}
	t.closers = nil
	return errors.Join(errs...)
}

// CreateInstance records a new, empty instance and returns its id; its store is made when
// first used.
func (t *Tenants) CreateInstance(name string) (string, error) {
	id, err := ident.NewUUID(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("kpapi: %w", err)
	}
	ctx, cancel := storeContext()
	defer cancel()
	if err := t.store.createInstance(ctx, instanceEntry{ID: id, Name: name, Created: time.Now().UTC()}); err != nil {
		return "", err
	}
	return id, nil
}

// Service returns the crk service of an instance, opening it on first use.
func (t *Tenants) Service(id string) (*crk.Service, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errTenantsAreClosed
	}
	if s, ok := t.services[id]; ok {
		return s, nil
	}
	ctx, cancel := storeContext()
	defer cancel()
	known, err := t.store.known(ctx, id)
	if err != nil {
		return nil, err
	}
	if !known {
		return nil, errNoInstance(id)
	}
	s, err := t.open(id, id == t.def)
	if err != nil {
		return nil, err
	}
	t.services[id] = s
	return s, nil
}

// CreateAPIKey makes an API key for an instance and returns it; only its hash is kept.
func (t *Tenants) CreateAPIKey(instance string) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	key := "crkvol-" + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(key))
	ctx, cancel := storeContext()
	defer cancel()
	err := t.store.addAPIKey(ctx, apiKeyEntry{Hash: hex.EncodeToString(sum[:]), Instance: instance, Created: time.Now().UTC()})
	if err != nil {
		return "", err
	}
	return key, nil
}

// now is the wall-clock time by which tokens expire.
func (t *Tenants) now() time.Time { return t.tokenClock.Now() }

// limits returns the token limits in force.
func (t *Tenants) limits() tokenLimits {
	t.mu.Lock()
	defer t.mu.Unlock()
	return tokenLimits{total: max(t.maxTokens, 1), perKey: max(t.maxPerKey, 1)}
}

// Exchange trades an API key for a bearer token valid for TokenLifetime.
func (t *Tenants) Exchange(apiKey string) (string, time.Duration, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", 0, err
	}
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(apiKey))
	now := t.now()
	ctx, cancel := storeContext()
	defer cancel()
	e := tokenEntry{sum: sha256.Sum256([]byte(tok)), expires: now.Add(TokenLifetime)}
	if _, err := t.store.issueToken(ctx, hex.EncodeToString(sum[:]), e, now, t.limits()); err != nil {
		return "", 0, err
	}
	return tok, TokenLifetime, nil
}

// ExpireTokens drops the tokens whose lifetime has passed. Exchange and Authorize do it too;
// a server calls it on a timer so that an idle table empties.
func (t *Tenants) ExpireTokens() error {
	ctx, cancel := storeContext()
	defer cancel()
	return t.store.expireTokens(ctx, t.now())
}

// TokenCount returns how many bearer tokens are held.
func (t *Tenants) TokenCount() (int, error) {
	ctx, cancel := storeContext()
	defer cancel()
	return t.store.tokenCount(ctx)
}

// Authorize checks a bearer token for an instance and returns the instance's service.
func (t *Tenants) Authorize(token, instance string) (*crk.Service, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no bearer token", ErrUnauthorized)
	}
	t.mu.Lock()
	static := t.static
	t.mu.Unlock()
	if static != "" && subtle.ConstantTimeCompare([]byte(token), []byte(static)) == 1 {
		return t.Service(instance)
	}
	ctx, cancel := storeContext()
	defer cancel()
	if err := t.store.authorize(ctx, sha256.Sum256([]byte(token)), instance, t.now()); err != nil {
		if errors.Is(err, ErrUnauthorized) {
			return nil, err
		}
		return nil, fmt.Errorf("kpapi: checking the token: %w", err)
	}
	return t.Service(instance)
}

// InstanceInfo describes an instance.
type InstanceInfo struct {
	ID   string
	Name string // "default" for the default instance
	// Created is when the instance was created; zero for the default instance of a state
	// directory, which is the directory's own store.
	Created time.Time
	// Default marks the default instance.
	Default bool
}

// ListInstances returns the default instance, then the others, oldest first.
func (t *Tenants) ListInstances() ([]InstanceInfo, error) {
	ctx, cancel := storeContext()
	defer cancel()
	return t.store.instances(ctx)
}

// APIKeyInfo describes an API key without the key itself.
type APIKeyInfo struct {
	// ID names the key for RevokeAPIKey: the first 16 hex digits of its sha256 hash, which
	// tells nothing about the key.
	ID       string
	Instance string
	Created  time.Time
}

// keyID is the id of the API key whose hex sha256 is hash.
func keyID(hash string) string { return hash[:min(16, len(hash))] }

// APIKeyID returns the id by which [Tenants.ListAPIKeys] shows an API key and
// [Tenants.RevokeAPIKey] takes it.
func APIKeyID(apiKey string) string {
	sum := sha256.Sum256([]byte(apiKey))
	return keyID(hex.EncodeToString(sum[:]))
}

// ListAPIKeys returns the API keys of every instance, oldest first.
func (t *Tenants) ListAPIKeys() ([]APIKeyInfo, error) {
	ctx, cancel := storeContext()
	defer cancel()
	keys, err := t.store.apiKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]APIKeyInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, APIKeyInfo{ID: keyID(k.Hash), Instance: k.Instance, Created: k.Created})
	}
	return out, nil
}

// RevokeAPIKey deletes the API key with this id (see [APIKeyInfo]); it can no longer be
// exchanged, and the tokens issued for it stop working at once, in this process and in any
// other serving the same directory or database. An id no key has gives [ErrAPIKeyNotFound].
func (t *Tenants) RevokeAPIKey(id string) error {
	n := 0
	if validKeyID(id) {
		ctx, cancel := storeContext()
		defer cancel()
		var err error
		if n, err = t.store.revokeAPIKeys(ctx, id); err != nil {
			return err
		}
	}
	switch {
	case n > 0:
		return nil
	case validKeyID(id):
		return fmt.Errorf("%w: %s", ErrAPIKeyNotFound, id)
	default:
		return fmt.Errorf("%w: an id is 16 hex digits (see kms apikey list)", ErrAPIKeyNotFound)
	}
}

// validKeyID reports whether s has the form of an API key id, so that an error may show it
// (a mistyped argument could be a key itself).
func validKeyID(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// RunDue carries out the due policy rotations and expiries of every instance.
func (t *Tenants) RunDue(ctx context.Context) (map[string]crk.RunDueResult, error) {
	all, err := t.store.instances(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]crk.RunDueResult{}
	var errs []error
	for _, in := range all {
		svc, err := t.Service(in.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res, err := svc.RunDue(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", in.ID, err))
		}
		out[in.ID] = res
	}
	return out, errors.Join(errs...)
}
