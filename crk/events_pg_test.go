package crk

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// countHandler counts the transactions pgdb retried (their first retry).
type countHandler struct{ n *atomic.Int64 }

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "retrying transaction" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "attempt" && a.Value.Int64() == 1 {
			h.n.Add(1)
		}
		return true
	})
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// TestEventWriterOutage: events queued while the database is down fail together: the
// writer does not store a batch's events one by one (each with a retry window of its own)
// when the batch failed because the store is out of reach.
func TestEventWriterOutage(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("stops a PostgreSQL cluster of its own: runs with CRKVOL_LONG_TESTS=1 (CI); crk/kpapi's TestDatabaseOutage covers an outage in every run")
	}
	c := pgtest.New(t)
	ctx := context.Background()
	var txs atomic.Int64
	pg, err := pgdb.Open(ctx, c.NewDatabase(t), pgdb.Options{RetryFor: 300 * time.Millisecond, Logger: slog.New(countHandler{&txs})})
	require.NoError(t, err)
	db := &Database{db: pg, log: slog.New(slog.DiscardHandler), watchers: map[string]map[int]func(){}}
	defer db.Close()
	svc, err := db.Open(Options{MasterKeyFile: filepath.Join(t.TempDir(), "master.key")})
	require.NoError(t, err)
	defer svc.Close()
	k, err := svc.CreateRootKey(ctx, "key")
	require.NoError(t, err)
	c.Stop()
	txs.Store(0)
	const n = 16
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			err := svc.record(svc.newEvent(ctx, ActionWrap, nil, k.ID, nil))
			assert.ErrorIs(t, err, ErrAudit)
			assert.ErrorIs(t, err, ErrUnavailable)
		})
	}
	wg.Wait()
	t.Logf("%d events, %d transactions", n, txs.Load())
	assert.Less(t, txs.Load(), int64(n), "the events were tried one by one")
}
