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
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fileStore is the tenant store of a state directory: instances and API-key hashes in
// dir/tenants.json (changed under a flock on dir/tenants.lock and replaced atomically, so
// that the CLI and a running server may both change it), tokens in memory.
type fileStore struct {
	dir string

	mu     sync.Mutex                          // guards the fields below
	tokens map[[sha256.Size]byte]*list.Element // of *memToken
	order  *list.List                          // tokens, oldest first
	byKey  map[string]*list.List               // per API key hash: its tokens' elements of order, oldest first
	keys   keySet
}

// memToken is a token of the table, with its place in its key's list.
type memToken struct {
	tokenEntry
	keyEl *list.Element // its element in byKey[keyHash]
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

func openFileStore(dir string) (*fileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &fileStore{dir: dir, tokens: map[[sha256.Size]byte]*list.Element{}, order: list.New(),
		byKey: map[string]*list.List{}}, nil
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
		if !knownIn(tf, k.Instance) {
			return errNoInstance(k.Instance)
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
	for el := s.order.Front(); el != nil; {
		next := el.Next()
		for _, h := range revoked {
			if el.Value.(*memToken).keyHash == h {
				s.removeLocked(el)
				break
			}
		}
		el = next
	}
	return len(revoked), nil
}

func (s *fileStore) issueToken(_ context.Context, keyHash string, tok tokenEntry, now time.Time, lim tokenLimits) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tf, err := s.load()
	if err != nil {
		return "", err
	}
	for _, k := range tf.APIKeys {
		if subtle.ConstantTimeCompare([]byte(k.Hash), []byte(keyHash)) == 1 {
			s.expireLocked(now)
			for own := s.byKey[k.Hash]; own != nil && own.Len() >= lim.perKey; own = s.byKey[k.Hash] {
				s.removeLocked(own.Front().Value.(*list.Element))
			}
			for s.order.Len() >= lim.total {
				s.removeLocked(s.order.Front())
			}
			own := s.byKey[k.Hash] // after the evictions, which drop an emptied list
			if own == nil {
				own = list.New()
				s.byKey[k.Hash] = own
			}
			e := &memToken{tokenEntry: tok}
			e.instance, e.keyHash = k.Instance, k.Hash
			el := s.order.PushBack(e)
			e.keyEl = own.PushBack(el)
			s.tokens[e.sum] = el
			return k.Instance, nil
		}
	}
	return "", errAPIKeyUnknown
}

// removeLocked forgets one token; s.mu is held.
func (s *fileStore) removeLocked(el *list.Element) {
	e := el.Value.(*memToken)
	delete(s.tokens, e.sum)
	s.order.Remove(el)
	if own := s.byKey[e.keyHash]; own != nil {
		own.Remove(e.keyEl)
		if own.Len() == 0 {
			delete(s.byKey, e.keyHash)
		}
	}
}

// expireLocked drops the tokens expired at now; s.mu is held. Tokens are kept in the order
// they were issued, all with the same lifetime, so the expired ones are at the front (a clock
// stepped back may leave some behind the first live one; authorize still checks each token's
// expiry, and the table stays bounded).
func (s *fileStore) expireLocked(now time.Time) {
	for el := s.order.Front(); el != nil && !now.Before(el.Value.(*memToken).expires); el = s.order.Front() {
		s.removeLocked(el)
	}
}

func (s *fileStore) expireTokens(_ context.Context, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	return nil
}

func (s *fileStore) tokenCount(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len(), nil
}

func (s *fileStore) authorize(_ context.Context, sum [sha256.Size]byte, instance string, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	el, ok := s.tokens[sum]
	if !ok || !now.Before(el.Value.(*memToken).expires) {
		return errTokenUnknown
	}
	e := el.Value.(*memToken)
	if e.instance != instance {
		return errOtherInstance(instance)
	}
	exists, err := s.keyExistsLocked(e.keyHash)
	if err != nil {
		return fmt.Errorf("kpapi: checking the token's API key: %w", err)
	}
	if !exists {
		s.removeLocked(el)
		return errTokenRevoked
	}
	return nil
}

// keyExistsLocked reports whether the API key with this hash is still in tenants.json,
// re-reading the file only when it has changed since last read; s.mu is held.
func (s *fileStore) keyExistsLocked(hash string) (bool, error) {
	st, err := stampOf(filepath.Join(s.dir, "tenants.json"))
	if err != nil {
		return false, err
	}
	if !st.ok || st != s.keys.stamp || s.keys.hashes == nil {
		tf, err := s.load()
		if err != nil {
			return false, err
		}
		hashes := make(map[string]bool, len(tf.APIKeys))
		for _, k := range tf.APIKeys {
			hashes[k.Hash] = true
		}
		s.keys = keySet{stamp: st, hashes: hashes}
	}
	return s.keys.hashes[hash], nil
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

// instancePath is the store file of a non-default instance of a state directory ("" for a
// Tenants on a database).
func (t *Tenants) instancePath(id string) string {
	if fs, ok := t.store.(*fileStore); ok {
		return fs.instancePath(id)
	}
	return ""
}
