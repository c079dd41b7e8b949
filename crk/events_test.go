package crk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func openEvents(t *testing.T, st *testStore, path string, clock Clock, ret EventRetention) *Service {
	t.Helper()
	svc, err := st.open(path, Options{Clock: clock, MasterKey: material(32, 3), EventRetention: ret})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	return svc
}

func seqs(evs []Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// TestEventPaging: paging with a cursor returns every event exactly once, in order, while new
// events arrive between pages — including events stamped earlier than the last one because
// the clock was stepped back, and events sharing a timestamp.
func TestEventPaging(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		for _, oldestFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("oldestFirst=%v", oldestFirst), func(t *testing.T) {
				clock := NewManualClock(t0)
				svc := openEvents(t, st, filepath.Join(t.TempDir(), "crk.db"), clock, EventRetention{})
				ctx := t.Context()
				k, err := svc.CreateRootKey(ctx, "paging")
				require.NoError(t, err)
				wrap := func(n int) {
					for i := range n {
						if i%3 == 2 {
							clock.Advance(-time.Minute) // a stepped-back clock
						} else if i%3 == 0 {
							clock.Advance(time.Minute) // and two events at one time
						}
						_, err := svc.Wrap(ctx, k.ID, []byte("dek"), nil)
						require.NoError(t, err)
					}
				}
				wrap(10)
				before, err := svc.Events(ctx, EventFilter{KeyID: k.ID, OldestFirst: oldestFirst})
				require.NoError(t, err)
				require.Len(t, before, 11)
				want := seqs(before)
				inOrder := slices.IsSorted(want)
				if !oldestFirst {
					inOrder = slices.IsSortedFunc(want, func(a, b uint64) int { return int(b) - int(a) })
				}
				require.True(t, inOrder, "events in sequence order: %v", want)

				var got []uint64
				f := EventFilter{KeyID: k.ID, Limit: 4, OldestFirst: oldestFirst}
				for page := 0; ; page++ {
					p, err := svc.ListEvents(ctx, f)
					require.NoError(t, err)
					require.LessOrEqual(t, len(p.Events), 4)
					got = append(got, seqs(p.Events)...)
					if p.Next == "" {
						break
					}
					require.Less(t, page, 10, "paging does not end")
					wrap(2) // new events between pages
					f.Cursor = p.Next
				}
				if oldestFirst {
					// The new events come after the old ones.
					require.GreaterOrEqual(t, len(got), len(want))
					assert.Equal(t, want, got[:len(want)])
					assert.True(t, slices.IsSorted(got), "%v", got)
				} else {
					// Events stored after the first page do not appear in later pages.
					assert.Equal(t, want, got)
				}
			})
		}
	})
}

// TestEventPageExactFit: a page holding exactly the matching events left offers no next
// page, in either order and with a filter that skips events beyond it.
func TestEventPageExactFit(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		t.Parallel()
		svc := openEvents(t, st, filepath.Join(t.TempDir(), "crk.db"), NewManualClock(t0), EventRetention{})
		ctx := t.Context()
		a, err := svc.CreateRootKey(ctx, "key-a")
		require.NoError(t, err)
		b, err := svc.CreateRootKey(ctx, "key-b")
		require.NoError(t, err)
		for range 2 {
			_, err = svc.GetKeyMetadata(ctx, a.ID)
			require.NoError(t, err)
		}
		_, err = svc.GetKeyMetadata(ctx, b.ID) // beyond a's last event, and filtered out
		require.NoError(t, err)
		all, err := svc.ListEvents(ctx, EventFilter{KeyID: a.ID})
		require.NoError(t, err)
		n := len(all.Events)
		require.GreaterOrEqual(t, n, 3)
		for _, oldest := range []bool{false, true} {
			page, err := svc.ListEvents(ctx, EventFilter{KeyID: a.ID, Limit: n, OldestFirst: oldest})
			require.NoError(t, err)
			assert.Len(t, page.Events, n)
			assert.Empty(t, page.Next, "oldest first %v: no next page after an exact fit", oldest)
			page, err = svc.ListEvents(ctx, EventFilter{KeyID: a.ID, Limit: n - 1, OldestFirst: oldest})
			require.NoError(t, err)
			require.NotEmpty(t, page.Next, "oldest first %v: one more event", oldest)
			rest, err := svc.ListEvents(ctx, EventFilter{KeyID: a.ID, Limit: n, OldestFirst: oldest, Cursor: page.Next})
			require.NoError(t, err)
			assert.Len(t, rest.Events, 1)
			assert.Empty(t, rest.Next)
		}
	})
}

func TestEventFilterErrors(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		tests := []struct {
			name string
			f    EventFilter
		}{
			{"negative limit", EventFilter{Limit: -1}},
			{"cursor not hex", EventFilter{Cursor: "zz"}},
			{"cursor too short", EventFilter{Cursor: "0011"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := f.svc.ListEvents(f.ctx, tc.f)
				assert.ErrorIs(t, err, ErrInvalidArgument)
			})
		}
	})
}

// TestEventFilterKey: a key filter naming a key the service never knew is an error naming
// it (ErrKeyNotFound), without recording an event; a deleted key is known, and so is an id
// that events name (a request refused for it).
func TestEventFilterKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		live := f.root(t, "live")
		deleted := f.root(t, "deleted")
		_, err := f.svc.DeleteKey(f.ctx, deleted.ID, DeleteOptions{})
		require.NoError(t, err)
		const probed = "22222222-2222-4222-8222-222222222222"
		_, err = f.svc.GetKeyMetadata(f.ctx, probed)
		require.ErrorIs(t, err, ErrKeyNotFound)
		const unknown = "11111111-1111-4111-8111-111111111111"

		tests := []struct {
			name    string
			id      string
			wantErr bool
			action  string // an action among the events listed
		}{
			{"live", live.ID, false, ActionCreate},
			{"deleted", deleted.ID, false, ActionDelete},
			{"named by a refused request", probed, false, ActionReadMetadata},
			{"unknown", unknown, true, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before, err := f.svc.Events(f.ctx, EventFilter{})
				require.NoError(t, err)
				evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: tc.id})
				if tc.wantErr {
					require.ErrorIs(t, err, ErrKeyNotFound)
					assert.Contains(t, err.Error(), tc.id)
					after, err := f.svc.Events(f.ctx, EventFilter{})
					require.NoError(t, err)
					assert.Equal(t, len(before), len(after), "listing records no event")
					return
				}
				require.NoError(t, err)
				var actions []string
				for _, e := range evs {
					assert.Equal(t, tc.id, e.KeyID)
					actions = append(actions, e.Action)
				}
				assert.Contains(t, actions, tc.action)
			})
		}
	})
}

// TestEventRetention: events beyond the retention's count or age are deleted, oldest first,
// as events are appended and when a store opens with a tighter retention.
func TestEventRetention(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		tests := []struct {
			name   string
			ret    EventRetention
			events int           // wraps after the create event
			step   time.Duration // clock step before each wrap
			want   int           // events kept
		}{
			{"count", EventRetention{MaxCount: 5}, 20, 0, 5},
			{"age", EventRetention{MaxAge: time.Hour}, 20, 10 * time.Minute, 7}, // 0 to 60 minutes old
			{"both, count binds", EventRetention{MaxCount: 3, MaxAge: time.Hour}, 20, time.Minute, 3},
			{"no limit", EventRetention{MaxCount: -1}, 20, time.Minute, 21},
			{"default", EventRetention{}, 20, 0, 21},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				clock := NewManualClock(t0)
				svc := openEvents(t, st, filepath.Join(t.TempDir(), "crk.db"), clock, tc.ret)
				ctx := t.Context()
				k, err := svc.CreateRootKey(ctx, "retention")
				require.NoError(t, err)
				for range tc.events {
					clock.Advance(tc.step)
					_, err := svc.Wrap(ctx, k.ID, []byte("dek"), nil)
					require.NoError(t, err)
				}
				evs, err := svc.Events(ctx, EventFilter{})
				require.NoError(t, err)
				require.Len(t, evs, tc.want)
				assert.Equal(t, uint64(tc.events+1), evs[0].Seq, "the newest event is kept")
				assert.Equal(t, uint64(tc.events+2-tc.want), evs[len(evs)-1].Seq, "the oldest are deleted")
			})
		}

		t.Run("tightened at open", func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "crk.db")
			clock := NewManualClock(t0)
			svc, err := st.open(path, Options{Clock: clock, MasterKey: material(32, 3)})
			require.NoError(t, err)
			k, err := svc.CreateRootKey(t.Context(), "retention")
			require.NoError(t, err)
			for range 2 * pruneBatch {
				_, err := svc.Wrap(t.Context(), k.ID, []byte("dek"), nil)
				require.NoError(t, err)
			}
			require.NoError(t, svc.Close())
			svc = openEvents(t, st, path, clock, EventRetention{MaxCount: 10})
			evs, err := svc.Events(t.Context(), EventFilter{})
			require.NoError(t, err)
			assert.Len(t, evs, 10, "more than one append's batch deleted at open")
		})
	})
}

var errInjected = errors.New("injected audit failure")

// TestAuditFailureFailsOperation: when its audit event cannot be stored, an operation fails
// with ErrAudit and changes nothing (Key Protect's rule: an operation without its audit
// record did not happen).
func TestAuditFailureFailsOperation(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		const crn = "crn:v1:local:public:is:local:a/crkvol::volume:audit"
		type state struct {
			keys, versions, regs int
			keyState             State
		}
		tests := []struct {
			name   string
			action string
			op     func(f *fixture, k *Key, ct []byte) (secret []byte, err error)
		}{
			{"create", ActionCreate, func(f *fixture, _ *Key, _ []byte) ([]byte, error) {
				_, err := f.svc.CreateRootKey(f.ctx, "second")
				return nil, err
			}},
			{"rotate", ActionRotate, func(f *fixture, k *Key, _ []byte) ([]byte, error) {
				_, err := f.svc.RotateKey(f.ctx, k.ID, nil)
				return nil, err
			}},
			{"disable", ActionDisable, func(f *fixture, k *Key, _ []byte) ([]byte, error) {
				_, err := f.svc.DisableKey(f.ctx, k.ID)
				return nil, err
			}},
			{"register", ActionRegister, func(f *fixture, k *Key, _ []byte) ([]byte, error) {
				_, err := f.svc.Register(f.ctx, k.ID, crn, RegisterOptions{})
				return nil, err
			}},
			{"master key rotation", ActionMasterKeyRotate, func(f *fixture, _ *Key, _ []byte) ([]byte, error) {
				return nil, f.svc.RotateMasterKey(f.ctx, material(32, 99))
			}},
			{"wrap", ActionWrap, func(f *fixture, k *Key, _ []byte) ([]byte, error) {
				w, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
				if w != nil {
					return w.Ciphertext, err
				}
				return nil, err
			}},
			{"unwrap", ActionUnwrap, func(f *fixture, k *Key, ct []byte) ([]byte, error) {
				u, err := f.svc.Unwrap(f.ctx, k.ID, ct, nil)
				if u != nil {
					return u.Plaintext, err
				}
				return nil, err
			}},
			{"list", ActionList, func(f *fixture, _ *Key, _ []byte) ([]byte, error) {
				keys, err := f.svc.ListKeys(f.ctx, ListOptions{})
				if keys != nil {
					return []byte("a listing"), err
				}
				return nil, err
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				f := newFixture(t, st)
				k := f.root(t, "audited")
				w, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
				require.NoError(t, err)
				f.clock.Advance(2 * time.Hour)
				snapshot := func() state {
					var st state
					require.NoError(t, f.svc.view(t.Context(), func(tx storeTx) error {
						st = state{}
						if err := tx.keys(false, func(*keyRecord) error { st.keys++; return nil }); err != nil {
							return err
						}
						if err := tx.regs(func(*regRecord) error { st.regs++; return nil }); err != nil {
							return err
						}
						r, err := tx.key(k.ID)
						if err != nil {
							return err
						}
						st.versions, st.keyState = len(r.Versions), r.State
						return nil
					}))
					return st
				}
				before := snapshot()
				nEvents := countEvents(t, f.svc)

				var failedEvents []*Event
				f.svc.testOnlyAuditFault = func(ev *Event) error {
					if ev.Action == tc.action {
						failedEvents = append(failedEvents, ev)
						return errInjected
					}
					return nil
				}
				secret, err := tc.op(f, k, w.Ciphertext)
				for _, ev := range failedEvents {
					assert.Equal(t, OutcomeSuccess, ev.Outcome, "no failure event is written after the audit log failed")
				}
				require.ErrorIs(t, err, ErrAudit)
				require.ErrorIs(t, err, errInjected)
				assert.Nil(t, secret, "nothing returned")
				assert.False(t, IsUserError(err), "an internal failure, not a refusal")
				assert.Equal(t, before, snapshot(), "no state changed")

				f.svc.testOnlyAuditFault = nil
				assert.Equal(t, nEvents, countEvents(t, f.svc), "no event was stored either")
				if tc.action != ActionMasterKeyRotate {
					_, err = f.svc.Unwrap(f.ctx, k.ID, w.Ciphertext, nil)
					require.NoError(t, err, "the service still works")
				}
				_, err = tc.op(f, k, w.Ciphertext)
				require.NoError(t, err, "and the operation succeeds once events can be stored")
			})
		}
	})
}

func countEvents(t *testing.T, svc *Service) int {
	t.Helper()
	evs, err := svc.Events(t.Context(), EventFilter{})
	require.NoError(t, err)
	return len(evs)
}

// TestMigrateSchema1Events: a store written by a build that keyed events by sequence number
// opens, its events are rekeyed by time in one transaction, listing and paging see every old
// event in order, and new events follow them.
func TestMigrateSchema1Events(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crk.db")
	clock := NewManualClock(t0)
	svc, err := Open(path, Options{Clock: clock, MasterKey: material(32, 3)})
	require.NoError(t, err)
	ctx := t.Context()
	k, err := svc.CreateRootKey(ctx, "old")
	require.NoError(t, err)
	for i := range 6 {
		clock.Advance(time.Duration(1-i%2*2) * time.Minute) // forwards, backwards, ...
		_, err := svc.Wrap(ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)
	}
	require.NoError(t, svc.Close())

	// Rewrite the store as schema 1 wrote it: events keyed by their sequence number alone.
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	var oldRaw [][]byte
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		seq := b.Sequence()
		if err := b.ForEach(func(k, v []byte) error { oldRaw = append(oldRaw, slices.Clone(v)); return nil }); err != nil {
			return err
		}
		if err := tx.DeleteBucket(bucketEvents); err != nil {
			return err
		}
		nb, err := tx.CreateBucket(bucketEvents)
		if err != nil {
			return err
		}
		if err := nb.SetSequence(seq); err != nil {
			return err
		}
		for i, raw := range oldRaw {
			var key [8]byte
			binary.BigEndian.PutUint64(key[:], uint64(i+1))
			if err := nb.Put(key[:], raw); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(metaSchema, []byte("1"))
	}))
	require.NoError(t, db.Close())
	require.Len(t, oldRaw, 7)

	svc = openEvents(t, &testStore{kind: "bolt"}, path, clock, EventRetention{})
	evs, err := svc.Events(ctx, EventFilter{OldestFirst: true})
	require.NoError(t, err)
	assert.Equal(t, []uint64{1, 2, 3, 4, 5, 6, 7}, seqs(evs))
	assert.Equal(t, ActionCreate, evs[0].Action)
	_, err = svc.Wrap(ctx, k.ID, []byte("dek"), nil)
	require.NoError(t, err)
	p, err := svc.ListEvents(ctx, EventFilter{Limit: 5})
	require.NoError(t, err)
	assert.Equal(t, []uint64{8, 7, 6, 5, 4}, seqs(p.Events), "the new event is the newest")
	p, err = svc.ListEvents(ctx, EventFilter{Limit: 5, Cursor: p.Next})
	require.NoError(t, err)
	assert.Equal(t, []uint64{3, 2, 1}, seqs(p.Events))
	require.NoError(t, svc.store.(*boltBackend).db.View(func(tx *bolt.Tx) error {
		assert.Equal(t, schemaVersion, string(tx.Bucket(bucketMeta).Get(metaSchema)))
		return tx.Bucket(bucketEvents).ForEach(func(k, _ []byte) error {
			assert.Len(t, k, eventKeyLen)
			return nil
		})
	}))

	// A schema this build does not know is refused.
	require.NoError(t, svc.Close())
	db, err = bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaSchema, []byte("3")) }))
	require.NoError(t, db.Close())
	_, err = Open(path, Options{Clock: clock, MasterKey: material(32, 3)})
	assert.ErrorContains(t, err, "schema")
}

// TestAuditFailureIsolated: events are group-committed, but one event that cannot be stored
// fails only its own request, not the requests that shared its transaction.
func TestAuditFailureIsolated(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		bad, good := f.root(t, "bad"), f.root(t, "good")
		f.svc.testOnlyAuditFault = func(ev *Event) error {
			if ev.KeyID == bad.ID {
				return errInjected
			}
			return nil
		}
		var wg sync.WaitGroup
		errs := make([]error, 40)
		for i := range errs {
			wg.Go(func() {
				k := good
				if i%2 == 0 {
					k = bad
				}
				_, errs[i] = f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
			})
		}
		wg.Wait()
		for i, err := range errs {
			if i%2 == 0 {
				assert.ErrorIs(t, err, ErrAudit, "wrap %d", i)
			} else {
				assert.NoError(t, err, "wrap %d", i)
			}
		}
		f.svc.testOnlyAuditFault = nil
		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: good.ID, Action: ActionWrap})
		require.NoError(t, err)
		assert.Len(t, evs, 20)
	})
}

// TestRefusalAudit: a refusal is recorded even when its caller's context has ended since (a
// client cannot hide its refused attempts by going away); a refusal whose record cannot be
// stored is the audit's failure first (a 5xx, without the store's details), still the
// refusal for errors.Is.
func TestRefusalAudit(t *testing.T) {
	f := newFixture(t, &testStore{kind: "bolt"}) // bbolt transactions do not end with ctx
	k := f.root(t, "refused")
	_, err := f.svc.DisableKey(f.ctx, k.ID)
	require.NoError(t, err)
	failures := func() int {
		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, Action: ActionWrap})
		require.NoError(t, err)
		return len(evs)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	cancel()
	_, err = f.svc.Wrap(ctx, k.ID, []byte("dek"), nil)
	require.ErrorIs(t, err, ErrKeySuspended)
	assert.Equal(t, 1, failures(), "the refusal of a call whose context ended is recorded")

	f.svc.testOnlyAuditFault = func(ev *Event) error {
		if ev.Outcome == OutcomeFailure {
			return errInjected
		}
		return nil
	}
	_, err = f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
	require.ErrorIs(t, err, ErrKeySuspended)
	require.ErrorIs(t, err, ErrAudit)
	info, ok := LookupError(err)
	require.True(t, ok)
	assert.Equal(t, ErrAudit, info.Err, "answered as the audit's failure")
}

// TestEventFilterOutcome: an outcome filter lists only the events of that outcome, newest
// first, across pages and together with a key filter; an unknown outcome is refused.
func TestEventFilterOutcome(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "outcomes")
		for range 3 {
			_, err := f.svc.EnableKey(f.ctx, k.ID) // refused: the key is active
			require.ErrorIs(t, err, ErrInvalidState)
		}
		_, err := f.svc.Wrap(f.ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)

		tests := []struct {
			name    string
			f       EventFilter
			outcome string
			want    []string // actions, newest first
		}{
			{"failures of the key", EventFilter{KeyID: k.ID, Outcome: OutcomeFailure}, OutcomeFailure,
				[]string{ActionEnable, ActionEnable, ActionEnable}},
			{"successes of the key", EventFilter{KeyID: k.ID, Outcome: OutcomeSuccess}, OutcomeSuccess,
				[]string{ActionWrap, ActionCreate}},
			{"failed enables", EventFilter{Action: ActionEnable, Outcome: OutcomeFailure}, OutcomeFailure,
				[]string{ActionEnable, ActionEnable, ActionEnable}},
			{"successful enables", EventFilter{Action: ActionEnable, Outcome: OutcomeSuccess}, OutcomeSuccess, nil},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				var got []string
				flt := tc.f
				flt.Limit = 2
				for page := 0; ; page++ {
					p, err := f.svc.ListEvents(f.ctx, flt)
					require.NoError(t, err)
					for _, e := range p.Events {
						assert.Equal(t, tc.outcome, e.Outcome)
						got = append(got, e.Action)
					}
					if p.Next == "" {
						break
					}
					require.Less(t, page, 5, "paging does not end")
					flt.Cursor = p.Next
				}
				assert.Equal(t, tc.want, got)
			})
		}
		_, err = f.svc.ListEvents(f.ctx, EventFilter{Outcome: "maybe"})
		assert.ErrorIs(t, err, ErrInvalidArgument)
		assert.ErrorContains(t, err, "maybe")
	})
}
