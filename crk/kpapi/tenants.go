package kpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"crkvol/crk"
	"crkvol/internal/ident"
)

// TokenLifetime is how long a bearer token from the token endpoint is valid.
const TokenLifetime = time.Hour

// Tenants holds the service instances of a state directory — the default one (the CLI's
// embedded store, dir/crk.db) and those made by CreateInstance (dir/instances/ID/crk.db) —
// their API keys (only sha256 hashes are stored, in dir/tenants.json, mode 0600) and the
// bearer tokens issued for them (in memory). It is safe for concurrent use.
type Tenants struct {
	dir  string
	opts crk.Options

	mu       sync.Mutex
	services map[string]*crk.Service
	def      string
	tokens   map[string]tokenEntry
	static   string
	closed   bool
}

type tokenEntry struct {
	instance string
	expires  time.Time
}

type tenantsFile struct {
	Default   string          `json:"default"`
	Instances []instanceEntry `json:"instances"`
	APIKeys   []apiKeyEntry   `json:"apiKeys"`
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

// errUnknownInstance is the ErrUnauthorized of an instance that does not exist, which the API
// words differently.
var errUnknownInstance = errors.New("unknown instance")

// OpenTenants opens the state directory dir; opts configure every instance's crk service.
// Services are opened when first needed, so managing instances and API keys (which only
// touches tenants.json) works while a server holds the stores; only the very first call
// opens the default store to learn its instance id.
func OpenTenants(dir string, opts crk.Options) (*Tenants, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	t := &Tenants{dir: dir, opts: opts, services: map[string]*crk.Service{}, tokens: map[string]tokenEntry{}}
	err := t.modify(func(tf *tenantsFile) error {
		if tf.Default != "" {
			t.def = tf.Default
			return nil
		}
		svc, err := crk.Open(filepath.Join(dir, "crk.db"), opts)
		if err != nil {
			return err
		}
		t.def, tf.Default = svc.Instance(), svc.Instance()
		t.services[t.def] = svc
		return nil
	})
	if err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
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

// Close closes every open service; the Tenants cannot be used afterwards.
func (t *Tenants) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	var errs []error
	for _, s := range t.services {
		errs = append(errs, s.Close())
	}
	t.services = map[string]*crk.Service{}
	return errors.Join(errs...)
}

func (t *Tenants) load() (*tenantsFile, error) {
	var tf tenantsFile
	raw, err := os.ReadFile(filepath.Join(t.dir, "tenants.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return &tf, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &tf); err != nil {
		return nil, fmt.Errorf("kpapi: %s: %w", filepath.Join(t.dir, "tenants.json"), err)
	}
	return &tf, nil
}

// modify applies fn to tenants.json under an exclusive flock on tenants.lock (other
// processes, such as a running server and the CLI, may change it too) and writes it back
// atomically and durably.
func (t *Tenants) modify(fn func(tf *tenantsFile) error) error {
	lock, err := os.OpenFile(filepath.Join(t.dir, "tenants.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("kpapi: locking tenants.json: %w", err)
	}
	tf, err := t.load()
	if err != nil {
		return err
	}
	if err := fn(tf); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(tf, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(t.dir, "tenants.json")
	f, err := os.CreateTemp(t.dir, "tenants-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("kpapi: writing tenants.json: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(t.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// CreateInstance records a new, empty instance and returns its id; its store is made when
// first used.
func (t *Tenants) CreateInstance(name string) (string, error) {
	id, err := ident.NewUUID(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("kpapi: %w", err)
	}
	err = t.modify(func(tf *tenantsFile) error {
		tf.Instances = append(tf.Instances, instanceEntry{ID: id, Name: name, Created: time.Now().UTC()})
		return nil
	})
	return id, err
}

func (t *Tenants) instancePath(id string) string {
	dir := filepath.Join(t.dir, "instances", id)
	_ = os.MkdirAll(dir, 0o700)
	return filepath.Join(dir, "crk.db")
}

// known reports whether id is the default instance or a recorded one.
func (t *Tenants) known(tf *tenantsFile, id string) bool {
	if id == t.def {
		return true
	}
	for _, in := range tf.Instances {
		if in.ID == id {
			return true
		}
	}
	return false
}

// Service returns the crk service of an instance, opening it on first use.
func (t *Tenants) Service(id string) (*crk.Service, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("kpapi: tenants are closed")
	}
	if s, ok := t.services[id]; ok {
		return s, nil
	}
	tf, err := t.load()
	if err != nil {
		return nil, err
	}
	if !t.known(tf, id) {
		return nil, fmt.Errorf("%w: %w %s", ErrUnauthorized, errUnknownInstance, id)
	}
	path := filepath.Join(t.dir, "crk.db")
	opts := t.opts
	if id != t.def {
		path = t.instancePath(id)
		opts.Instance = id
	}
	s, err := crk.Open(path, opts)
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
	err := t.modify(func(tf *tenantsFile) error {
		if !t.known(tf, instance) {
			return fmt.Errorf("%w: %w %s", ErrUnauthorized, errUnknownInstance, instance)
		}
		tf.APIKeys = append(tf.APIKeys, apiKeyEntry{Hash: hex.EncodeToString(sum[:]), Instance: instance, Created: time.Now().UTC()})
		return nil
	})
	if err != nil {
		return "", err
	}
	return key, nil
}

// Exchange trades an API key for a bearer token valid for TokenLifetime.
func (t *Tenants) Exchange(apiKey string) (string, time.Duration, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tf, err := t.load()
	if err != nil {
		return "", 0, err
	}
	sum := sha256.Sum256([]byte(apiKey))
	want := hex.EncodeToString(sum[:])
	for _, k := range tf.APIKeys {
		if subtle.ConstantTimeCompare([]byte(k.Hash), []byte(want)) == 1 {
			var b [32]byte
			if _, err := rand.Read(b[:]); err != nil {
				return "", 0, err
			}
			tok := base64.RawURLEncoding.EncodeToString(b[:])
			now := time.Now()
			for old, e := range t.tokens { // forget expired tokens
				if now.After(e.expires) {
					delete(t.tokens, old)
				}
			}
			t.tokens[tok] = tokenEntry{instance: k.Instance, expires: now.Add(TokenLifetime)}
			return tok, TokenLifetime, nil
		}
	}
	return "", 0, fmt.Errorf("%w: unknown API key", ErrUnauthorized)
}

// Authorize checks a bearer token for an instance and returns the instance's service.
func (t *Tenants) Authorize(token, instance string) (*crk.Service, error) {
	t.mu.Lock()
	static := t.static
	e, ok := t.tokens[token]
	t.mu.Unlock()
	switch {
	case token == "":
		return nil, fmt.Errorf("%w: no bearer token", ErrUnauthorized)
	case static != "" && subtle.ConstantTimeCompare([]byte(token), []byte(static)) == 1:
	case !ok || time.Now().After(e.expires):
		return nil, fmt.Errorf("%w: unknown or expired token", ErrUnauthorized)
	case e.instance != instance:
		return nil, fmt.Errorf("%w: the token is not for instance %s", ErrUnauthorized, instance)
	}
	return t.Service(instance)
}

// RunDue carries out the due policy rotations and expiries of every instance.
func (t *Tenants) RunDue(ctx context.Context) (map[string]crk.RunDueResult, error) {
	t.mu.Lock()
	tf, err := t.load()
	ids := []string{t.def}
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, in := range tf.Instances {
		ids = append(ids, in.ID)
	}
	out := map[string]crk.RunDueResult{}
	var errs []error
	for _, id := range ids {
		svc, err := t.Service(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res, err := svc.RunDue(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", id, err))
		}
		out[id] = res
	}
	return out, errors.Join(errs...)
}
