package pgdb

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

const testTTL = 400 * time.Millisecond

// leader runs Lead for holder in the background, counting runs and overlaps in w.
type watch struct {
	running, overlaps, runs atomic.Int32
	mu                      sync.Mutex
	current                 string
	started                 chan string // holder, per run
}

func (w *watch) run(holder string) func(context.Context) {
	return func(ctx context.Context) {
		if w.running.Add(1) > 1 {
			w.overlaps.Add(1)
		}
		w.runs.Add(1)
		w.mu.Lock()
		w.current = holder
		w.mu.Unlock()
		w.started <- holder
		<-ctx.Done()
		w.running.Add(-1)
	}
}

func lead(t *testing.T, db *DB, w *watch, holder string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.Lead(ctx, "scheduler", holder, testTTL, w.run(holder))
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

func current(w *watch) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

func started(t *testing.T, w *watch) string {
	t.Helper()
	select {
	case h := <-w.started:
		return h
	case <-time.After(30 * time.Second): // hang guard
		t.Fatal("no leader started")
		return ""
	}
}

// TestLeadOneAtATime: of three replicas competing for a lease, one runs; when it stops, one
// of the others takes over (logged: within about ttl plus a poll); never do two run at once.
func TestLeadOneAtATime(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	w := &watch{started: make(chan string, 10)}
	stops := map[string]func(){}
	for i := range 3 {
		h := fmt.Sprintf("replica-%d", i)
		stops[h] = lead(t, db, w, h)
	}
	first := started(t, w)
	holder, expires, err := db.Holder(testCtx(t), "scheduler")
	require.NoError(t, err)
	assert.Equal(t, first, holder)
	assert.False(t, expires.IsZero())

	// The holder renews: its lease's expiry moves on (by the database clock) while it holds.
	guard := time.Now().Add(30 * time.Second) // hang guard
	for {
		h, e, err := db.Holder(testCtx(t), "scheduler")
		require.NoError(t, err)
		if h == first && e.After(expires) {
			break
		}
		require.True(t, time.Now().Before(guard), "lease never renewed")
		time.Sleep(testTTL / 8)
	}
	first = current(w) // under heavy load a late renewal may have handed over: still one at a time
	for len(w.started) > 0 {
		<-w.started
	}

	begin := time.Now()
	stops[first]() // clean exit: released
	second := started(t, w)
	t.Logf("handover after a clean exit took %v", time.Since(begin))
	assert.NotEqual(t, first, second)

	stops[second]()
	third := started(t, w)
	assert.NotContains(t, []string{first, second}, third)
	assert.Zero(t, w.overlaps.Load(), "two leaders ran at once")

	stops[third]()
	holder, _, err = db.Holder(testCtx(t), "scheduler")
	require.NoError(t, err)
	assert.Empty(t, holder, "released on clean exit")
}

// TestLeadTakesOverExpired: a holder that died without releasing (its row left behind) is
// replaced once its lease expires, by the database clock.
func TestLeadTakesOverExpired(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx := testCtx(t)
	begin := time.Now() // before the database's now() below
	_, err := db.Pool().Exec(ctx, "INSERT INTO crkvol_leases VALUES ('scheduler', 'dead', now() + interval '300 milliseconds')")
	require.NoError(t, err)
	w := &watch{started: make(chan string, 10)}
	lead(t, db, w, "alive")
	require.Equal(t, "alive", started(t, w))
	took := time.Since(begin)
	t.Logf("took over an expired lease after %v (lease had 300ms left, ttl %v)", took, testTTL)
	assert.GreaterOrEqual(t, took, 285*time.Millisecond, "not before the dead holder's lease expired")
}

// TestLeadLosesLease: when renewals fail (the server is stopped), run's context is
// cancelled; when the server is back the replica leads again.
func TestLeadLosesLease(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("stops and restarts a cluster of its own: runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	t.Parallel()
	c := pgtest.New(t)
	db := open(t, c.NewDatabase(t))
	w := &watch{started: make(chan string, 10)}
	lead(t, db, w, "only")
	require.Equal(t, "only", started(t, w))
	c.Stop()
	deadline := time.After(30 * time.Second) // hang guard
	for w.running.Load() != 0 {
		select {
		case <-deadline:
			t.Fatal("run still running with the database down")
		case <-time.After(10 * time.Millisecond):
		}
	}
	c.StartAgain(t)
	require.Equal(t, "only", started(t, w))
	assert.Zero(t, w.overlaps.Load())
}

// TestLeadRunReturns: a run that returns on its own gives the lease up; Lead runs it again
// later while it is still the only candidate.
func TestLeadRunReturns(t *testing.T) {
	t.Parallel()
	db := open(t, pgtest.Start(t).NewDatabase(t))
	ctx, cancel := context.WithCancel(testCtx(t))
	runs := make(chan struct{}, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.Lead(ctx, "job", "me", 0, func(context.Context) { runs <- struct{}{} }) // 0: MinLeaseTTL, no panic
	}()
	for range 2 {
		select {
		case <-runs:
		case <-time.After(30 * time.Second):
			t.Fatal("run not called again")
		}
	}
	cancel()
	<-done
}
