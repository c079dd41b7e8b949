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
	"crkvol/internal/tooltest"
)

// replicaDatabase opens a new database of t's own.
func replicaDatabase(t *testing.T) *Database {
	t.Helper()
	db, err := OpenDatabase(context.Background(), pgtest.Start(t).NewDatabase(t), nil)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// replicas opens n services of one new instance, each on its own Database (its own pool
// and listener): n processes sharing the database, as kms serve replicas do.
func replicas(t *testing.T, n int, clock Clock) []*Service {
	t.Helper()
	return replicasOn(t, pgtest.Start(t).NewDatabase(t), n, clock)
}

// replicasOn is replicas on the database at url (a new instance of it).
func replicasOn(t *testing.T, url string, n int, clock Clock) []*Service {
	t.Helper()
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
	t.Parallel() // a database of its own
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
	t.Parallel() // a database of its own
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
	t.Parallel() // a database of its own
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
	t.Parallel() // a database of its own
	clock := NewManualClock(t0)
	rs := replicas(t, 3, clock)
	ctx := context.Background()
	k, err := rs[0].CreateRootKey(ctx, "wraps")
	require.NoError(t, err)
	// 12 workers of 25 wraps in CI, 6 of 10 in a plain run.
	workers, each := tooltest.Scale(12, 6), tooltest.Scale(25, 10)
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

// TestCopyStore: a bbolt store copied into PostgreSQL (and back) lists the same keys,
// versions, registrations, events and feed, with the same sequence numbers and cursors; the
// copy goes on working where the original stopped.
func TestCopyStore(t *testing.T) {
	clock := NewManualClock(t0)
	ctx := context.Background()
	dir := t.TempDir()
	src, err := Open(filepath.Join(dir, "crk.db"), Options{Clock: clock})
	require.NoError(t, err)
	var ids []string
	for i := range 4 {
		k, err := src.CreateRootKey(ctx, fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		ids = append(ids, k.ID)
		_, err = src.Register(ctx, k.ID, fmt.Sprintf("crn:v1:local:public:is:local:a/crkvol::volume:v%d", i), RegisterOptions{})
		require.NoError(t, err)
		_, err = src.RotateKey(ctx, k.ID, nil)
		require.NoError(t, err)
	}
	_, err = src.CreateKey(ctx, CreateOptions{Name: "payload", Type: StandardKey, Material: []byte("secret")})
	require.NoError(t, err)
	_, err = src.DisableKey(ctx, ids[0])
	require.NoError(t, err)
	w, err := src.Wrap(ctx, ids[1], []byte("dek"), []string{"aad"})
	require.NoError(t, err)
	for _, h := range []string{"host-b", "host-a"} {
		require.NoError(t, src.Acknowledge(ctx, HostAck{Host: h, KeyID: ids[0], Type: LifecycleDisable, State: "suspended", Volumes: 1, Cursor: "5"}))
	}
	require.NoError(t, src.Acknowledge(ctx, HostAck{Host: "host-a", KeyID: ids[2], Type: LifecycleRotate, State: "active", Version: "v2"}))
	type listing struct {
		Keys     []Key
		Versions [][]VersionInfo
		Regs     []Registration
		Events   []Event
		Feed     LifecyclePage
		Acks     [][]HostAck
	}
	list := func(s *Service) listing {
		var l listing
		var err error
		l.Keys, err = s.ListKeys(ctx, ListOptions{States: []State{StateActive, StateSuspended, StateDeactivated, StateDestroyed}})
		require.NoError(t, err)
		for _, id := range ids {
			vs, err := s.ListVersions(ctx, id)
			require.NoError(t, err)
			l.Versions = append(l.Versions, vs)
			acks, err := s.HostAcks(ctx, id)
			require.NoError(t, err)
			for i := range acks { // the stores keep times at different precisions
				acks[i].Time = acks[i].Time.UTC().Round(time.Microsecond)
			}
			l.Acks = append(l.Acks, acks)
		}
		l.Regs, err = s.ListRegistrations(ctx, RegistrationFilter{})
		require.NoError(t, err)
		l.Feed, err = s.Lifecycle(ctx, "0", 0)
		require.NoError(t, err)
		// The listings themselves add read events: compare the events before them.
		p, err := s.ListEvents(ctx, EventFilter{OldestFirst: true, Limit: 20})
		require.NoError(t, err)
		l.Events = p.Events
		return l
	}
	before := list(src)
	keyFile := filepath.Join(dir, "crk.db.masterkey")

	db := sharedDatabase(t)
	dst, err := db.Open(Options{Clock: clock, Instance: src.Instance(), MasterKeyFile: keyFile})
	require.NoError(t, err)
	res, err := CopyStore(ctx, src, dst)
	require.NoError(t, err)
	assert.Equal(t, 5, res.Keys)
	assert.Equal(t, 4, res.Registrations)
	assert.Equal(t, 5, res.FeedEvents, "four rotations and a disable")
	assert.Equal(t, 3, res.HostAcks)
	after := list(dst)
	assert.Len(t, after.Acks[0], 2)
	assert.Equal(t, before, after)

	// The copy carries on: an old ciphertext unwraps, new events follow the old ones.
	u, err := dst.Unwrap(ctx, ids[1], w.Ciphertext, []string{"aad"})
	require.NoError(t, err)
	assert.Equal(t, "dek", string(u.Plaintext))
	clock.Advance(time.Minute) // past the enable cool-down
	_, err = dst.EnableKey(ctx, ids[0])
	require.NoError(t, err)
	p, err := dst.Lifecycle(ctx, before.Feed.Cursor, 0)
	require.NoError(t, err)
	require.Len(t, p.Events, 1)
	assert.Equal(t, "6", p.Events[0].Cursor)
	srcEvents, err := src.Events(ctx, EventFilter{Limit: 1})
	require.NoError(t, err)
	dstEvents, err := dst.Events(ctx, EventFilter{Limit: 1})
	require.NoError(t, err)
	assert.Greater(t, dstEvents[0].Seq, srcEvents[0].Seq, "sequence numbers go on from the source's")

	// A second copy into a store that holds data is refused.
	_, err = CopyStore(ctx, src, dst)
	assert.ErrorIs(t, err, ErrInvalidArgument)

	// Into a store with another master key, the material is re-encrypted under that key:
	// the copy unwraps what the source wrapped, and opens only with its own key.
	otherKey := material(32, 11)
	reDB := replicaDatabase(t)
	re, err := reDB.Open(Options{Clock: clock, Instance: src.Instance(), MasterKey: otherKey})
	require.NoError(t, err)
	_, err = CopyStore(ctx, src, re)
	require.NoError(t, err)
	u, err = re.Unwrap(ctx, ids[1], w.Ciphertext, []string{"aad"})
	require.NoError(t, err)
	assert.Equal(t, "dek", string(u.Plaintext))
	assert.Equal(t, before.Keys, list(re).Keys)
	require.NoError(t, re.Close())
	_, err = reDB.Open(Options{Clock: clock, Instance: src.Instance(), MasterKeyFile: keyFile})
	assert.ErrorIs(t, err, ErrMasterKey, "the copy is under the other key, not the source's")
	other, err := db.Open(Options{Clock: clock, Instance: src.Instance(), MasterKey: material(32, 9)})
	if err == nil { // the instance exists with the right key: the wrong one does not open it
		other.Close()
		t.Fatal("a wrong master key opened the copied instance")
	}
	assert.ErrorIs(t, err, ErrMasterKey)

	// And back to bbolt.
	require.NoError(t, src.Close())
	back, err := Open(filepath.Join(dir, "back.db"), Options{Clock: clock, Instance: dst.Instance(), MasterKeyFile: keyFile})
	require.NoError(t, err)
	defer back.Close()
	_, err = CopyStore(ctx, dst, back)
	require.NoError(t, err)
	u, err = back.Unwrap(ctx, ids[1], w.Ciphertext, []string{"aad"})
	require.NoError(t, err)
	assert.Equal(t, "dek", string(u.Plaintext))
	fb, err := back.Lifecycle(ctx, before.Feed.Cursor, 0)
	require.NoError(t, err)
	assert.Equal(t, p.Events, fb.Events)
}

// TestReplicaRefusesAfterMasterKeyRotatedElsewhere: once one process rotated the master key
// of a shared store, another still holding the old key seals nothing under it (material it
// sealed would be lost to the new key) and says to restart with the new key.
func TestReplicaRefusesAfterMasterKeyRotatedElsewhere(t *testing.T) {
	t.Parallel() // a database of its own
	clock := NewManualClock(t0)
	rs := replicas(t, 2, clock)
	ctx := context.Background()
	k, err := rs[0].CreateRootKey(ctx, "mk")
	require.NoError(t, err)
	newKey := material(32, 42)
	require.NoError(t, rs[0].RotateMasterKey(ctx, newKey))

	_, err = rs[1].CreateRootKey(ctx, "stale")
	assert.ErrorIs(t, err, ErrMasterKey)
	assert.ErrorContains(t, err, "restart this process with the new master key")
	_, err = rs[1].RotateKey(ctx, k.ID, nil)
	assert.ErrorIs(t, err, ErrMasterKey)
	_, err = rs[1].Wrap(ctx, k.ID, []byte("dek"), nil)
	assert.ErrorIs(t, err, ErrMasterKey)
	vs, err := rs[0].ListVersions(ctx, k.ID)
	require.NoError(t, err)
	assert.Len(t, vs, 1, "the refused rotation stored nothing")
	keys, err := rs[0].ListKeys(ctx, ListOptions{})
	require.NoError(t, err)
	assert.Len(t, keys, 1, "the refused create stored nothing")
	_, err = rs[0].RotateKey(ctx, k.ID, nil)
	require.NoError(t, err, "the process with the new key goes on")
}
