package kpapi

import (
	"container/list"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"crkvol/internal/fsutil"
)

// fileStore is the tenant store of a state directory: instances and API-key hashes in
// dir/tenants.json (changed under a flock on dir/tenants.lock and replaced atomically, so
// that the CLI and a running server may both change it), tokens and sessions in memory.
type fileStore struct {
	dir  string
	path string // dir/tenants.json

	mu       sync.Mutex // guards the fields below
	tokens   *memTable
	sessions *memTable
	keys     keySet
}

// memTable is an in-memory table of credentials (tokens or sessions) known by their hash,
// each of an API key, bounded in all and per key. It is not safe for concurrent use: its
// fileStore's mu guards it.
type memTable struct {
	byHash map[[sha256.Size]byte]*list.Element // of *memCred
	order  *list.List                          // oldest first
	byKey  map[string]*list.List               // per API key hash: its elements of order, oldest first
}

// memCred is a credential of a memTable, with its place in its key's list.
type memCred struct {
	credEntry
	keyHash string        // the hex sha256 of the API key it was issued for
	keyEl   *list.Element // its element in byKey[keyHash]
}

func newMemTable() *memTable {
	return &memTable{byHash: map[[sha256.Size]byte]*list.Element{}, order: list.New(), byKey: map[string]*list.List{}}
}

// add records e for the API key with hash keyHash, first evicting the key's oldest
// credentials beyond lim.perKey-1 and then the table's oldest beyond lim.total-1.
func (m *memTable) add(keyHash string, e credEntry, lim tokenLimits) {
	for own := m.byKey[keyHash]; own != nil && own.Len() >= lim.perKey; own = m.byKey[keyHash] {
		m.remove(own.Front().Value.(*list.Element))
	}
	for m.order.Len() >= lim.total {
		m.remove(m.order.Front())
	}
	own := m.byKey[keyHash] // after the evictions, which drop an emptied list
	if own == nil {
		own = list.New()
		m.byKey[keyHash] = own
	}
	c := &memCred{credEntry: e, keyHash: keyHash}
	el := m.order.PushBack(c)
	c.keyEl = own.PushBack(el)
	m.byHash[e.sum] = el
}

// get returns the credential with hash sum, unexpired at now; an expired one is dropped.
func (m *memTable) get(sum [sha256.Size]byte, now time.Time) (*list.Element, bool) {
	el, ok := m.byHash[sum]
	if !ok {
		return nil, false
	}
	if !now.Before(el.Value.(*memCred).expires) {
		m.remove(el)
		return nil, false
	}
	return el, true
}

// remove forgets one credential.
func (m *memTable) remove(el *list.Element) {
	c := el.Value.(*memCred)
	delete(m.byHash, c.sum)
	m.order.Remove(el)
	if own := m.byKey[c.keyHash]; own != nil {
		own.Remove(c.keyEl)
		if own.Len() == 0 {
			delete(m.byKey, c.keyHash)
		}
	}
}

// removeSum forgets the credential with hash sum, if there is one.
func (m *memTable) removeSum(sum [sha256.Size]byte) {
	if el, ok := m.byHash[sum]; ok {
		m.remove(el)
	}
}

// removeKeys forgets every credential of the API keys with these hashes.
func (m *memTable) removeKeys(hashes []string) {
	for _, h := range hashes {
		for own := m.byKey[h]; own != nil; own = m.byKey[h] {
			m.remove(own.Front().Value.(*list.Element))
		}
	}
}

// expireFront drops the credentials expired at now from the front of the table. They are
// kept in the order they were issued, mostly with one lifetime, so the expired ones are at
// the front; a clock stepped back, or a session lifetime shortened, may leave some behind
// the first live one until sweep (get still checks each one's expiry, and the table stays
// bounded).
func (m *memTable) expireFront(now time.Time) {
	for el := m.order.Front(); el != nil && !now.Before(el.Value.(*memCred).expires); el = m.order.Front() {
		m.remove(el)
	}
}

// sweep drops every credential expired at now, wherever it is.
func (m *memTable) sweep(now time.Time) {
	for el := m.order.Front(); el != nil; {
		next := el.Next()
		if !now.Before(el.Value.(*memCred).expires) {
			m.remove(el)
		}
		el = next
	}
}

// keySet caches the API keys of tenants.json (hash → instances), with the identity of the
// file they were read from, so that a revocation by another process is seen at the next
// request for the cost of a stat.
type keySet struct {
	stamp     fileStamp
	instances map[string][]string
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

func openFileStore(dir string) (*fileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// tenants.json holds the API keys' hashes: one planted or replaced in a directory others
	// can write would let them in.
	if err := fsutil.CheckPrivate(dir); err != nil {
		return nil, fmt.Errorf("kpapi: the tenants' directory: %w", err)
	}
	return &fileStore{dir: dir, path: filepath.Join(dir, "tenants.json"), tokens: newMemTable(), sessions: newMemTable()}, nil
}

func (s *fileStore) load() (*tenantsFile, error) {
	var tf tenantsFile
	raw, err := os.ReadFile(filepath.Join(s.dir, "tenants.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return &tf, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &tf); err != nil {
		return nil, fmt.Errorf("kpapi: %s: %w", filepath.Join(s.dir, "tenants.json"), err)
	}
	return &tf, nil
}

// modify applies fn to tenants.json under an exclusive flock on tenants.lock (other
// processes, such as a running server and the CLI, may change it too) and writes it back
// atomically and durably.
func (s *fileStore) modify(fn func(tf *tenantsFile) error) error {
	lock, err := os.OpenFile(filepath.Join(s.dir, "tenants.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("kpapi: locking tenants.json: %w", err)
	}
	tf, err := s.load()
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
	path := filepath.Join(s.dir, "tenants.json")
	f, err := os.CreateTemp(s.dir, "tenants-*.json")
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
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *fileStore) ensureDefault(_ context.Context, mk func() (string, error)) (string, error) {
	// tenants.json is replaced by rename, never written in place: read without the lock,
	// and write nothing when the default is there (a read-only state directory opens).
	if tf, err := s.load(); err == nil && tf.Default != "" {
		return tf.Default, nil
	}
	var def string
	err := s.modify(func(tf *tenantsFile) error {
		if tf.Default == "" {
			id, err := mk()
			if err != nil {
				return err
			}
			tf.Default = id
		}
		def = tf.Default
		return nil
	})
	return def, err
}

func (s *fileStore) createInstance(_ context.Context, in instanceEntry) error {
	return s.modify(func(tf *tenantsFile) error {
		tf.Instances = append(tf.Instances, in)
		return nil
	})
}

func (s *fileStore) instancePath(id string) string {
	dir := filepath.Join(s.dir, "instances", id)
	_ = os.MkdirAll(dir, 0o700)
	return filepath.Join(dir, "crk.db")
}

// knownIn reports whether id is the default instance or a recorded one.
func knownIn(tf *tenantsFile, id string) bool {
	if id == tf.Default {
		return true
	}
	for _, in := range tf.Instances {
		if in.ID == id {
			return true
		}
	}
	return false
}

func (s *fileStore) known(_ context.Context, id string) (bool, error) {
	tf, err := s.load()
	if err != nil {
		return false, err
	}
	return knownIn(tf, id), nil
}

func (s *fileStore) instances(context.Context) ([]InstanceInfo, error) {
	tf, err := s.load()
	if err != nil {
		return nil, err
	}
	out := []InstanceInfo{{ID: tf.Default, Name: "default", Default: true}}
	for _, in := range tf.Instances {
		if in.ID != tf.Default {
			out = append(out, InstanceInfo{ID: in.ID, Name: in.Name, Created: in.Created})
		}
	}
	return out, nil
}

func (s *fileStore) addAPIKey(_ context.Context, k apiKeyEntry) error {
	return s.modify(func(tf *tenantsFile) error {
		for _, in := range k.instanceList() {
			if !knownIn(tf, in) {
				return errKeyInstance(in)
			}
		}
		tf.APIKeys = append(tf.APIKeys, k)
		return nil
	})
}

func (s *fileStore) apiKeys(context.Context) ([]apiKeyEntry, error) {
	tf, err := s.load()
	if err != nil {
		return nil, err
	}
	return tf.APIKeys, nil
}

// errNothingRevoked ends a modify that has nothing to change.
var errNothingRevoked = errors.New("no key has this id")

func (s *fileStore) revokeAPIKeys(_ context.Context, id string) (int, error) {
	var revoked []string
	err := s.modify(func(tf *tenantsFile) error {
		kept := tf.APIKeys[:0]
		for _, k := range tf.APIKeys {
			if keyID(k.Hash) == id {
				revoked = append(revoked, k.Hash)
				continue
			}
			kept = append(kept, k)
		}
		if len(revoked) == 0 {
			return errNothingRevoked // leaves the file as it is
		}
		tf.APIKeys = kept
		return nil
	})
	if errors.Is(err, errNothingRevoked) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens.removeKeys(revoked)
	s.sessions.removeKeys(revoked)
	return len(revoked), nil
}

// findKey returns the API key of tenants.json whose hash is keyHash.
func (s *fileStore) findKey(keyHash string) (apiKeyEntry, error) {
	tf, err := s.load()
	if err != nil {
		return apiKeyEntry{}, err
	}
	for _, k := range tf.APIKeys {
		if subtle.ConstantTimeCompare([]byte(k.Hash), []byte(keyHash)) == 1 {
			return k, nil
		}
	}
	return apiKeyEntry{}, errAPIKeyUnknown
}

// addCredLocked records e in m (s.tokens or s.sessions) for the API key with hash keyHash,
// after dropping m's credentials expired at now and evicting beyond lim, and returns the
// key; s.mu is held.
func (s *fileStore) addCredLocked(m *memTable, keyHash string, e credEntry, now time.Time, lim tokenLimits) (apiKeyEntry, error) {
	k, err := s.findKey(keyHash)
	if err != nil {
		return apiKeyEntry{}, err
	}
	m.expireFront(now)
	m.add(k.Hash, e, lim)
	return k, nil
}

func (s *fileStore) issueToken(_ context.Context, keyHash string, tok credEntry, now time.Time, lim tokenLimits) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.addCredLocked(s.tokens, keyHash, tok, now, lim)
	return err
}

func (s *fileStore) expire(_ context.Context, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens.sweep(now)
	s.sessions.sweep(now)
	return nil
}

func (s *fileStore) tokenCount(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens.order.Len(), nil
}

func (s *fileStore) sessionCount(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions.order.Len(), nil
}

func (s *fileStore) authorize(_ context.Context, sum [sha256.Size]byte, instance string, now time.Time) (string, error) {
	// tenants.json's stamp is read before the lock, which then guards only memory: the
	// request is checked against the file as it was after the request arrived, as before,
	// and concurrent requests do not queue behind one another's stat.
	st, err := stampOf(s.tenantsPath())
	if err != nil {
		return "", fmt.Errorf("kpapi: checking the token's API key: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens.expireFront(now)
	el, ok := s.tokens.get(sum, now)
	if !ok {
		return "", errTokenUnknown
	}
	keyHash := el.Value.(*memCred).keyHash
	instances, exists, err := s.keyInstancesStamped(keyHash, st)
	if err != nil {
		return "", fmt.Errorf("kpapi: checking the token's API key: %w", err)
	}
	if !exists {
		s.tokens.remove(el)
		return "", errTokenRevoked
	}
	if !slices.Contains(instances, instance) {
		return "", errOtherInstance(instance)
	}
	return keyHash, nil
}

func (s *fileStore) startSession(_ context.Context, keyHash string, e credEntry, now time.Time, lim tokenLimits) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.addCredLocked(s.sessions, keyHash, e, now, lim)
	if err != nil {
		return nil, err
	}
	return slices.Clone(k.instanceList()), nil
}

func (s *fileStore) checkSession(_ context.Context, sum [sha256.Size]byte, now time.Time) (string, []string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions.expireFront(now)
	el, ok := s.sessions.get(sum, now)
	if !ok {
		return "", nil, time.Time{}, errSessionUnknown
	}
	c := el.Value.(*memCred)
	instances, exists, err := s.keyInstancesLocked(c.keyHash)
	if err != nil {
		return "", nil, time.Time{}, fmt.Errorf("kpapi: checking the session's API key: %w", err)
	}
	if !exists {
		s.sessions.remove(el)
		return "", nil, time.Time{}, errSessionRevoked
	}
	return c.keyHash, slices.Clone(instances), c.expires, nil
}

func (s *fileStore) endSession(_ context.Context, sum [sha256.Size]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions.removeSum(sum)
	return nil
}

// keyInstancesLocked returns the instances of the API key with this hash and whether it is
// still in tenants.json, re-reading the file only when it has changed since last read; s.mu
// is held. The slice returned is the cache's: callers copy it before handing it out.
func (s *fileStore) keyInstancesLocked(hash string) ([]string, bool, error) {
	st, err := stampOf(s.tenantsPath())
	if err != nil {
		return nil, false, err
	}
	return s.keyInstancesStamped(hash, st)
}

// keyInstancesStamped is keyInstancesLocked with tenants.json's stamp read by the caller
// (after its request arrived): the cache answers when the file has that stamp still, else
// the file is read again, its stamp taken anew under the lock as keyInstancesLocked does.
func (s *fileStore) keyInstancesStamped(hash string, st fileStamp) ([]string, bool, error) {
	if !st.ok || st != s.keys.stamp || s.keys.instances == nil {
		var err error
		if st, err = stampOf(s.tenantsPath()); err != nil {
			return nil, false, err
		}
		tf, err := s.load()
		if err != nil {
			return nil, false, err
		}
		instances := make(map[string][]string, len(tf.APIKeys))
		for _, k := range tf.APIKeys {
			instances[k.Hash] = k.instanceList()
		}
		s.keys = keySet{stamp: st, instances: instances}
	}
	in, ok := s.keys.instances[hash]
	return in, ok, nil
}

// tenantsPath is the path of dir/tenants.json.
func (s *fileStore) tenantsPath() string { return s.path }

// stampOf returns the stamp of the file at path, the zero stamp (not ok: read every time) if
// there is none. It calls stat(2) itself, as os.Stat does, without os.Stat's allocations:
// every API request of a state directory's server stamps tenants.json.
func stampOf(path string) (fileStamp, error) {
	var sys unix.Stat_t
	err := ignoringEINTR(func() error { return unix.Stat(path, &sys) })
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return fileStamp{dev: uint64(sys.Dev), ino: sys.Ino, size: sys.Size,
		mtime: time.Unix(sys.Mtim.Unix()), ok: true}, nil
}

// ignoringEINTR calls fn until it returns another error than EINTR, as package os does.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}

// instancePath is the store file of a non-default instance of a state directory ("" for a
// Tenants on a database).
func (t *Tenants) instancePath(id string) string {
	if fs, ok := t.store.(*fileStore); ok {
		return fs.instancePath(id)
	}
	return ""
}
