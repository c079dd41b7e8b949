package crk

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"crkvol/internal/pgtest"
)

// batchStores runs fn on a bbolt store and on an instance of the shared PostgreSQL
// database (skipped without PostgreSQL, failed under CI=true): the batch calls' one-commit
// promise is checked on both in every run.
func batchStores(t *testing.T, fn func(t *testing.T, f *fixture)) {
	t.Run("bolt", func(t *testing.T) { fn(t, newFixture(t, &testStore{kind: "bolt"})) })
	t.Run("postgres", func(t *testing.T) {
		st := &testStore{kind: "postgres", db: sharedDatabase(t), instances: map[string]string{}}
		fn(t, newFixture(t, st))
	})
}

// countBatchEvents returns how many events of action and outcome the service holds.
func countBatchEvents(t *testing.T, f *fixture, action, outcome string) int {
	t.Helper()
	evs, err := f.svc.Events(f.ctx, EventFilter{Action: action, Outcome: outcome})
	require.NoError(t, err)
	return len(evs)
}

// commitDelta runs fn and returns the commits the store made meanwhile.
func commitDelta(f *fixture, fn func()) uint64 {
	before := f.svc.StoreStats()
	fn()
	return f.svc.StoreStats().Commits - before.Commits
}

func TestRewrapBatch(t *testing.T) {
	batchStores(t, func(t *testing.T, f *fixture) {
		k := f.root(t, "batch")
		other := f.root(t, "other")
		aad := func(i int) []string { return []string{"volume-" + string(rune('a'+i))} }
		var items []RewrapItem
		for i := range 3 {
			w, err := f.svc.Wrap(f.ctx, k.ID, material(32, byte(i)), aad(i))
			require.NoError(t, err)
			items = append(items, RewrapItem{Ciphertext: w.Ciphertext, AAD: aad(i)})
		}
		r2, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		w, err := f.svc.Wrap(f.ctx, k.ID, material(32, 9), aad(3))
		require.NoError(t, err)
		items = append(items, RewrapItem{Ciphertext: w.Ciphertext, AAD: aad(3)}) // on the latest already
		wo, err := f.svc.Wrap(f.ctx, other.ID, material(32, 7), aad(4))
		require.NoError(t, err)
		items = append(items,
			RewrapItem{Ciphertext: wo.Ciphertext, AAD: aad(4)},            // another key's
			RewrapItem{Ciphertext: items[0].Ciphertext, AAD: aad(1)},      // wrong AAD
			RewrapItem{Ciphertext: []byte("not a ciphertext at all, no")}, // garbage
		)
		okBefore := countBatchEvents(t, f, ActionRewrap, OutcomeSuccess)
		failBefore := countBatchEvents(t, f, ActionRewrap, OutcomeFailure)
		var res []*RewrapResult
		var errs []error
		commits := commitDelta(f, func() { res, errs, err = f.svc.RewrapBatch(f.ctx, k.ID, items) })
		require.NoError(t, err)
		assert.Equal(t, uint64(1), commits, "one commit for the whole batch")
		require.Len(t, res, len(items))
		require.Len(t, errs, len(items))
		for i := range 4 {
			require.NoError(t, errs[i], "item %d", i)
			assert.Equal(t, r2.KeyVersion.ID, res[i].KeyVersion.ID)
			u, err := f.svc.Unwrap(f.ctx, k.ID, res[i].Ciphertext, aad(i))
			require.NoError(t, err)
			assert.Equal(t, material(32, map[int]byte{0: 0, 1: 1, 2: 2, 3: 9}[i]), u.Plaintext)
		}
		assert.Equal(t, k.KeyVersion.ID, res[0].OldVersion.ID)
		assert.Equal(t, r2.KeyVersion.ID, res[3].OldVersion.ID)
		for i := 4; i < len(items); i++ {
			assert.ErrorIs(t, errs[i], ErrAuth, "item %d", i)
			assert.Nil(t, res[i])
		}
		assert.Equal(t, okBefore+4, countBatchEvents(t, f, ActionRewrap, OutcomeSuccess))
		assert.Equal(t, failBefore+3, countBatchEvents(t, f, ActionRewrap, OutcomeFailure))

		// A key that cannot rewrap refuses the whole batch, audited by one event that counts
		// the items.
		_, err = f.svc.DisableKey(f.ctx, k.ID)
		require.NoError(t, err)
		failBefore = countBatchEvents(t, f, ActionRewrap, OutcomeFailure)
		commits = commitDelta(f, func() { res, errs, err = f.svc.RewrapBatch(f.ctx, k.ID, items[:3]) })
		assert.ErrorIs(t, err, ErrKeySuspended)
		assert.Nil(t, res)
		assert.Nil(t, errs)
		assert.Equal(t, uint64(1), commits)
		assert.Equal(t, failBefore+1, countBatchEvents(t, f, ActionRewrap, OutcomeFailure))

		// Batch sizes.
		for _, n := range []int{0, MaxBatchItems + 1} {
			_, _, err = f.svc.RewrapBatch(f.ctx, other.ID, make([]RewrapItem, n))
			assert.ErrorIs(t, err, ErrInvalidArgument, "%d items", n)
		}
		_, _, err = f.svc.RewrapBatch(f.ctx, "no-such-key", items[:1])
		assert.ErrorIs(t, err, ErrKeyNotFound)
	})
}

func TestUpdateRegistrationVersions(t *testing.T) {
	batchStores(t, func(t *testing.T, f *fixture) {
		k := f.root(t, "regs")
		crn := func(i int) string { return "crn:v1:local:public:is:local:a/crkvol::volume:v" + string(rune('a'+i)) }
		for i := range 3 {
			_, err := f.svc.Register(f.ctx, k.ID, crn(i), RegisterOptions{})
			require.NoError(t, err)
		}
		v1 := k.KeyVersion.ID
		r2, err := f.svc.RotateKey(f.ctx, k.ID, nil)
		require.NoError(t, err)
		v2 := r2.KeyVersion.ID
		_, err = f.svc.UpdateRegistration(f.ctx, k.ID, crn(2), RegistrationUpdate{VersionID: &v2})
		require.NoError(t, err)
		updates := []RegistrationVersion{
			{CRN: crn(0), VersionID: v2},
			{CRN: crn(1), VersionID: v1}, // stays on v1
			{CRN: crn(2), VersionID: v1}, // on v2 already: not moved back
			{CRN: crn(5), VersionID: v2}, // no such registration
			{CRN: crn(1), VersionID: "5e0cf8d8-6c5e-4a3a-9d0e-8f0b8c0d0e0f"},
			{CRN: "not a crn", VersionID: v2},
		}
		okBefore := countBatchEvents(t, f, ActionRegUpdate, OutcomeSuccess)
		failBefore := countBatchEvents(t, f, ActionRegUpdate, OutcomeFailure)
		var errs []error
		commits := commitDelta(f, func() { errs, err = f.svc.UpdateRegistrationVersions(f.ctx, k.ID, updates) })
		require.NoError(t, err)
		assert.Equal(t, uint64(1), commits, "one commit for the whole batch")
		require.Len(t, errs, len(updates))
		for i := range 3 {
			assert.NoError(t, errs[i], "update %d", i)
		}
		assert.ErrorIs(t, errs[3], ErrRegistrationNotFound)
		assert.ErrorIs(t, errs[4], ErrVersionNotFound)
		assert.ErrorIs(t, errs[5], ErrInvalidArgument)
		regs, err := f.svc.ListRegistrations(f.ctx, RegistrationFilter{KeyID: k.ID})
		require.NoError(t, err)
		got := map[string]string{}
		for _, r := range regs {
			got[r.ResourceCRN] = r.KeyVersion.ID
		}
		assert.Equal(t, map[string]string{crn(0): v2, crn(1): v1, crn(2): v2}, got)
		assert.Equal(t, okBefore+3, countBatchEvents(t, f, ActionRegUpdate, OutcomeSuccess))
		assert.Equal(t, failBefore+3, countBatchEvents(t, f, ActionRegUpdate, OutcomeFailure))

		// A destroyed key refuses every update, audited by one event that counts them.
		_, err = f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{Force: true})
		require.NoError(t, err)
		failBefore = countBatchEvents(t, f, ActionRegUpdate, OutcomeFailure)
		_, err = f.svc.UpdateRegistrationVersions(f.ctx, k.ID, updates[:2])
		assert.ErrorIs(t, err, ErrKeyDestroyed)
		assert.Equal(t, failBefore+1, countBatchEvents(t, f, ActionRegUpdate, OutcomeFailure))
		page, err := f.svc.ListEvents(f.ctx, EventFilter{KeyID: k.ID, Action: ActionRegUpdate, Outcome: OutcomeFailure, Limit: 1})
		require.NoError(t, err)
		require.Len(t, page.Events, 1)
		assert.Contains(t, page.Events[0].Reason, "(a batch of 2, refused as a whole)")
		for _, n := range []int{0, MaxBatchItems + 1} {
			_, err = f.svc.UpdateRegistrationVersions(f.ctx, k.ID, make([]RegistrationVersion, n))
			assert.ErrorIs(t, err, ErrInvalidArgument, "%d updates", n)
		}
	})
}

// TestBoltStoreStats: a bbolt commit is 2 flushes, plus 1 when it grows the file; bbolt's
// db.Batch shares one commit among concurrent callers, counted once; NoSync leaves only the
// growth syncs.
func TestBoltStoreStats(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "crk.db")
		svc, err := Open(path, Options{NoSync: noSync})
		require.NoError(t, err)
		defer svc.Close()
		ctx := context.Background()
		c := svc.store.(*boltBackend).counter
		opened, txOpen := svc.StoreStats(), txid(t, svc)
		before := opened
		k, err := svc.CreateRootKey(ctx, "stats")
		require.NoError(t, err)
		st := svc.StoreStats()
		assert.Equal(t, uint64(1), st.Commits-before.Commits, "noSync %v", noSync)
		// Grow the file: many events.
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:x"
		_, err = svc.Register(ctx, k.ID, crn, RegisterOptions{})
		require.NoError(t, err)
		updates := make([]RegistrationVersion, MaxBatchItems)
		for i := range updates {
			updates[i] = RegistrationVersion{CRN: crn, VersionID: k.KeyVersion.ID}
		}
		growths := c.growths.Load()
		for range 2 {
			_, err := svc.UpdateRegistrationVersions(ctx, k.ID, updates)
			require.NoError(t, err)
		}
		st = svc.StoreStats()
		grew := c.growths.Load() - growths
		assert.Positive(t, grew, "2000 events grow the file")
		want := c.growths.Load()
		if !noSync {
			want += 2 * st.Commits
		}
		assert.Equal(t, want, st.Flushes, "noSync %v", noSync)

		// db.Batch: concurrent registration updates may share commits; each is counted once.
		before, txBefore := svc.StoreStats(), txid(t, svc)
		done := make(chan error)
		for range 16 {
			go func() {
				_, err := svc.UpdateRegistration(ctx, k.ID, crn, RegistrationUpdate{VersionID: &k.KeyVersion.ID, NoDowngrade: true})
				done <- err
			}()
		}
		for range 16 {
			require.NoError(t, <-done)
		}
		after := svc.StoreStats()
		assert.Equal(t, txid(t, svc)-txBefore, after.Commits-before.Commits, "one count per bbolt transaction committed")
		assert.Equal(t, txid(t, svc)-txOpen, after.Commits-opened.Commits)
	}
}

// txid is the id of the last write transaction bbolt committed (the meta page's): the
// count of commits the store made, to check StoreStats against.
func txid(t *testing.T, svc *Service) uint64 {
	var id int
	require.NoError(t, svc.store.(*boltBackend).db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }))
	return uint64(id)
}

// TestPGStoreStats: a PostgreSQL commit counts one WAL flush when the database commits
// synchronously, none when synchronous_commit is off (as the test clusters run). The
// setting is the sessions' (a runtime parameter of the URL).
func TestPGStoreStats(t *testing.T) {
	ctx := context.Background()
	base := pgtest.Start(t).SharedDatabase(t, "crk_tests")
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	for _, sync := range []string{"off", "on"} {
		db, err := OpenDatabase(ctx, base+sep+"synchronous_commit="+sync, nil)
		require.NoError(t, err)
		svc, err := db.Open(Options{MasterKeyFile: filepath.Join(t.TempDir(), "master.key")})
		require.NoError(t, err)
		before := svc.StoreStats()
		_, err = svc.CreateRootKey(ctx, "stats")
		require.NoError(t, err)
		st := svc.StoreStats()
		assert.Equal(t, uint64(1), st.Commits-before.Commits, sync)
		want := uint64(0)
		if sync == "on" {
			want = st.Commits
		}
		assert.Equal(t, want, st.Flushes, "synchronous_commit %s", sync)
		require.NoError(t, svc.Close())
		require.NoError(t, db.Close())
	}
}
