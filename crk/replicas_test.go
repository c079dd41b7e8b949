package crk

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
)

// replicas opens n services of one new instance, each on its own Database (its own pool
// and listener): n processes sharing the database, as kms serve replicas do.
func replicas(t *testing.T, n int, clock Clock) []*Service {
	t.Helper()
	url := pgtest.Start(t).NewDatabase(t)
	keyFile := filepath.Join(t.TempDir(), "master.key")
	var out []*Service
	instance := ""
	for range n {
		db, err := OpenDatabase(context.Background(), url, nil)
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		svc, err := db.Open(Options{Clock: clock, MasterKeyFile: keyFile, Instance: instance})
		require.NoError(t, err)
		t.Cleanup(func() { svc.Close() })
		instance = svc.Instance()
		out = append(out, svc)
	}
	return out
}

// TestReplicasRotateOnceAnHour: replicas rotating one key at the same instant make exactly
// one rotation; the others get Key Protect's "too soon" refusal.
func TestReplicasRotateOnceAnHour(t *testing.T) {
	clock := NewManualClock(t0)
	rs := replicas(t, 4, clock)
	ctx := context.Background()
	k, err := rs[0].CreateRootKey(ctx, "contended")
	require.NoError(t, err)
	_, err = rs[0].RotateKey(ctx, k.ID, nil) // the first rotation after creation is always allowed
	require.NoError(t, err)
	clock.Advance(RotationInterval)
	for round := range 5 {
		var wg sync.WaitGroup
		errs := make([]error, 8)
		start := make(chan struct{})
		for i := range errs {
			wg.Go(func() {
				<-start
				_, errs[i] = rs[i%len(rs)].RotateKey(ctx, k.ID, nil)
			})
		}
		close(start)
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
				continue
			}
			assert.ErrorIs(t, err, ErrRotationTooSoon, "round %d", round)
		}
		assert.Equal(t, 1, ok, "round %d: exactly one rotation", round)
		clock.Advance(RotationInterval)
	}
	vs, err := rs[1].ListVersions(ctx, k.ID)
	require.NoError(t, err)
	assert.Len(t, vs, 7, "creation, the first rotation and one per round")
}

// TestReplicasRunDueOnce: schedulers of several replicas running the due work at once rotate
// each due key once, expire each key once and purge each key once.
func TestReplicasRunDueOnce(t *testing.T) {
	clock := NewManualClock(t0)
	rs := replicas(t, 3, clock)
	ctx := context.Background()
	var policy, expiring, deleted []string
	for i := range 5 {
		k, err := rs[0].CreateRootKey(ctx, fmt.Sprintf("policy-%d", i))
		require.NoError(t, err)
		_, err = rs[0].SetRotationPolicy(ctx, k.ID, 1, true)
		require.NoError(t, err)
		policy = append(policy, k.ID)
		e, err := rs[0].CreateKey(ctx, CreateOptions{Name: fmt.Sprintf("expiring-%d", i), ExpirationDate: t0.Add(24 * time.Hour)})
		require.NoError(t, err)
		expiring = append(expiring, e.ID)
		d, err := rs[0].CreateRootKey(ctx, fmt.Sprintf("deleted-%d", i))
		require.NoError(t, err)
		_, err = rs[0].DeleteKey(ctx, d.ID, DeleteOptions{})
		require.NoError(t, err)
		deleted = append(deleted, d.ID)
	}
	clock.Set(t0.AddDate(0, 4, 0))
	results := make([]RunDueResult, 6)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			var err error
			results[i], err = rs[i%len(rs)].RunDue(ctx)
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	count := map[string]int{}
	for _, r := range results {
		assert.Empty(t, r.Failed)
		for _, id := range append(append(append([]string{}, r.Rotated...), r.Expired...), r.Purged...) {
			count[id]++
		}
	}
	for _, id := range append(append(append([]string{}, policy...), expiring...), deleted...) {
		assert.Equal(t, 1, count[id], "key %s: done once across the replicas", id)
	}
	for _, id := range policy {
		vs, err := rs[2].ListVersions(ctx, id)
		require.NoError(t, err)
		assert.Len(t, vs, 2, "key %s rotated once by its policy", id)
	}
	evs, err := rs[1].Events(ctx, EventFilter{Action: ActionExpire})
	require.NoError(t, err)
	assert.Len(t, evs, len(expiring), "one expiry event per key")
}

// TestReplicasShareTheFeed: a long poll on one replica wakes when another commits a
// lifecycle change, and every replica gives the same ordered feed.
func TestReplicasShareTheFeed(t *testing.T) {
	clock := NewManualClock(t0)
	rs := replicas(t, 3, clock)
	ctx := context.Background()
	head, err := rs[2].Lifecycle(ctx, "", 0)
	require.NoError(t, err)
	got := make(chan LifecyclePage, 1)
	go func() {
		page, err := rs[2].WaitLifecycle(ctx, head.Cursor, 0, time.Minute) // a hang guard: woken by NOTIFY
		assert.NoError(t, err)
		got <- page
	}()
	k, err := rs[0].CreateRootKey(ctx, "fed")
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond) // let the poll start waiting; it must be woken, not time out
	_, err = rs[0].DisableKey(ctx, k.ID)
	require.NoError(t, err)
	page := <-got
	require.Len(t, page.Events, 1)
	assert.Equal(t, LifecycleDisable, page.Events[0].Type)

	// Concurrent changes on every replica: each replica reads the same stream.
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() {
			for j := range 5 {
				k, err := r.CreateRootKey(ctx, fmt.Sprintf("k-%d-%d", i, j))
				if !assert.NoError(t, err) {
					return
				}
				_, err = r.RotateKey(ctx, k.ID, nil)
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	var feeds [][]LifecycleEvent
	for _, r := range rs {
		p, err := r.Lifecycle(ctx, head.Cursor, 0)
		require.NoError(t, err)
		feeds = append(feeds, p.Events)
	}
	require.Len(t, feeds[0], 16)
	for i, ev := range feeds[0] {
		assert.Equal(t, fmt.Sprint(i+1), ev.Cursor, "cursors follow the commit order without gaps")
	}
	assert.Equal(t, feeds[0], feeds[1])
	assert.Equal(t, feeds[0], feeds[2])
}

// TestReplicasConcurrentWrapsKeepEveryEvent: wraps on several replicas at once each store
// their audit event; sequence numbers have no gap and no duplicate.
func TestReplicasConcurrentWrapsKeepEveryEvent(t *testing.T) {
	clock := NewManualClock(t0)
	rs := replicas(t, 3, clock)
	ctx := context.Background()
	k, err := rs[0].CreateRootKey(ctx, "wraps")
	require.NoError(t, err)
	const workers, each = 12, 25
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for range each {
				_, err := rs[i%len(rs)].Wrap(ctx, k.ID, []byte("dek"), nil)
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	evs, err := rs[0].Events(ctx, EventFilter{OldestFirst: true})
	require.NoError(t, err)
	require.Len(t, evs, 1+workers*each)
	wraps := 0
	for i, ev := range evs {
		assert.Equal(t, uint64(i+1), ev.Seq)
		if ev.Action == ActionWrap {
			wraps++
		}
	}
	assert.Equal(t, workers*each, wraps)
}

// TestDatabaseRefusesWhatItCannotDo: a PostgreSQL store is never read-only, and needs the
// master key.
func TestDatabaseRefusesWhatItCannotDo(t *testing.T) {
	db := sharedDatabase(t)
	_, err := db.Open(Options{ReadOnly: true})
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = db.Open(Options{})
	assert.ErrorIs(t, err, ErrMasterKey)
	assert.False(t, errors.Is(err, ErrInvalidArgument))
}
