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
	"slices"
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

// SessionLifetime is how long a console session lasts from sign-in, however active it is
// ([Tenants.SetSessionLifetime] changes it). Like [TokenLifetime] it runs on the wall clock.
const SessionLifetime = 8 * time.Hour

// MaxSessions is the most console sessions a Tenants holds at once; a new session beyond it
// evicts the oldest one, whose holder signs in again.
const MaxSessions = 10000

// MaxSessionsPerKey is the most console sessions one API key holds at once: signing in
// beyond it ends that key's own oldest session, never another key's.
const MaxSessionsPerKey = 100

// storeTimeout bounds one call into a tenant store on a database, whose methods take no
// context of their own.
const storeTimeout = RequestTimeout

// Tenants holds service instances, their API keys (only sha256 hashes are stored), each of
// one or more instances, and the bearer tokens and console sessions issued for them (only
// sha256 hashes too), in one of two stores:
//
//   - a state directory ([OpenTenants]): the default instance is the CLI's embedded store,
//     dir/crk.db, those made by CreateInstance live in dir/instances/ID/crk.db; instances and
//     API-key hashes are kept in dir/tenants.json (mode 0600), tokens and sessions in memory;
//   - a PostgreSQL database ([OpenTenantsPostgres]): instances, API-key hashes, token hashes
//     and session hashes are rows shared by every process on the database (every `kms
//     serve` replica), so a token or session issued by one replica is accepted by all.
//
// At most [MaxTokens] tokens are held, [MaxTokensPerKey] per API key. A token is valid for
// [TokenLifetime] and only while its API key exists: revoking the key, from this process or
// another one sharing the directory or database, ends its tokens at once. A token of a key
// is accepted for each of the key's instances, and no other.
//
// # Sessions
//
// A console session ([Tenants.StartSession]) is a second kind of credential for the same
// API keys: a random id given to a browser in a cookie, valid until [SessionLifetime] after
// sign-in (absolute, not renewed by use), until it is ended ([Tenants.EndSession]), or until
// its API key is revoked, whichever comes first. Sessions and bearer tokens are kept apart:
// [Tenants.Authorize] never accepts a session id and [Tenants.CheckSession] never accepts a
// bearer token, nor the static token of [Tenants.SetStaticToken]. At most [MaxSessions]
// sessions are held, [MaxSessionsPerKey] per API key, the oldest evicted first.
//
// It is safe for concurrent use.
type Tenants struct {
	store tenantStore
	// open opens an instance's service; def tells the default instance.
	open func(id string, def bool) (*crk.Service, error)

	mu        sync.Mutex
	services  map[string]*crk.Service
	def       string
	maxTokens int
	maxPerKey int
	// maxSessions and maxSessionsPerKey bound the sessions as maxTokens and maxPerKey
	// bound the tokens; sessionLife is the lifetime of a new session.
	maxSessions       int
	maxSessionsPerKey int
	sessionLife       time.Duration
	tokenClock        crk.Clock // the wall clock of tokens and sessions; tests in this package set a manual one
	static            string
	closed            bool
	// db is the database of tenants on PostgreSQL, nil for a state directory's.
	db *pgdb.DB
	// closers close what the Tenants owns beyond its services (OpenTenantsDatabase's
	// databases), after them.
	closers []func()
}

// tenantStore keeps what a Tenants knows of instances, API keys, tokens and sessions. Every
// method is one atomic step of its store (one transaction of the database, one locked
// rewrite of tenants.json); errors of the credentials' own (unknown, expired, revoked, other
// instance) wrap [ErrUnauthorized].
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
	// addAPIKey records an API key's hash for its recorded instances (k.Instances, at least
	// one, without duplicates).
	addAPIKey(ctx context.Context, k apiKeyEntry) error
	// apiKeys returns the API keys, oldest first, each with its Instances in the order
	// they were given.
	apiKeys(ctx context.Context) ([]apiKeyEntry, error)
	// revokeAPIKeys deletes the API keys whose id (see keyID) is id, and their tokens and
	// sessions, and says how many keys it deleted.
	revokeAPIKeys(ctx context.Context, id string) (int, error)
	// issueToken records a token hash for the API key with hash keyHash, after dropping the
	// tokens expired at now and evicting the oldest ones beyond the limits.
	issueToken(ctx context.Context, keyHash string, tok credEntry, now time.Time, lim tokenLimits) error
	// authorize checks that the token with hash sum is unexpired at now and of an API key
	// that still exists and has instance among its instances, and returns the key's hash.
	// Unlike the other methods, it bounds its own I/O (storeTimeout): it runs on every API
	// request, and a store that answers from memory needs no timer.
	authorize(ctx context.Context, sum [sha256.Size]byte, instance string, now time.Time) (keyHash string, err error)
	// startSession records a session hash for the API key with hash keyHash, after
	// dropping the sessions expired at now and evicting the oldest ones beyond the limits,
	// and returns the key's instances.
	startSession(ctx context.Context, keyHash string, s credEntry, now time.Time, lim tokenLimits) ([]string, error)
	// checkSession returns the session with hash sum, unexpired at now, of an API key that
	// still exists: its key's hash, the key's instances and the session's expiry.
	checkSession(ctx context.Context, sum [sha256.Size]byte, now time.Time) (keyHash string, instances []string, expires time.Time, err error)
	// endSession deletes the session with hash sum, if there is one.
	endSession(ctx context.Context, sum [sha256.Size]byte) error
	// expire drops the tokens and sessions expired at now.
	expire(ctx context.Context, now time.Time) error
	// tokenCount returns how many tokens are held.
	tokenCount(ctx context.Context) (int, error)
	// sessionCount returns how many sessions are held.
	sessionCount(ctx context.Context) (int, error)
}

// tokenLimits are the most tokens (or sessions) held in all and per API key.
type tokenLimits struct{ total, perKey int }

// credEntry is one issued token or session, known by its hash.
type credEntry struct {
	sum     [sha256.Size]byte // of the token or session id
	expires time.Time
	created time.Time // when issued, on the same clock as expires
}

type instanceEntry struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

// apiKeyEntry is an API key as tenants.json keeps it. Instance is the first of Instances,
// the one field of a key that files written before keys had several instances hold:
// instanceList reads both.
type apiKeyEntry struct {
	Hash      string    `json:"hash"`
	Instance  string    `json:"instance"`
	Instances []string  `json:"instances,omitempty"`
	Created   time.Time `json:"created"`
}

// instanceList returns the instances of the key, Instance alone for an entry without
// Instances.
func (k apiKeyEntry) instanceList() []string {
	if len(k.Instances) == 0 {
		return []string{k.Instance}
	}
	return k.Instances
}

// ErrUnauthorized means a missing, unknown or expired credential, or one for another
// instance.
var ErrUnauthorized = errors.New("unauthorized")

// ErrAPIKeyNotFound means no API key has the id given.
var ErrAPIKeyNotFound = errors.New("api key not found")

// ErrUnknownInstance means an instance id no instance has: given to [Tenants.CreateAPIKey],
// or asked for in a request, where it comes wrapped in [ErrUnauthorized] too (the API words
// it differently).
var ErrUnknownInstance = errors.New("unknown instance")

// The refusals of a credential, the same from every store.
var (
	errTokenUnknown     = fmt.Errorf("%w: unknown or expired token", ErrUnauthorized)
	errTokenRevoked     = fmt.Errorf("%w: the token's API key was revoked", ErrUnauthorized)
	errAPIKeyUnknown    = fmt.Errorf("%w: unknown API key", ErrUnauthorized)
	errSessionUnknown   = fmt.Errorf("%w: unknown, expired or ended session", ErrUnauthorized)
	errSessionRevoked   = fmt.Errorf("%w: the session's API key was revoked", ErrUnauthorized)
	errTenantsAreClosed = errors.New("kpapi: tenants are closed")
)

func errOtherInstance(instance string) error {
	return fmt.Errorf("%w: the token is not for instance %s", ErrUnauthorized, instance)
}

func errNoInstance(instance string) error {
	return fmt.Errorf("%w: %w %s", ErrUnauthorized, ErrUnknownInstance, instance)
}

// errKeyInstance is the error of an API key to be made for an instance that does not exist.
func errKeyInstance(instance string) error {
	return fmt.Errorf("%w %s", ErrUnknownInstance, instance)
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
		maxTokens: MaxTokens, maxPerKey: MaxTokensPerKey,
		maxSessions: MaxSessions, maxSessionsPerKey: MaxSessionsPerKey, sessionLife: SessionLifetime,
		tokenClock: crk.SystemClock{}}
}

// storeContext is the context of one call into the store.
func storeContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), storeTimeout)
}

// Default returns the default instance's id and service; the service is nil when it cannot
// be opened ([Tenants.DefaultService] says why).
func (t *Tenants) Default() (string, *crk.Service) {
	id, svc, err := t.DefaultService()
	if err != nil {
		return id, nil
	}
	return id, svc
}

// DefaultService returns the default instance's id and service, opening the service on
// first use, or the id and the error of opening it (such as bbolt's lock timeout when
// another process holds a state directory's key store): a server calls it at startup, so
// that a store it cannot open stops it there rather than fail every request.
func (t *Tenants) DefaultService() (string, *crk.Service, error) {
	svc, err := t.Service(t.def)
	if err != nil {
		return t.def, nil, fmt.Errorf("kpapi: opening the default instance %s: %w", t.def, err)
	}
	return t.def, svc, nil
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

// ErrBadInstances means [Tenants.CreateAPIKey] was given no instance, an empty one or one
// twice.
var ErrBadInstances = errors.New("bad instance list")

// CreateAPIKey makes an API key for one or more instances and returns it; only its hash is
// kept. A bearer token of the key is accepted for each of these instances, and no other. At
// least one instance is needed, each an existing one (an unknown one is refused with
// [ErrUnknownInstance], naming it) and none twice ([ErrBadInstances]).
func (t *Tenants) CreateAPIKey(instances ...string) (string, error) {
	if len(instances) == 0 {
		return "", fmt.Errorf("kpapi: creating an API key: %w: at least one instance is needed", ErrBadInstances)
	}
	seen := make(map[string]bool, len(instances))
	for _, in := range instances {
		if in == "" {
			return "", fmt.Errorf("kpapi: creating an API key: %w: an empty instance id", ErrBadInstances)
		}
		if seen[in] {
			return "", fmt.Errorf("kpapi: creating an API key: %w: instance %s is given twice", ErrBadInstances, in)
		}
		seen[in] = true
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	key := "crkvol-" + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(key))
	ctx, cancel := storeContext()
	defer cancel()
	err := t.store.addAPIKey(ctx, apiKeyEntry{Hash: hex.EncodeToString(sum[:]), Instance: instances[0],
		Instances: slices.Clone(instances), Created: time.Now().UTC()})
	if errors.Is(err, ErrUnknownInstance) {
		return "", fmt.Errorf("kpapi: creating an API key: %w", err)
	}
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

// sessionLimits returns the session limits in force.
func (t *Tenants) sessionLimits() tokenLimits {
	t.mu.Lock()
	defer t.mu.Unlock()
	return tokenLimits{total: max(t.maxSessions, 1), perKey: max(t.maxSessionsPerKey, 1)}
}

// randomCredential returns a new token or session id, 32 random bytes in base64url.
func randomCredential() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("kpapi: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Exchange trades an API key for a bearer token valid for TokenLifetime.
func (t *Tenants) Exchange(apiKey string) (string, time.Duration, error) {
	tok, err := randomCredential()
	if err != nil {
		return "", 0, err
	}
	sum := sha256.Sum256([]byte(apiKey))
	now := t.now()
	ctx, cancel := storeContext()
	defer cancel()
	e := credEntry{sum: sha256.Sum256([]byte(tok)), expires: now.Add(TokenLifetime), created: now}
	if err := t.store.issueToken(ctx, hex.EncodeToString(sum[:]), e, now, t.limits()); err != nil {
		return "", 0, err
	}
	return tok, TokenLifetime, nil
}

// ExpireTokens drops the tokens and the sessions whose lifetime has passed. Exchange,
// Authorize, StartSession and CheckSession do it too; a server calls it on a timer so that
// idle tables empty.
func (t *Tenants) ExpireTokens() error {
	ctx, cancel := storeContext()
	defer cancel()
	return t.store.expire(ctx, t.now())
}

// TokenCount returns how many bearer tokens are held.
func (t *Tenants) TokenCount() (int, error) {
	ctx, cancel := storeContext()
	defer cancel()
	return t.store.tokenCount(ctx)
}

// StaticTokenID is the caller id [Tenants.Authorize] gives for the static token of
// [Tenants.SetStaticToken], which belongs to no API key; API key ids are 16 hex digits, so
// it names no key.
const StaticTokenID = "static-token"

// Authorize checks a bearer token for an instance and returns the instance's service and
// who the token speaks for: the id of its API key (see [APIKeyID]), or [StaticTokenID] for
// the static token. The server audits the request's operations as done by "kpapi:" and
// this id.
func (t *Tenants) Authorize(token, instance string) (*crk.Service, string, error) {
	if token == "" {
		return nil, "", fmt.Errorf("%w: no bearer token", ErrUnauthorized)
	}
	t.mu.Lock()
	static := t.static
	t.mu.Unlock()
	if static != "" && subtle.ConstantTimeCompare([]byte(token), []byte(static)) == 1 {
		svc, err := t.Service(instance)
		if err != nil {
			return nil, "", err
		}
		return svc, StaticTokenID, nil
	}
	// The store bounds its own I/O (pgStore.authorize): a state directory's store answers
	// from memory and a stat, and needs no timer on every request.
	keyHash, err := t.store.authorize(context.Background(), credSum(token), instance, t.now())
	if err != nil {
		if errors.Is(err, ErrUnauthorized) {
			return nil, "", err
		}
		return nil, "", fmt.Errorf("kpapi: checking the token: %w", err)
	}
	svc, err := t.Service(instance)
	if err != nil {
		return nil, "", err
	}
	return svc, keyID(keyHash), nil
}

// Session is a console session: who signed in and until when.
type Session struct {
	// APIKeyID is the id of the API key signed in with (see [APIKeyInfo]).
	APIKeyID string
	// Instances are the key's instances in the order the key was created with (kms apikey
	// create --instance, repeated); the console opens on the first.
	Instances []string
	// Expires is when the session ends (wall clock), unless ended or revoked before.
	Expires time.Time
}

// SetSessionLifetime sets the lifetime of the sessions started from now on (kms serve
// --session-lifetime, tests); sessions already started keep theirs. A d of zero or less
// restores [SessionLifetime].
func (t *Tenants) SetSessionLifetime(d time.Duration) {
	if d <= 0 {
		d = SessionLifetime
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sessionLife = d
}

// StartSession signs in with an API key: it returns a new session id, to be given to the
// browser (and never logged), and the session. The id is 32 random bytes in base64url; only
// its sha256 is kept. An unknown API key is refused with [ErrUnauthorized]; a bearer token
// or the static token is not an API key.
func (t *Tenants) StartSession(apiKey string) (string, Session, error) {
	if apiKey == "" {
		return "", Session{}, fmt.Errorf("%w: no API key", ErrUnauthorized)
	}
	id, err := randomCredential()
	if err != nil {
		return "", Session{}, err
	}
	sum := sha256.Sum256([]byte(apiKey))
	keyHash := hex.EncodeToString(sum[:])
	now := t.now()
	t.mu.Lock()
	life := t.sessionLife
	t.mu.Unlock()
	// In UTC and whole microseconds, as PostgreSQL keeps it: CheckSession then gives back
	// the Expires StartSession gave, from either store.
	expires := now.Add(life).UTC().Truncate(time.Microsecond)
	e := credEntry{sum: sha256.Sum256([]byte(id)), expires: expires, created: now}
	ctx, cancel := storeContext()
	defer cancel()
	instances, err := t.store.startSession(ctx, keyHash, e, now, t.sessionLimits())
	if err != nil {
		return "", Session{}, err
	}
	return id, Session{APIKeyID: keyID(keyHash), Instances: instances, Expires: e.expires}, nil
}

// CheckSession returns the session with this id. An empty, unknown, expired or ended id, or
// one whose API key was revoked, is refused with [ErrUnauthorized]; so are bearer tokens
// and the static token, which are not sessions. The session's Instances are its key's
// instances at the time of the check.
func (t *Tenants) CheckSession(id string) (Session, error) {
	if id == "" {
		return Session{}, fmt.Errorf("%w: no session", ErrUnauthorized)
	}
	ctx, cancel := storeContext()
	defer cancel()
	keyHash, instances, expires, err := t.store.checkSession(ctx, sha256.Sum256([]byte(id)), t.now())
	if err != nil {
		if errors.Is(err, ErrUnauthorized) {
			return Session{}, err
		}
		return Session{}, fmt.Errorf("kpapi: checking the session: %w", err)
	}
	return Session{APIKeyID: keyID(keyHash), Instances: instances, Expires: expires}, nil
}

// EndSession ends the session with this id (sign-out), in every process sharing the store;
// ending a session that is unknown, expired or already ended does nothing.
func (t *Tenants) EndSession(id string) error {
	if id == "" {
		return nil
	}
	ctx, cancel := storeContext()
	defer cancel()
	if err := t.store.endSession(ctx, sha256.Sum256([]byte(id))); err != nil {
		return fmt.Errorf("kpapi: ending the session: %w", err)
	}
	return nil
}

// SessionCount returns how many console sessions are held.
func (t *Tenants) SessionCount() (int, error) {
	ctx, cancel := storeContext()
	defer cancel()
	return t.store.sessionCount(ctx)
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
	ID string
	// Instance is the first of Instances.
	Instance string
	// Instances are the instances the key's tokens are accepted for, in the order the key
	// was created with.
	Instances []string
	Created   time.Time
}

// keyID is the id of the API key whose hex sha256 is hash.
func keyID(hash string) string { return hash[:min(16, len(hash))] }

// credSum is sha256.Sum256([]byte(cred)), the hash a token or session is kept by, hashed
// from a buffer on the stack: the conversion allocates for any credential over 32 bytes, and
// a token is hashed on every API request.
func credSum(cred string) [sha256.Size]byte {
	var buf [128]byte
	sum := sha256.Sum256(append(buf[:0], cred...))
	clear(buf[:])
	return sum
}

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
		in := k.instanceList()
		out = append(out, APIKeyInfo{ID: keyID(k.Hash), Instance: in[0], Instances: slices.Clone(in), Created: k.Created})
	}
	return out, nil
}

// RevokeAPIKey deletes the API key with this id (see [APIKeyInfo]); it can no longer be
// exchanged, and the tokens and console sessions issued for it stop working at once, in
// this process and in any other serving the same directory or database. An id no key has gives [ErrAPIKeyNotFound].
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
