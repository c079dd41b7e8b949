package crk

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// TestAcknowledgeValidation: every malformed field of an acknowledgement is refused with the
// sentinel that says why, naming the field, and the refusal is audited.
func TestAcknowledgeValidation(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "acked")
		f.register(t, k.ID, 2)
		std, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "std", Type: StandardKey})
		require.NoError(t, err)
		good := HostAck{Host: "web-1.example.com", KeyID: k.ID, Type: LifecycleDisable, State: "suspended", Volumes: 2, Stopped: 1, Cursor: "1"}
		with := func(fn func(a *HostAck)) HostAck {
			a := good
			fn(&a)
			return a
		}
		cases := []struct {
			name string
			ack  HostAck
			err  error
			msg  string
		}{
			{"empty host", with(func(a *HostAck) { a.Host = "" }), ErrInvalidArgument, "host name"},
			{"long host", with(func(a *HostAck) { a.Host = strings.Repeat("h", 254) }), ErrInvalidArgument, "host name"},
			{"host with space", with(func(a *HostAck) { a.Host = "web 1" }), ErrInvalidArgument, "host name"},
			{"host with slash", with(func(a *HostAck) { a.Host = "web/1" }), ErrInvalidArgument, "host name"},
			{"host not ASCII", with(func(a *HostAck) { a.Host = "wéb" }), ErrInvalidArgument, "host name"},
			{"no key", with(func(a *HostAck) { a.KeyID = "" }), ErrInvalidArgument, "key id"},
			{"unknown key", with(func(a *HostAck) { a.KeyID = "0c9a8d1e-0000-4000-8000-000000000000" }), ErrKeyNotFound, ""},
			{"standard key", with(func(a *HostAck) { a.KeyID = std.ID }), ErrNotRootKey, "standard key"},
			{"unknown type", with(func(a *HostAck) { a.Type = "expire" }), ErrInvalidArgument, "type"},
			{"empty type", with(func(a *HostAck) { a.Type = "" }), ErrInvalidArgument, "type"},
			{"unknown state", with(func(a *HostAck) { a.State = "locked" }), ErrInvalidArgument, "state"},
			{"state number", with(func(a *HostAck) { a.State = "2" }), ErrInvalidArgument, "state"},
			{"negative volumes", with(func(a *HostAck) { a.Volumes = -1 }), ErrInvalidArgument, "volumes"},
			{"more volumes than registrations", with(func(a *HostAck) { a.Volumes = 999999999999 }), ErrInvalidArgument,
				"acknowledgement volumes 999999999999: key " + k.ID + " has 2 registration(s)"},
			{"one volume too many", with(func(a *HostAck) { a.Volumes = 3 }), ErrInvalidArgument, "volumes 3: key " + k.ID + " has 2 registration(s)"},
			{"negative stopped", with(func(a *HostAck) { a.Stopped = -1 }), ErrInvalidArgument, "stopped -1"},
			{"more stopped than volumes", with(func(a *HostAck) { a.Stopped = 3 }), ErrInvalidArgument, "stopped 3: must be 0 to volumes (2)"},
			{"pre-activation", with(func(a *HostAck) { a.State = "pre-activation" }), ErrInvalidArgument, "state pre-activation"},
			{"disable active", with(func(a *HostAck) { a.State = "active" }), ErrInvalidArgument, "type disable with state active: an event of type disable leaves key " + k.ID + " suspended"},
			{"disable destroyed", with(func(a *HostAck) { a.State = "destroyed" }), ErrInvalidArgument, "type disable with state destroyed"},
			{"delete suspended", with(func(a *HostAck) { a.Type = LifecycleDelete }), ErrInvalidArgument, "type delete with state suspended: an event of type delete leaves key " + k.ID + " destroyed"},
			{"purge active", with(func(a *HostAck) { a.Type, a.State = LifecyclePurge, "active" }), ErrInvalidArgument, "type purge with state active"},
			{"enable suspended", with(func(a *HostAck) { a.Type = LifecycleEnable }), ErrInvalidArgument, "type enable with state suspended: an event of type enable leaves key " + k.ID + " active"},
			{"enable deactivated unexpired", with(func(a *HostAck) { a.Type, a.State = LifecycleEnable, "deactivated" }), ErrInvalidArgument, "type enable with state deactivated"},
			{"restore destroyed", with(func(a *HostAck) { a.Type, a.State = LifecycleRestore, "destroyed" }), ErrInvalidArgument, "type restore with state destroyed"},
			{"rotate suspended", with(func(a *HostAck) { a.Type = LifecycleRotate }), ErrInvalidArgument, "type rotate with state suspended: an event of type rotate leaves key " + k.ID + " active or deactivated"},
			{"sync destroyed", with(func(a *HostAck) { a.Type, a.State = LifecycleSync, "destroyed" }), ErrInvalidArgument, "type sync with state destroyed"},
			{"bad cursor", with(func(a *HostAck) { a.Cursor = "01" }), ErrInvalidArgument, "cursor"},
			{"long cursor", with(func(a *HostAck) { a.Cursor = strings.Repeat("9", 300) }), ErrInvalidArgument, "cursor"},
			{"version with space", with(func(a *HostAck) { a.Version = "v 1" }), ErrInvalidArgument, "version"},
			{"long version", with(func(a *HostAck) { a.Version = strings.Repeat("v", 129) }), ErrInvalidArgument, "version"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				err := f.svc.Acknowledge(f.ctx, c.ack)
				require.ErrorIs(t, err, c.err)
				assert.Contains(t, err.Error(), c.msg)
			})
		}
		acks, err := f.svc.HostAcks(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Empty(t, acks, "no refused acknowledgement was kept")
		evs, err := f.svc.Events(f.ctx, EventFilter{Action: ActionEventAck})
		require.NoError(t, err)
		require.Len(t, evs, len(cases), "every refusal is audited")
		for _, ev := range evs {
			assert.Equal(t, OutcomeFailure, ev.Outcome)
		}

		// The good one, with a host of the longest size and every allowed byte, and a
		// reconciliation's empty cursor.
		require.NoError(t, f.svc.Acknowledge(f.ctx, good))
		long := with(func(a *HostAck) { a.Host, a.Cursor = strings.Repeat("a", 249)+"_.-:", "" })
		require.NoError(t, f.svc.Acknowledge(f.ctx, long))
		_, err = f.svc.HostAcks(f.ctx, "0c9a8d1e-0000-4000-8000-000000000000")
		assert.ErrorIs(t, err, ErrKeyNotFound)
	})
}

// TestHostAcks: a key keeps each host's latest acknowledgement, stamped by the service clock
// and listed by host name; every acknowledgement is an audit event saying what the host did.
func TestHostAcks(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "fleet")
		f.register(t, k.ID, 3)
		other := f.root(t, "other")
		acks, err := f.svc.HostAcks(f.ctx, k.ID)
		require.NoError(t, err)
		assert.NotNil(t, acks)
		assert.Empty(t, acks)

		_, err = f.svc.DisableKey(f.ctx, k.ID)
		require.NoError(t, err)
		page, err := f.svc.Lifecycle(f.ctx, "0", 0)
		require.NoError(t, err)
		require.Len(t, page.Events, 1)
		cur := page.Events[0].Cursor
		api := WithInitiator(f.ctx, "kpapi:0123456789abcdef")
		for _, h := range []string{"web-2", "db-1", "web-1"} {
			require.NoError(t, f.svc.Acknowledge(api, HostAck{Host: h, KeyID: k.ID, Type: LifecycleDisable, State: "suspended", Volumes: 3, Stopped: 1, Cursor: cur,
				Time: t0.Add(-time.Hour), Reporter: "prod-db-1"})) // the caller's time and reporter are not taken
		}
		require.NoError(t, f.svc.Acknowledge(f.ctx, HostAck{Host: "web-1", KeyID: other.ID, Type: LifecycleRotate, State: "active", Version: other.KeyVersion.ID}))
		f.clock.Advance(time.Minute)
		_, err = f.svc.EnableKey(f.ctx, k.ID)
		require.NoError(t, err)
		require.NoError(t, f.svc.Acknowledge(f.ctx, HostAck{Host: "web-1", KeyID: k.ID, Type: LifecycleEnable, State: "active", Volumes: 3}))
		meta, err := f.svc.GetKeyMetadata(f.ctx, k.ID)
		require.NoError(t, err)
		assert.True(t, meta.LastStateChange.Equal(t0.Add(time.Minute)), "the enable is the last state change: %s", meta.LastStateChange)

		acks, err = f.svc.HostAcks(f.ctx, k.ID)
		require.NoError(t, err)
		want := []HostAck{
			{Host: "db-1", KeyID: k.ID, Type: LifecycleDisable, State: "suspended", Volumes: 3, Stopped: 1, Cursor: cur, Reporter: "kpapi:0123456789abcdef", Time: t0},
			{Host: "web-1", KeyID: k.ID, Type: LifecycleEnable, State: "active", Volumes: 3, Reporter: "crkvol", Time: t0.Add(time.Minute)},
			{Host: "web-2", KeyID: k.ID, Type: LifecycleDisable, State: "suspended", Volumes: 3, Stopped: 1, Cursor: cur, Reporter: "kpapi:0123456789abcdef", Time: t0},
		}
		require.Len(t, acks, len(want))
		for i := range want {
			assert.True(t, want[i].Time.Equal(acks[i].Time), "%s: time %s", want[i].Host, acks[i].Time)
			acks[i].Time = want[i].Time
		}
		assert.Equal(t, want, acks)
		otherAcks, err := f.svc.HostAcks(f.ctx, other.ID)
		require.NoError(t, err)
		require.Len(t, otherAcks, 1)
		assert.Equal(t, other.KeyVersion.ID, otherAcks[0].Version)

		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, Action: ActionEventAck})
		require.NoError(t, err)
		require.Len(t, evs, 4)
		assert.Equal(t, OutcomeSuccess, evs[0].Outcome)
		assert.Equal(t, "host web-1 acknowledged enable: state active, 3 volume(s), 0 attach process(es) stopped, by reconciliation", evs[0].Reason)
		assert.Equal(t, "host web-2 acknowledged disable: state suspended, 3 volume(s), 1 attach process(es) stopped, feed event "+cur, evs[3].Reason)
		assert.Equal(t, "kpapi:0123456789abcdef", evs[3].Initiator, "the audit event names the reporter too")
		assert.Equal(t, k.CRN, evs[0].KeyCRN)

		sum, err := f.svc.Summary(f.ctx)
		require.NoError(t, err)
		assert.Equal(t, 4, sum.HostAcks)
	})
}

// register registers n volumes of key keyID.
func (f *fixture) register(t *testing.T, keyID string, n int) {
	t.Helper()
	for i := range n {
		_, err := f.svc.Register(f.ctx, keyID, fmt.Sprintf("crn:v1:local:public:is:local:a/crkvol::volume:%s-%d", keyID[:8], i), RegisterOptions{})
		require.NoError(t, err)
	}
}

// TestAcknowledgeStates: the states an acknowledgement may give for each lifecycle type,
// checked against the key: an enable or restore of an expired key may leave it deactivated,
// and a rotation or sync leaves it in a usable state.
func TestAcknowledgeStates(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		k := f.root(t, "states")
		ok := map[string][]string{
			LifecycleDisable: {"suspended"}, LifecycleDelete: {"destroyed"}, LifecyclePurge: {"destroyed"},
			LifecycleEnable: {"active"}, LifecycleRestore: {"active"},
			LifecycleRotate: {"active", "deactivated"}, LifecycleSync: {"active", "deactivated"},
		}
		for typ, states := range ok {
			for _, state := range []string{"active", "suspended", "deactivated", "destroyed", "pre-activation"} {
				err := f.svc.Acknowledge(f.ctx, HostAck{Host: "h", KeyID: k.ID, Type: typ, State: state})
				if slices.Contains(states, state) {
					assert.NoError(t, err, "%s %s", typ, state)
				} else {
					assert.ErrorIs(t, err, ErrInvalidArgument, "%s %s", typ, state)
				}
			}
		}
		expiring, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "expiring", Type: RootKey, ExpirationDate: t0.Add(time.Hour)})
		require.NoError(t, err)
		ack := HostAck{Host: "h", KeyID: expiring.ID, Type: LifecycleEnable, State: "deactivated"}
		require.ErrorIs(t, f.svc.Acknowledge(f.ctx, ack), ErrInvalidArgument, "not expired yet")
		f.clock.Advance(2 * time.Hour)
		require.NoError(t, f.svc.Acknowledge(f.ctx, ack), "an enabled key past its expiration is deactivated")
	})
}

// TestForgetHostAck: forgetting a host deletes its acknowledgement of one key (not of
// another, nor another host's), frees its place under the per-key bound, is audited with the
// host's name, and is idempotent.
func TestForgetHostAck(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		f.svc.maxHostAcks = 2
		k := f.root(t, "filled")
		other := f.root(t, "other")
		ack := func(key, host string) error {
			return f.svc.Acknowledge(f.ctx, HostAck{Host: host, KeyID: key, Type: LifecycleSync, State: "active"})
		}
		require.NoError(t, ack(k.ID, "forged-1"))
		require.NoError(t, ack(k.ID, "forged-2"))
		require.NoError(t, ack(other.ID, "forged-1"))
		require.ErrorIs(t, ack(k.ID, "real"), ErrInvalidArgument, "the key's places are full")

		ctx := WithInitiator(f.ctx, "kpapi:00000000000000aa")
		require.NoError(t, f.svc.ForgetHostAck(ctx, k.ID, "forged-1"))
		require.NoError(t, ack(k.ID, "real"), "a place is free again")
		acks, err := f.svc.HostAcks(f.ctx, k.ID)
		require.NoError(t, err)
		hosts := []string{}
		for _, a := range acks {
			hosts = append(hosts, a.Host)
		}
		assert.Equal(t, []string{"forged-2", "real"}, hosts)
		acks, err = f.svc.HostAcks(f.ctx, other.ID)
		require.NoError(t, err)
		assert.Len(t, acks, 1, "another key's acknowledgement of the host stays")

		require.NoError(t, f.svc.ForgetHostAck(ctx, k.ID, "forged-1"), "forgetting again is no error")
		evs, err := f.svc.Events(f.ctx, EventFilter{KeyID: k.ID, Action: ActionForgetAck})
		require.NoError(t, err)
		require.Len(t, evs, 2)
		assert.Equal(t, "host forged-1 had no acknowledgement to forget", evs[0].Reason)
		assert.Equal(t, "acknowledgement of host forged-1 forgotten", evs[1].Reason)
		assert.Equal(t, "kpapi:00000000000000aa", evs[1].Initiator)
		assert.Equal(t, OutcomeSuccess, evs[1].Outcome)

		std, err := f.svc.CreateKey(f.ctx, CreateOptions{Name: "std", Type: StandardKey})
		require.NoError(t, err)
		for name, c := range map[string]struct {
			key, host string
			err       error
		}{
			"bad host":     {k.ID, "a b", ErrInvalidArgument},
			"unknown key":  {"0c9a8d1e-0000-4000-8000-000000000000", "h", ErrKeyNotFound},
			"standard key": {std.ID, "h", ErrNotRootKey},
		} {
			assert.ErrorIs(t, f.svc.ForgetHostAck(f.ctx, c.key, c.host), c.err, name)
		}
	})
}

// TestHostAcksBounded: a key keeps the acknowledgements of a bounded number of hosts; a host
// beyond it is refused, and the hosts it has go on updating theirs.
func TestHostAcksBounded(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		f := newFixture(t, st)
		f.svc.maxHostAcks = 3
		k := f.root(t, "crowded")
		ack := func(host string) error {
			return f.svc.Acknowledge(f.ctx, HostAck{Host: host, KeyID: k.ID, Type: LifecycleSync, State: "active"})
		}
		for _, h := range []string{"a", "b", "c"} {
			require.NoError(t, ack(h))
		}
		err := ack("d")
		require.ErrorIs(t, err, ErrInvalidArgument)
		assert.Contains(t, err.Error(), "3 hosts")
		require.NoError(t, ack("b"), "a known host updates its acknowledgement")
		other := f.root(t, "roomy")
		require.NoError(t, f.svc.Acknowledge(f.ctx, HostAck{Host: "d", KeyID: other.ID, Type: LifecycleSync, State: "active"}), "the bound is per key")
	})
}

// TestHostAcksPurged: purging a key deletes its acknowledgements (and no more), and a purged
// key takes no new ones.
func TestHostAcksPurged(t *testing.T) { forEachStore(t, testHostAcksPurged) }

func testHostAcksPurged(t *testing.T, st *testStore) {
	{
		f := newFixture(t, st)
		k := f.root(t, "doomed")
		kept := f.root(t, "kept")
		for _, id := range []string{k.ID, kept.ID} {
			require.NoError(t, f.svc.Acknowledge(f.ctx, HostAck{Host: "h1", KeyID: id, Type: LifecycleRotate, State: "active"}))
		}
		_, err := f.svc.DeleteKey(f.ctx, k.ID, DeleteOptions{})
		require.NoError(t, err)
		require.NoError(t, f.svc.Acknowledge(f.ctx, HostAck{Host: "h1", KeyID: k.ID, Type: LifecycleDelete, State: "destroyed"}))
		acks, err := f.svc.HostAcks(f.ctx, k.ID)
		require.NoError(t, err)
		require.Len(t, acks, 1)
		assert.Equal(t, "destroyed", acks[0].State)

		f.clock.Advance(RestoreWindow + time.Minute)
		_, err = f.svc.PurgeKey(f.ctx, k.ID)
		require.NoError(t, err)
		acks, err = f.svc.HostAcks(f.ctx, k.ID)
		require.NoError(t, err)
		assert.Empty(t, acks)
		err = f.svc.Acknowledge(f.ctx, HostAck{Host: "h1", KeyID: k.ID, Type: LifecyclePurge, State: "destroyed", Volumes: 1})
		assert.ErrorIs(t, err, ErrKeyPurged)
		acks, err = f.svc.HostAcks(f.ctx, kept.ID)
		require.NoError(t, err)
		assert.Len(t, acks, 1, "another key's acknowledgements stay")
	}
}

// FuzzParseState: ParseState accepts exactly the names State.String gives, and gives back
// the state of that name.
func FuzzParseState(f *testing.F) {
	for _, s := range []string{"active", "suspended", "destroyed", "deactivated", "pre-activation", "state(4)", "", "Active"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		s, err := ParseState(name)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidArgument)
			return
		}
		require.Equal(t, name, s.String())
	})
}

// TestHostAcksStoreBeforeAcks: a store made before acknowledgements (no acks bucket) opened
// read-only has none, and its summary counts none; opened read-write it gets the bucket.
func TestHostAcksStoreBeforeAcks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crk.db")
	svc, err := Open(path, Options{Clock: NewManualClock(t0)})
	require.NoError(t, err)
	ctx := t.Context()
	k, err := svc.CreateRootKey(ctx, "old")
	require.NoError(t, err)
	require.NoError(t, svc.Close())
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAcks) }))
	require.NoError(t, db.Close())

	ro, err := Open(path, Options{ReadOnly: true})
	require.NoError(t, err)
	acks, err := ro.HostAcks(ctx, k.ID)
	require.NoError(t, err)
	assert.Empty(t, acks)
	sum, err := ro.Summary(ctx)
	require.NoError(t, err)
	assert.Zero(t, sum.HostAcks)
	require.NoError(t, ro.Close())

	rw, err := Open(path, Options{})
	require.NoError(t, err)
	defer rw.Close()
	require.NoError(t, rw.Acknowledge(ctx, HostAck{Host: "h", KeyID: k.ID, Type: LifecycleSync, State: "active"}))
}
