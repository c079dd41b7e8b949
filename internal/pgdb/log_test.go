package pgdb

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// capture is a slog.Handler that keeps every record.
type capture struct {
	mu      sync.Mutex
	records []slog.Record
}

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, r.Clone())
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }

// count returns how many records at level have a message starting with prefix.
func (c *capture) count(level slog.Level, prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.records {
		if r.Level == level && strings.HasPrefix(r.Message, prefix) {
			n++
		}
	}
	return n
}

// has reports whether a record at level with a message starting with prefix has attr key.
func (c *capture) has(level slog.Level, prefix, key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.records {
		if r.Level != level || !strings.HasPrefix(r.Message, prefix) {
			continue
		}
		found := false
		r.Attrs(func(a slog.Attr) bool {
			found = found || a.Key == key
			return !found
		})
		if found {
			return true
		}
	}
	return false
}

func (c *capture) dump(t *testing.T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.records {
		t.Logf("%s %s", r.Level, r.Message)
	}
}

// waitFor polls cond, with a hang guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("hang guard: %s", what)
		}
	}
}

// TestOutageLoggedOnce: while the database is down, the listener and the lease log the loss
// once at WARN and their repeated failures at DEBUG only; once it is back each logs its
// recovery once at INFO with how long it was down.
func TestOutageLoggedOnce(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("stops a PostgreSQL cluster of its own: runs with CRKVOL_LONG_TESTS=1 (CI); crk/kpapi's TestDatabaseOutage covers an outage in every run")
	}
	t.Parallel()
	c := pgtest.New(t)
	logs := &capture{}
	db, err := Open(testCtx(t), c.NewDatabase(t), Options{Logger: slog.New(logs)})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	got, _ := listen(t, db, "feed")
	require.Equal(t, "", next(t, got))
	w := &watch{started: make(chan string, 10)}
	lead(t, db, w, "me")
	started(t, w)

	c.Stop()
	// Several reconnections and lease polls fail meanwhile.
	waitFor(t, "repeated listener failures", func() bool { return logs.count(slog.LevelDebug, "listen:") >= 3 })
	waitFor(t, "repeated lease failures", func() bool { return logs.count(slog.LevelDebug, "lease:") >= 3 })
	c.StartAgain(t)
	require.Equal(t, "", next(t, got), "reconnected")
	waitFor(t, "lease recovery", func() bool { return logs.count(slog.LevelInfo, "lease: database reachable again") == 1 })
	started(t, w)
	defer func() {
		if t.Failed() {
			logs.dump(t)
		}
	}()

	assert.Equal(t, 1, logs.count(slog.LevelWarn, "listen:"), "the listener's loss, once")
	assert.Equal(t, 1, logs.count(slog.LevelInfo, "listen: reconnected"))
	assert.True(t, logs.has(slog.LevelInfo, "listen: reconnected", "down"))
	assert.True(t, logs.has(slog.LevelInfo, "lease: database reachable again", "down"))
	// The lease's loss, and its holder giving up its run, each once.
	assert.Equal(t, 1, logs.count(slog.LevelWarn, "lease: cannot reach the database"))
	assert.LessOrEqual(t, logs.count(slog.LevelWarn, "lease:"), 2)
}

// TestTxAbandonedMessage: a transaction whose context ends mid-statement names the context's
// error once, not once per place it surfaced ("context canceled\ncontext canceled").
func TestTxAbandonedMessage(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx, cancel := context.WithCancel(testCtx(t))
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := tx.Exec(ctx, "SELECT pg_sleep(30)")
		return err
	})
	require.ErrorIs(t, err, context.Canceled)
	t.Log(err)
	assert.Equal(t, 1, strings.Count(err.Error(), "context canceled"), "%q", err.Error())
	assert.NotContains(t, err.Error(), "\n")
}
