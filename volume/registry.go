package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Registry maps volume CRNs to their image files, so that a rotation can find every volume a
// key protects, and holds the image catalog (encrypted qcow2 images and their wrapped
// passphrases, see [ImageEntry]). It is one bbolt file kept beside the key service's store;
// it holds no secrets (a WDEK opens nothing without its root key).
type Registry struct {
	db *bolt.DB
}

// Entry is one registered volume.
type Entry struct {
	CRN string `json:"crn"`
	// Path is the registered image's absolute path, symbolic links resolved when it was
	// registered (older registries hold the absolute path as given).
	Path    string    `json:"path"`
	UUID    string    `json:"uuid"`
	KeyID   string    `json:"key_id"`
	Created time.Time `json:"created"`
	// Device and Inode identify the registered image file (from its stat when it was
	// registered): a copy of the image at another path, or another file put at the
	// registered path, is not the registered image. Zero in entries of older registries,
	// which match by path only until the next registration change on that image fills them.
	Device uint64 `json:"device,omitempty"`
	Inode  uint64 `json:"inode,omitempty"`
}

var bucketVolumes = []byte("volumes")

// ErrNotRegistered means no volume with that CRN is in the registry.
var ErrNotRegistered = errors.New("volume not registered")

// OpenRegistry opens (creating if needed) the registry at path.
func OpenRegistry(path string) (*Registry, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("volume: opening registry %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketVolumes); err != nil {
			return err
		}
		_, _, err := imageBuckets(tx)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &Registry{db: db}, nil
}

// errEmptyReadOnly refuses a change to the empty registry OpenRegistryReadOnly returns for a
// file that does not exist.
var errEmptyReadOnly = fmt.Errorf("volume: registry: %w", bolt.ErrDatabaseReadOnly)

// OpenRegistryReadOnly opens the registry at path for reading only (bbolt's shared lock;
// nothing is created or written: Put and Delete fail). A registry that does not exist yet
// reads as empty.
func OpenRegistryReadOnly(path string) (*Registry, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return &Registry{}, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("volume: opening registry %s: %w", path, err)
	}
	return &Registry{db: db}, nil
}

// Close closes the registry.
func (r *Registry) Close() error {
	if r.db == nil {
		return nil
	}
	return r.db.Close()
}

// Put adds or replaces an entry.
func (r *Registry) Put(e Entry) error {
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if r.db == nil {
		return errEmptyReadOnly
	}
	return r.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVolumes).Put([]byte(e.CRN), raw)
	})
}

// Get returns the entry for a CRN.
func (r *Registry) Get(crn string) (Entry, error) {
	var e Entry
	if r.db == nil {
		return e, fmt.Errorf("%w: %s", ErrNotRegistered, crn)
	}
	err := r.db.View(func(tx *bolt.Tx) error {
		var raw []byte
		if b := tx.Bucket(bucketVolumes); b != nil {
			raw = b.Get([]byte(crn))
		}
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrNotRegistered, crn)
		}
		return json.Unmarshal(raw, &e)
	})
	return e, err
}

// Delete removes the entry for a CRN; deleting a missing entry is not an error.
func (r *Registry) Delete(crn string) error {
	if r.db == nil {
		return errEmptyReadOnly
	}
	return r.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVolumes).Delete([]byte(crn))
	})
}

// List returns every entry, ordered by CRN.
func (r *Registry) List() ([]Entry, error) {
	var out []Entry
	if r.db == nil {
		return nil, nil
	}
	err := r.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVolumes)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Entry) int {
		switch {
		case a.CRN < b.CRN:
			return -1
		case a.CRN > b.CRN:
			return 1
		}
		return 0
	})
	return out, err
}
