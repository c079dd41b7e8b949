package crk

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
)

// testStore is the kind of store a test runs on: each test of the service's behaviour runs
// on both, with the same assertions (forEachStore).
type testStore struct {
	kind string // "bolt" or "postgres"

	// postgres: the test's own database, and the instance each store path stands for (a
	// test that reopens a path reopens that instance; another path is another instance).
	db        *Database
	mu        sync.Mutex
	instances map[string]string
}

// forEachStore runs fn as a subtest on a bbolt store and on a PostgreSQL one.
func forEachStore(t *testing.T, fn func(t *testing.T, st *testStore)) {
	t.Helper()
	t.Run("bolt", func(t *testing.T) { fn(t, &testStore{kind: "bolt"}) })
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.Start(t).NewDatabase(t)
		db, err := OpenDatabase(context.Background(), url, nil)
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		fn(t, &testStore{kind: "postgres", db: db, instances: map[string]string{}})
	})
}

// open opens the store that path stands for: the bbolt file itself, or an instance of the
// test's database with its master key file beside path (as a bbolt store keeps it).
func (st *testStore) open(path string, opts Options) (*Service, error) {
	if st.kind == "bolt" {
		return Open(path, opts)
	}
	if opts.MasterKey == nil && opts.MasterKeyFile == "" {
		opts.MasterKeyFile = path + ".masterkey"
	}
	st.mu.Lock()
	inst, known := st.instances[path]
	st.mu.Unlock()
	if known && opts.Instance == "" {
		opts.Instance = inst
	}
	svc, err := st.db.Open(opts)
	if err != nil {
		return nil, err
	}
	if !known {
		st.mu.Lock()
		st.instances[path] = svc.Instance()
		st.mu.Unlock()
	}
	return svc, nil
}

// tempPath is a fresh store path in t's temporary directory.
func tempPath(t *testing.T) string { return filepath.Join(t.TempDir(), "crk.db") }
