package pgdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func open(t *testing.T, url string) *DB {
	t.Helper()
	db, err := Open(testCtx(t), url, Options{ApplicationName: t.Name()})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

// tables lists the tables of the public schema.
func tables(t *testing.T, db *DB) []string {
	t.Helper()
	rows, err := db.Pool().Query(testCtx(t), "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// TestMigrations: an empty database gets the whole schema at the newest version; opening it
// again changes nothing.
func TestMigrations(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t).NewDatabase(t)
	want := []string{"crk_docs", "crk_events", "crk_feed", "crk_host_acks", "crk_instances", "crk_keys", "crk_registrations",
		"crkvol_leases", "crkvol_schema", "kp_api_key_instances", "kp_api_keys", "kp_instances", "kp_sessions", "kp_tokens"}
	for i := range 2 {
		db := open(t, url)
		assert.Equal(t, LatestVersion, db.SchemaVersion(), "open %d", i+1)
		assert.Equal(t, want, tables(t, db), "open %d", i+1)
		var rows int
		require.NoError(t, db.Pool().QueryRow(testCtx(t), "SELECT count(*) FROM crkvol_schema").Scan(&rows))
		assert.Equal(t, 1, rows, "crkvol_schema keeps one row")
		var app string
		require.NoError(t, db.Pool().QueryRow(testCtx(t), "SELECT current_setting('application_name')").Scan(&app))
		assert.Equal(t, t.Name(), app, "Options.ApplicationName")
		db.Close()
	}
}

// TestMigrationFiles: the embedded migrations are numbered 1, 2, … without gaps.
func TestMigrationFiles(t *testing.T) {
	t.Parallel()
	ms, err := loadMigrations()
	require.NoError(t, err)
	require.NotEmpty(t, ms)
	for i, m := range ms {
		assert.Equal(t, i+1, m.version)
		assert.NotEmpty(t, strings.TrimSpace(m.sql))
	}
	assert.Equal(t, len(ms), LatestVersion)
}

// TestSchemaTooNew: a database written by a newer program is refused, naming both versions.
func TestSchemaTooNew(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t).NewDatabase(t)
	db := open(t, url)
	_, err := db.Pool().Exec(testCtx(t), "UPDATE crkvol_schema SET version = 999")
	require.NoError(t, err)
	db.Close()

	_, err = Open(testCtx(t), url, Options{})
	require.ErrorIs(t, err, ErrSchemaTooNew)
	assert.Contains(t, err.Error(), "at version 999")
	assert.Contains(t, err.Error(), fmt.Sprintf("knows up to version %d", LatestVersion))
}

// TestConcurrentOpen: replicas opening an empty database at once all succeed (the
// migrations run under an advisory lock) and the schema is applied once.
func TestConcurrentOpen(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t).NewDatabase(t)
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			db, err := Open(testCtx(t), url, Options{})
			errs[i] = err
			if err == nil {
				db.Close()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "open %d", i)
	}
	db := open(t, url)
	assert.Equal(t, LatestVersion, db.SchemaVersion())
}

// TestOpenBadURL: a URL that cannot be parsed or reached is an error that does not show
// its password.
func TestOpenBadURL(t *testing.T) {
	t.Parallel()
	sock := pgtest.Start(t).SocketDir()
	tests := []struct {
		name, url string
		want      error
	}{
		{"bad port", "postgres://alice:s3cretpw@localhost:notaport/db", ErrBadURL},
		{"@ in password", "postgres://alice:s3cret@pw@localhost:notaport/db", ErrBadURL},
		{"bad query", "postgres://alice:s3cretpw@localhost/db?sslmode=bogus", ErrBadURL},
		{"password in query", "postgres:///db?host=/nonexistent&password=s3cretpw&connect_timeout=x", ErrBadURL},
		{"unreachable", "postgres://alice:s3cretpw@/db?host=/nonexistent-crkvol", ErrUnavailable},
		{"no such database", "postgres:///nosuchdb?host=" + sock + "&user=postgres&password=s3cretpw", ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(testCtx(t), tc.url, Options{})
			t.Logf("Open: %v", err)
			require.ErrorIs(t, err, tc.want)
			assert.NotContains(t, err.Error(), "s3cretpw")
			assert.NotContains(t, err.Error(), "s3cret@pw")
			assert.NotContains(t, err.Error(), "@pw@")
		})
	}
}

// TestRedact: passwords in user info and in the query are hidden; the rest is kept.
func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://alice:pw@db.example:5432/crk?sslmode=verify-full", "postgres://alice:xxxxx@db.example:5432/crk?sslmode=verify-full"},
		{"postgresql://alice@db/crk", "postgresql://alice@db/crk"},
		{"postgres:///crk?host=/run/pg&password=pw&user=bob", "postgres:///crk?host=/run/pg&password=xxxxx&user=bob"},
		{"postgres://alice:p%40ss@db/crk", "postgres://alice:xxxxx@db/crk"},
		{"postgres://alice:pw@db:bad/crk", "postgres://alice:xxxxx@db:bad/crk"},
		{"postgres://alice:p@ss@db/crk?x=a@b", "postgres://alice:xxxxx@db/crk?x=a@b"},
		{"host=db password=pw user=alice", "host=db password=xxxxx user=alice"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			assert.Equal(t, tc.want, Redact(tc.in))
		})
	}
}

func TestIsURL(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"postgres://db/x": true, "postgresql:///x?host=/tmp": true, "POSTGRES://db/x": true,
		"bolt:/var/lib/crk.db": false, "/var/lib/crk.db": false, "postgres:/x": false, "": false,
	} {
		assert.Equal(t, want, IsURL(s), s)
	}
}

// TestTxRetriesSerializationFailure: a real serialization failure (two SERIALIZABLE
// transactions that each read what the other writes) makes Tx run fn again, and the
// second run commits once.
func TestTxRetriesSerializationFailure(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx := testCtx(t)
	_, err := db.Pool().Exec(ctx, "CREATE TABLE scratch (k int PRIMARY KEY, v int); INSERT INTO scratch VALUES (1, 0), (2, 0)")
	require.NoError(t, err)

	// other: a SERIALIZABLE transaction reading row 1 and writing row 2, left open until
	// fn has read row 2; then it commits first, so fn's commit or next statement must fail.
	other, err := db.Pool().BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	require.NoError(t, err)
	var v int
	require.NoError(t, other.QueryRow(ctx, "SELECT v FROM scratch WHERE k = 1").Scan(&v))
	_, err = other.Exec(ctx, "UPDATE scratch SET v = v + 10 WHERE k = 2")
	require.NoError(t, err)

	var runs atomic.Int32
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		n := runs.Add(1)
		if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"); err != nil {
			return err
		}
		var w int
		if err := tx.QueryRow(ctx, "SELECT v FROM scratch WHERE k = 2").Scan(&w); err != nil {
			return err
		}
		if n == 1 {
			require.NoError(t, other.Commit(ctx))
		}
		_, err := tx.Exec(ctx, "UPDATE scratch SET v = v + 1 WHERE k = 1")
		return err
	})
	require.NoError(t, err)
	assert.Equal(t, int32(2), runs.Load(), "fn runs again after the serialization failure")
	require.NoError(t, db.Pool().QueryRow(ctx, "SELECT v FROM scratch WHERE k = 1").Scan(&v))
	assert.Equal(t, 1, v, "the retried change is committed once")
}

// TestTxRetriesDeadlock: of two transactions that lock two rows in opposite orders,
// PostgreSQL aborts one with a deadlock; Tx runs it again and both changes land.
func TestTxRetriesDeadlock(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx := testCtx(t)
	_, err := db.Pool().Exec(ctx, "CREATE TABLE scratch (k int PRIMARY KEY, v int); INSERT INTO scratch VALUES (1, 0), (2, 0)")
	require.NoError(t, err)
	_, err = db.Pool().Exec(ctx, "ALTER DATABASE "+dbName(t, db)+" SET deadlock_timeout = '50ms'")
	require.NoError(t, err)
	db.Pool().Reset()

	var runs atomic.Int32
	firstLocked := make(chan struct{}, 2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, order := range [][2]int{{1, 2}, {2, 1}} {
		wg.Go(func() {
			first := true
			errs[i] = db.Tx(ctx, func(tx pgx.Tx) error {
				runs.Add(1)
				if _, err := tx.Exec(ctx, "UPDATE scratch SET v = v + 1 WHERE k = $1", order[0]); err != nil {
					return err
				}
				if first { // both hold their first row before either asks for its second
					first = false
					firstLocked <- struct{}{}
					for len(firstLocked) < 2 {
						time.Sleep(time.Millisecond)
					}
				}
				_, err := tx.Exec(ctx, "UPDATE scratch SET v = v + 1 WHERE k = $1", order[1])
				return err
			})
		})
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	assert.Equal(t, int32(3), runs.Load(), "one of the two ran again")
	var sum int
	require.NoError(t, db.Pool().QueryRow(ctx, "SELECT sum(v) FROM scratch").Scan(&sum))
	assert.Equal(t, 4, sum)
}

func dbName(t *testing.T, db *DB) string {
	var name string
	require.NoError(t, db.Pool().QueryRow(testCtx(t), "SELECT current_database()").Scan(&name))
	return name
}

// TestTxErrors: fn's own errors come back as they are and roll back its changes; ReadTx is
// read-only on one snapshot.
func TestTxErrors(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx := testCtx(t)
	_, err := db.Pool().Exec(ctx, "CREATE TABLE scratch (k int PRIMARY KEY, v int)")
	require.NoError(t, err)
	errMine := errors.New("mine")
	runs := 0
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		runs++
		if _, err := tx.Exec(ctx, "INSERT INTO scratch VALUES (1, 1)"); err != nil {
			return err
		}
		return errMine
	})
	require.ErrorIs(t, err, errMine)
	assert.Equal(t, 1, runs)
	var n int
	require.NoError(t, db.Pool().QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&n))
	assert.Zero(t, n, "rolled back")

	err = db.ReadTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO scratch VALUES (1, 1)")
		return err
	})
	require.Error(t, err, "read-only")
	err = db.ReadTx(ctx, func(tx pgx.Tx) error {
		var a, b time.Time
		if err := tx.QueryRow(ctx, "SELECT now()").Scan(&a); err != nil {
			return err
		}
		var level string
		if err := tx.QueryRow(ctx, "SHOW transaction_isolation").Scan(&level); err != nil {
			return err
		}
		assert.Equal(t, "repeatable read", level)
		return tx.QueryRow(ctx, "SELECT now()").Scan(&b)
	})
	require.NoError(t, err)
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		var level string
		if err := tx.QueryRow(ctx, "SHOW transaction_isolation").Scan(&level); err != nil {
			return err
		}
		assert.Equal(t, "read committed", level)
		return nil
	})
	require.NoError(t, err)
}

// TestTxSurvivesRestart: after the server restarts, the pool's dead connections are
// replaced and Tx works without reopening; while the server is down, Tx gives up with
// ErrUnavailable when its retry time is over.
func TestTxSurvivesRestart(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("restarts a cluster of its own: runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	t.Parallel()
	c := pgtest.New(t)
	db, err := Open(testCtx(t), c.NewDatabase(t), Options{MaxConns: 4, RetryFor: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	assert.Equal(t, int32(4), db.Pool().Config().MaxConns, "Options.MaxConns")
	ctx := testCtx(t)
	_, err = db.Pool().Exec(ctx, "CREATE TABLE scratch (k int PRIMARY KEY, v int); INSERT INTO scratch VALUES (1, 0)")
	require.NoError(t, err)
	inc := func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE scratch SET v = v + 1 WHERE k = 1")
		return err
	}
	require.NoError(t, db.Tx(ctx, inc))
	c.Restart(t)
	require.NoError(t, db.Tx(ctx, inc))

	c.Stop()
	err = db.Tx(ctx, inc)
	require.ErrorIs(t, err, ErrUnavailable)
	c.StartAgain(t)
	require.NoError(t, db.Tx(ctx, inc))
	var v int
	require.NoError(t, db.Pool().QueryRow(ctx, "SELECT v FROM scratch").Scan(&v))
	assert.Equal(t, 3, v)
}

// TestTxCommitUnknown: when the connection is cut while COMMIT runs (a deferred trigger
// keeps the commit busy while another session terminates the backend), the outcome cannot
// be known: Tx returns ErrCommitUnknown and does not run fn again.
func TestTxCommitUnknown(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx := testCtx(t)
	_, err := db.Pool().Exec(ctx, `
		CREATE TABLE scratch (k int PRIMARY KEY);
		CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
			$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
		CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON scratch
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();`)
	require.NoError(t, err)

	pids := make(chan int32, 10)
	go func() { // terminate the backend once it sleeps in the commit's trigger
		pid := <-pids
		for ctx.Err() == nil {
			var terminated bool
			err := db.Pool().QueryRow(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE pid = $1 AND wait_event = 'PgSleep'`, pid).Scan(&terminated)
			if err == nil && terminated {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	runs := 0
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		runs++
		var pid int32
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		pids <- pid
		_, err := tx.Exec(ctx, "INSERT INTO scratch VALUES (1)")
		return err
	})
	t.Logf("Tx: %v", err)
	require.ErrorIs(t, err, ErrCommitUnknown)
	assert.Equal(t, 1, runs, "a commit of unknown outcome is not retried")
}

// TestTxContextEnds: a transaction whose context is cancelled while it runs ends with the
// context's error, not ErrUnavailable (the database was reachable), and is not retried.
func TestTxContextEnds(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx, cancel := context.WithCancel(testCtx(t))
	runs := 0
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		runs++
		cancel()
		_, err := tx.Exec(ctx, "SELECT 1")
		return err
	})
	require.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, ErrUnavailable)
	assert.Equal(t, 1, runs)
}

// TestTxDeadlineWithoutAnswer: a database that gives no answer before the caller's deadline
// (a frozen server sends no error; here a statement held by another's lock) is unavailable
// to that caller, not a transaction it abandoned.
func TestTxDeadlineWithoutAnswer(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx := testCtx(t)
	require.NoError(t, db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "CREATE TABLE held (n int); INSERT INTO held VALUES (1)")
		return err
	}))
	holder, err := db.Pool().Begin(ctx)
	require.NoError(t, err)
	defer holder.Rollback(ctx)
	_, err = holder.Exec(ctx, "LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = db.Tx(short, func(tx pgx.Tx) error {
		_, err := tx.Exec(short, "SELECT n FROM held")
		return err
	})
	require.ErrorIs(t, err, ErrUnavailable)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
