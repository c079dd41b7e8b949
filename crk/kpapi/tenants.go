package kpapi

import (
	"container/list"
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
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"crkvol/crk"
	"crkvol/internal/ident"
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

// Tenants holds the service instances of a state directory — the default one (the CLI's
// embedded store, dir/crk.db) and those made by CreateInstance (dir/instances/ID/crk.db) —
// their API keys (only sha256 hashes are stored, in dir/tenants.json, mode 0600) and the
// bearer tokens issued for them (in memory, at most [MaxTokens], by sha256 hash). A token is
// valid for [TokenLifetime] and only while its API key exists: revoking the key, from this
// process or another one sharing the directory, ends its tokens at once. It is safe for
// concurrent use.
type Tenants struct {
	dir  string
	opts crk.Options

	mu         sync.Mutex
	services   map[string]*crk.Service
	def        string
	tokens     map[[sha256.Size]byte]*list.Element // of *tokenEntry
	order      *list.List                          // tokens, oldest first
	byKey      map[string]*list.List               // per API key hash: its tokens' elements of order, oldest first
	maxTokens  int
	maxPerKey  int
	tokenClock crk.Clock // the wall clock; tests in this package set a manual one
	keys       keySet
	static     string
	closed     bool
}

type tokenEntry struct {
	sum      [sha256.Size]byte // of the token
	instance string
	keyHash  string // the hex sha256 of the API key it was issued for
	expires  time.Time
	keyEl    *list.Element // its element in byKey[keyHash]
}

// keySet caches the API key hashes of tenants.json, with the identity of the file they were
// read from, so that a revocation by another process is seen at the next request for the
// cost of a stat.
type keySet struct {
	stamp  fileStamp
	hashes map[string]bool
}

// fileStamp identifies one version of tenants.json: every change replaces the file by
// rename, so a new version always has another inode than the one it replaces.
type fileStamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
	ok       bool
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

// ErrAPIKeyNotFound means no API key has the id given.
var ErrAPIKeyNotFound = errors.New("api key not found")

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
	t := &Tenants{dir: dir, opts: opts, services: map[string]*crk.Service{},
		tokens: map[[sha256.Size]byte]*list.Element{}, order: list.New(), byKey: map[string]*list.List{}, maxTokens: MaxTokens, maxPerKey: MaxTokensPerKey,
		tokenClock: crk.SystemClock{}}
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

// now is the wall-clock time by which tokens expire.
func (t *Tenants) now() time.Time { return t.tokenClock.Now() }

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
			now := t.now()
			t.expireLocked(now)
			for own := t.byKey[k.Hash]; own != nil && own.Len() >= max(t.maxPerKey, 1); own = t.byKey[k.Hash] {
				t.removeLocked(own.Front().Value.(*list.Element))
			}
			for t.order.Len() >= max(t.maxTokens, 1) {
				t.removeLocked(t.order.Front())
			}
			own := t.byKey[k.Hash] // after the evictions, which drop an emptied list
			if own == nil {
				own = list.New()
				t.byKey[k.Hash] = own
			}
			e := &tokenEntry{sum: sha256.Sum256([]byte(tok)), instance: k.Instance, keyHash: k.Hash, expires: now.Add(TokenLifetime)}
			el := t.order.PushBack(e)
			e.keyEl = own.PushBack(el)
			t.tokens[e.sum] = el
			return tok, TokenLifetime, nil
		}
	}
	return "", 0, fmt.Errorf("%w: unknown API key", ErrUnauthorized)
}

// removeLocked forgets one token; t.mu is held.
func (t *Tenants) removeLocked(el *list.Element) {
	e := el.Value.(*tokenEntry)
	delete(t.tokens, e.sum)
	t.order.Remove(el)
	if own := t.byKey[e.keyHash]; own != nil {
		own.Remove(e.keyEl)
		if own.Len() == 0 {
			delete(t.byKey, e.keyHash)
		}
	}
}

// expireLocked drops the tokens expired at now; t.mu is held. Tokens are kept in the order
// they were issued, all with the same lifetime, so the expired ones are at the front (a clock
// stepped back may leave some behind the first live one; Authorize still checks each token's
// expiry, and the table stays bounded).
func (t *Tenants) expireLocked(now time.Time) {
	for el := t.order.Front(); el != nil && !now.Before(el.Value.(*tokenEntry).expires); el = t.order.Front() {
		t.removeLocked(el)
	}
}

// ExpireTokens drops the tokens whose lifetime has passed. Exchange and Authorize do it too;
// a server calls it on a timer so that an idle table empties.
func (t *Tenants) ExpireTokens() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(t.now())
}

// TokenCount returns how many bearer tokens are held.
func (t *Tenants) TokenCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.order.Len()
}

// keyExistsLocked reports whether the API key with this hash is still in tenants.json,
// re-reading the file only when it has changed since last read; t.mu is held.
func (t *Tenants) keyExistsLocked(hash string) (bool, error) {
	st, err := stampOf(filepath.Join(t.dir, "tenants.json"))
	if err != nil {
		return false, err
	}
	if !st.ok || st != t.keys.stamp || t.keys.hashes == nil {
		tf, err := t.load()
		if err != nil {
			return false, err
		}
		hashes := make(map[string]bool, len(tf.APIKeys))
		for _, k := range tf.APIKeys {
			hashes[k.Hash] = true
		}
		t.keys = keySet{stamp: st, hashes: hashes}
	}
	return t.keys.hashes[hash], nil
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime(), ok: true}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino = uint64(sys.Dev), sys.Ino
	} else {
		st.ok = false // no inode: re-read every time
	}
	return st, nil
}

// Authorize checks a bearer token for an instance and returns the instance's service.
func (t *Tenants) Authorize(token, instance string) (*crk.Service, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no bearer token", ErrUnauthorized)
	}
	t.mu.Lock()
	static := t.static
	if static != "" && subtle.ConstantTimeCompare([]byte(token), []byte(static)) == 1 {
		t.mu.Unlock()
		return t.Service(instance)
	}
	now := t.now()
	t.expireLocked(now)
	el, ok := t.tokens[sha256.Sum256([]byte(token))]
	var e *tokenEntry
	if ok {
		e = el.Value.(*tokenEntry)
	}
	switch {
	case !ok || !now.Before(e.expires):
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: unknown or expired token", ErrUnauthorized)
	case e.instance != instance:
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: the token is not for instance %s", ErrUnauthorized, instance)
	}
	exists, err := t.keyExistsLocked(e.keyHash)
	if err == nil && !exists {
		t.removeLocked(el)
	}
	t.mu.Unlock()
	switch {
	case err != nil:
		return nil, fmt.Errorf("kpapi: checking the token's API key: %w", err)
	case !exists:
		return nil, fmt.Errorf("%w: the token's API key was revoked", ErrUnauthorized)
	}
	return t.Service(instance)
}

// InstanceInfo describes an instance.
type InstanceInfo struct {
	ID   string
	Name string // "default" for the default instance
	// Created is when the instance was created; zero for the default instance, which is the
	// state directory's own store.
	Created time.Time
	// Default marks the default instance.
	Default bool
}

// ListInstances returns the default instance, then the others, oldest first.
func (t *Tenants) ListInstances() ([]InstanceInfo, error) {
	t.mu.Lock()
	tf, err := t.load()
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := []InstanceInfo{{ID: t.def, Name: "default", Default: true}}
	for _, in := range tf.Instances {
		if in.ID != t.def {
			out = append(out, InstanceInfo{ID: in.ID, Name: in.Name, Created: in.Created})
		}
	}
	return out, nil
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
	t.mu.Lock()
	tf, err := t.load()
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := make([]APIKeyInfo, 0, len(tf.APIKeys))
	for _, k := range tf.APIKeys {
		out = append(out, APIKeyInfo{ID: keyID(k.Hash), Instance: k.Instance, Created: k.Created})
	}
	return out, nil
}

// RevokeAPIKey deletes the API key with this id (see [APIKeyInfo]); it can no longer be
// exchanged, and the tokens issued for it stop working at once, in this process and in any
// other serving the same directory. An id no key has gives [ErrAPIKeyNotFound].
func (t *Tenants) RevokeAPIKey(id string) error {
	var revoked []string
	err := t.modify(func(tf *tenantsFile) error {
		kept := tf.APIKeys[:0]
		for _, k := range tf.APIKeys {
			if len(id) == 16 && keyID(k.Hash) == id {
				revoked = append(revoked, k.Hash)
				continue
			}
			kept = append(kept, k)
		}
		if len(revoked) == 0 {
			if validKeyID(id) {
				return fmt.Errorf("%w: %s", ErrAPIKeyNotFound, id)
			}
			return fmt.Errorf("%w: an id is 16 hex digits (see kms apikey list)", ErrAPIKeyNotFound)
		}
		tf.APIKeys = kept
		return nil
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for el := t.order.Front(); el != nil; {
		next := el.Next()
		for _, h := range revoked {
			if el.Value.(*tokenEntry).keyHash == h {
				t.removeLocked(el)
				break
			}
		}
		el = next
	}
	return nil
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
