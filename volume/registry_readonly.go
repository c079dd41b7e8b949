package volume

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ListRegistry returns every entry of the registry at path, as [Registry.List] does, but
// opens it read-only, waiting at most timeout for another process's lock, and closes it
// before it returns. It is for shell completion, which must neither block nor change
// anything; a missing registry is an error.
func ListRegistry(path string, timeout time.Duration) ([]Entry, error) {
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("volume: opening registry %s read-only: %w", path, err)
	}
	r := &Registry{db: db}
	defer r.Close()
	var empty bool
	if err := db.View(func(tx *bolt.Tx) error {
		empty = tx.Bucket(bucketVolumes) == nil
		return nil
	}); err != nil || empty {
		return nil, err
	}
	return r.List()
}
