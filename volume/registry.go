package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Registry maps volume CRNs to their image files, so that a rotation can find every volume a
// key protects, and holds the image catalog (encrypted qcow2 images and their wrapped
// passphrases, see [ImageEntry]). It is one bbolt file kept beside the key service's store;
// it holds no secrets (a WDEK opens nothing without its root key).
type Registry struct {
	db *bolt.DB
	// commits and flushes count what the read-write registry has committed since it was
	// opened (see Stats).
	commits, flushes atomic.Uint64
}

// RegistryStats counts what a registry has written since it was opened.
type RegistryStats struct {
	// Commits is the number of write transactions committed.
	Commits uint64
	// Flushes is the number of fsync and fdatasync calls they made: bbolt flushes the pages
	// of a commit and then its meta page (2 per commit), and fsyncs the file once more
	// whenever a commit grows it.
	Flushes uint64
}

// Stats returns what the registry has committed since it was opened; a read-only registry
// commits nothing.
func (r *Registry) Stats() RegistryStats {
	return RegistryStats{Commits: r.commits.Load(), Flushes: r.flushes.Load()}
}

// update runs fn in one write transaction and counts its commit and flushes (see
// RegistryStats): 2 per commit, and 1 more when the file grew. A transaction that fn aborts
// commits nothing.
func (r *Registry) update(fn func(tx *bolt.Tx) error) error {
	if r.db == nil {
		return errEmptyReadOnly
	}
	before := r.fileSize()
	err := r.db.Update(fn)
	if err != nil {
		return err
	}
	n := uint64(2)
	if r.db.NoSync {
		n = 0
	}
	if after := r.fileSize(); after > before && !r.db.NoGrowSync {
		n++
	}
	r.commits.Add(1)
	r.flushes.Add(n)
	return nil
}

// fileSize returns the size of the registry's file, or -1 if it cannot be read.
func (r *Registry) fileSize() int64 {
	fi, err := os.Stat(r.db.Path())
	if err != nil {
		return -1
	}
	return fi.Size()
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
	// Verified is the fingerprint of the image state in which this Manager last proved that
	// the token's passphrase opens its keyslot (see [Manager.Rewrap]): a hash of the token's
	// ciphertext, the keyslot's, its digest's and the data segment's metadata and the
	// keyslot area's bytes. A rewrap that finds the image still in that state skips the
	// unwrap and keyslot unlock of its pre-rewrap check. Empty: never proved (entries made
	// before crkvol recorded it).
	Verified string `json:"verified,omitempty"`
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
	return r.update(func(tx *bolt.Tx) error {
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

// getAll returns the entries of crns as Get does, read in one transaction: entries[i] and
// errs[i] are Get(crns[i])'s results.
func (r *Registry) getAll(crns []string) (entries []Entry, errs []error) {
	entries, errs = make([]Entry, len(crns)), make([]error, len(crns))
	if r.db == nil {
		for i, crn := range crns {
			errs[i] = fmt.Errorf("%w: %s", ErrNotRegistered, crn)
		}
		return entries, errs
	}
	err := r.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVolumes)
		for i, crn := range crns {
			var raw []byte
			if b != nil {
				raw = b.Get([]byte(crn))
			}
			if raw == nil {
				errs[i] = fmt.Errorf("%w: %s", ErrNotRegistered, crn)
				continue
			}
			errs[i] = json.Unmarshal(raw, &entries[i])
		}
		return nil
	})
	if err != nil { // the transaction could not start: every read fails with it
		for i := range errs {
			errs[i] = err
		}
	}
	return entries, errs
}

// registered reports, in one transaction, which of crns have an entry (whether or not it
// decodes: a bad entry is the volume's, and its rewrap reports it).
func (r *Registry) registered(crns []string) ([]bool, error) {
	out := make([]bool, len(crns))
	if r.db == nil {
		return out, nil
	}
	err := r.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVolumes)
		if b == nil {
			return nil
		}
		for i, crn := range crns {
			out[i] = b.Get([]byte(crn)) != nil
		}
		return nil
	})
	return out, err
}

// Delete removes the entry for a CRN; deleting a missing entry is not an error.
func (r *Registry) Delete(crn string) error {
	return r.update(func(tx *bolt.Tx) error {
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

// verifiedUpdate is one volume's change for [Registry.setVerified]: the fingerprint of a
// state in which its keyslot was proved to open (see Entry.Verified), and its image's file
// identity when the entry lacks it.
type verifiedUpdate struct {
	// entry is the registry entry as read before the proof: the update applies only while
	// the registry still holds it for the same image (UUID, path and file identity).
	entry Entry
	// verified is the new fingerprint; "" leaves the entry's as it is.
	verified string
	// fill records the file identity of fi, the registered image at the resolved path, in an
	// entry that has none.
	fill bool
	path string
	fi   os.FileInfo
}

// errNoChange aborts a transaction of setVerified that would write nothing.
var errNoChange = errors.New("volume: registry: nothing to change")

// setVerified applies ups in one transaction: one commit however many volumes it records.
// An update whose entry changed since it was read (the volume deleted, registered again at
// another path or as another file) is skipped: the registry is never made to name an image
// it no longer names. When nothing changes nothing is committed.
func (r *Registry) setVerified(ups []verifiedUpdate) error {
	if len(ups) == 0 {
		return nil
	}
	err := r.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVolumes)
		changed := 0
		for _, u := range ups {
			raw := b.Get([]byte(u.entry.CRN))
			if raw == nil {
				continue
			}
			var cur Entry
			if err := json.Unmarshal(raw, &cur); err != nil {
				return fmt.Errorf("volume: registry: entry %s: %w", u.entry.CRN, err)
			}
			if cur.UUID != u.entry.UUID || cur.Path != u.entry.Path || cur.Device != u.entry.Device || cur.Inode != u.entry.Inode {
				continue
			}
			next := cur
			if u.verified != "" {
				next.Verified = u.verified
			}
			if u.fill && !cur.hasIdentity() {
				next = next.withIdentity(u.path, u.fi)
			}
			if next == cur {
				continue
			}
			out, err := json.Marshal(next)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(cur.CRN), out); err != nil {
				return err
			}
			changed++
		}
		if changed == 0 {
			return errNoChange
		}
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return err
}
