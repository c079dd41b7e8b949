package crk

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
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

// forEachStore runs fn as a subtest on a bbolt store and on a PostgreSQL one (the latter in
// the long run).
func forEachStore(t *testing.T, fn func(t *testing.T, st *testStore)) {
	t.Helper()
	t.Run("bolt", func(t *testing.T) { fn(t, &testStore{kind: "bolt"}) })
	t.Run("postgres", func(t *testing.T) {
		if !tooltest.Long() {
			// CI runs the whole suite on both stores; a plain go test ./... keeps within its
			// time with the PostgreSQL store's own tests (replicas_test.go and the *_pg_test.go
			// files), which run in every run.
			t.Skip("the PostgreSQL variant of the crk suite runs with CRKVOL_LONG_TESTS=1 (CI)")
		}
		fn(t, &testStore{kind: "postgres", db: sharedDatabase(t), instances: map[string]string{}})
	})
}

// shared is the test binary's PostgreSQL database: the tests' stores are instances of it,
// which share nothing (every row belongs to its instance), so a test needs no database of
// its own (creating one costs a third of a second).
var shared struct {
	once sync.Once
	db   *Database
	err  error
}

func sharedDatabase(t *testing.T) *Database {
	t.Helper()
	c := pgtest.Start(t)
	shared.once.Do(func() {
		shared.db, shared.err = OpenDatabase(context.Background(), c.SharedDatabase(t, "crk_tests"), nil)
	})
	require.NoError(t, shared.err)
	require.NotNil(t, shared.db, "the shared database could not be made (see the first test that asked for it)")
	return shared.db
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

// raw returns every byte the store at path holds: the bbolt file, or the instance's rows.
func (st *testStore) raw(t *testing.T, path string) []byte {
	t.Helper()
	if st.kind == "bolt" {
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		return raw
	}
	st.mu.Lock()
	inst := st.instances[path]
	st.mu.Unlock()
	var out []byte
	for _, q := range []string{
		`SELECT check_value FROM crk_instances WHERE id = $1`,
		`SELECT record::text::bytea FROM crk_keys WHERE instance = $1`,
		`SELECT record::text::bytea FROM crk_registrations WHERE instance = $1`,
		`SELECT record::text::bytea FROM crk_events WHERE instance = $1`,
		`SELECT record::text::bytea FROM crk_feed WHERE instance = $1`,
		`SELECT record::text::bytea FROM crk_docs WHERE instance = $1 ORDER BY kind, name`,
	} {
		rows, err := st.db.db.Pool().Query(context.Background(), q, inst)
		require.NoError(t, err)
		vals, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
		require.NoError(t, err)
		for _, v := range vals {
			out = append(out, v...)
		}
	}
	return out
}

// existingWithoutKeyFile makes the store at path exist without its master key file: an
// empty bbolt file, or an instance whose key file was removed.
func (st *testStore) existingWithoutKeyFile(t *testing.T, path string) {
	t.Helper()
	if st.kind == "bolt" {
		require.NoError(t, os.WriteFile(path, nil, 0o600))
		return
	}
	svc, err := st.open(path, Options{})
	require.NoError(t, err)
	require.NoError(t, svc.Close())
	require.NoError(t, os.Remove(path+".masterkey"))
}

// name is how errors name the store at path: its path, or its instance.
func (st *testStore) name(path string) string {
	if st.kind == "bolt" {
		return path
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return "instance " + st.instances[path]
}
