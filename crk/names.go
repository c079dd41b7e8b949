package crk

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// KeyName is a key's id, name and state as [ListKeyNames] reads them.
type KeyName struct {
	ID   string
	Name string
	// Deleted is true for a deleted key, restorable or not.
	Deleted bool
}

// ListKeyNames returns the id and name of every key in the store at path, in id order,
// without the master key and without starting a service: it opens the store read-only,
// waiting at most timeout for another process's lock, and holds it only while it reads.
// It is for shell completion, which must neither block nor change anything; a missing
// store is an error.
func ListKeyNames(path string, timeout time.Duration) ([]KeyName, error) {
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("crk: opening store %s read-only: %w", path, err)
	}
	defer db.Close()
	var out []KeyName
	err = db.View(func(btx *bolt.Tx) error {
		if btx.Bucket(bucketKeys) == nil {
			return nil
		}
		return boltTx{tx: btx}.keys(false, func(r *keyRecord) error {
			out = append(out, KeyName{ID: r.ID, Name: r.Name, Deleted: !r.Deleted.IsZero() || r.Purged})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// KeyState is a key's lifecycle state and latest version as [ReadKeyState] reads them.
type KeyState struct {
	State         State
	LatestVersion string
}

// ReadKeyState reads one key's effective state (expiry applied at now) and latest version
// from the store at path, as [ListKeyNames] reads names: read-only, without the master key,
// waiting at most timeout for another process's lock and holding it only while it reads. An
// unknown key is ErrKeyNotFound. An attach process checks its key with it.
func ReadKeyState(path, id string, now time.Time, timeout time.Duration) (KeyState, error) {
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return KeyState{}, fmt.Errorf("crk: opening store %s read-only: %w", path, err)
	}
	defer db.Close()
	var out KeyState
	err = db.View(func(btx *bolt.Tx) error {
		if btx.Bucket(bucketKeys) == nil {
			return fmt.Errorf("%w: %s", ErrKeyNotFound, shorten(id))
		}
		r, err := boltTx{tx: btx}.key(id)
		if err != nil {
			return err
		}
		out.State = r.effectiveState(now)
		if len(r.Versions) > 0 {
			out.LatestVersion = r.latest().ID
		}
		return nil
	})
	return out, err
}
