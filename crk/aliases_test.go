package crk

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
)

// aliasState is what an alias or key ring request may change: every key's aliases and ring,
// and the alias and key ring documents.
func aliasState(t *testing.T, svc *Service) string {
	t.Helper()
	keys, err := svc.ListKeys(context.Background(), ListOptions{States: []State{StateActive, StateSuspended, StateDeactivated, StateDestroyed}})
	require.NoError(t, err)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %v %s\n", k.ID, k.Aliases, k.KeyRingID)
	}
	for _, kind := range []string{docAlias, docKeyRing} {
		docs, names := listDocs(t, svc, kind)
		for _, n := range names {
			fmt.Fprintf(&b, "%s/%s %s\n", kind, n, docs[n])
		}
	}
	return b.String()
}

func TestCheckAlias(t *testing.T) {
	for _, c := range []struct {
		alias, why string // why "" is a valid alias
	}{
		{"ab", ""},
		{"US-South-Test-Key", ""},
		{"under_score-9", ""},
		{strings.Repeat("a", 90), ""},
		{"02fd6835-6001-1482-a892-13bd2085f75d", "shaped like a UUID"}, // any version
		{"6ba7b810-9dad-11d1-80b4-00c04fd430c8", "shaped like a UUID"},
		{"00000000-0000-0000-0000-000000000000", "shaped like a UUID"},
		{"6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "shaped like a UUID"},
		{"02fd6835-6001-1482-a892-13bd2085f75", ""}, // one digit short: not a UUID
		{"Keys", ""}, // reserved words are lower case
		{"a", "1 characters long"},
		{strings.Repeat("a", 91), "91 characters long"},
		{"has space", "character ' '"},
		{"dot.ted", "character '.'"},
		{"ünï", "character 'ü' at position 0"},
		{"a\xffb", `character '\xff' at position 1`},
		{"a\x1bb", `character '\x1b' at position 1`},
		{"a\u202eb", `character '\u202e' at position 1`},
		{"02fd6835-6001-4482-a892-13bd2085f75d", "shaped like a UUID"},
		{"02FD6835-6001-4482-A892-13BD2085F75D", "shaped like a UUID"},
		{"keys", "reserved"},
		{"allowed_ip", "reserved"},
		{"versions", "reserved"},
	} {
		err := CheckAlias(c.alias)
		if c.why == "" {
			assert.NoError(t, err, c.alias)
			continue
		}
		assert.ErrorIs(t, err, ErrInvalidAlias, c.alias)
		if err != nil {
			assert.Contains(t, err.Error(), c.why, c.alias)
		}
	}
	for _, c := range []struct{ id, why string }{
		{"ab", ""}, {"Ring-2", ""}, {strings.Repeat("r", 100), ""},
		{"r", "1 characters"}, {strings.Repeat("r", 101), "101 characters"}, {"my_ring", "character '_'"}, {"a b", "character ' '"},
		{"ring-é", "character 'é' at position 5"}, {"ring\xff", `character '\xff' at position 4`},
	} {
		err := CheckKeyRingID(c.id)
		if c.why == "" {
			assert.NoError(t, err, c.id)
			continue
		}
		assert.ErrorIs(t, err, ErrInvalidKeyRing, c.id)
		if err != nil {
			assert.Contains(t, err.Error(), c.why, c.id)
		}
	}
}

func FuzzCheckAlias(f *testing.F) {
	for _, s := range []string{"ab", "keys", "02fd6835-6001-4482-a892-13bd2085f75d", "a b", strings.Repeat("x", 91)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckAlias(s) != nil {
			return
		}
		// An accepted alias is 2 to 90 bytes of [A-Za-z0-9_-], not reserved.
		if len(s) < 2 || len(s) > 90 || reservedAlias(s) {
			t.Fatalf("accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !isAlnum(c) && c != '-' && c != '_' {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}

func TestAliases(t *testing.T) {
	docStores(t, func(t *testing.T, _ *testStore, svc *Service) {
		ctx := context.Background()
		clock := svc.clock.(*ManualClock)
		k, err := svc.CreateKey(ctx, CreateOptions{Name: "volumes", Aliases: []string{"zeta", "alpha"}})
		require.NoError(t, err)
		assert.Equal(t, []string{"alpha", "zeta"}, k.Aliases)
		assert.Equal(t, DefaultKeyRing, k.KeyRingID)
		other, err := svc.CreateRootKey(ctx, "other")
		require.NoError(t, err)

		for _, ref := range []string{k.ID, "alpha", "zeta"} {
			id, err := svc.ResolveKey(ctx, ref)
			require.NoError(t, err)
			assert.Equal(t, k.ID, id)
		}
		_, err = svc.ResolveKey(ctx, "nobody")
		assert.ErrorIs(t, err, ErrKeyNotFound)

		a, err := svc.CreateAlias(ctx, "alpha", "beta") // a key named by an alias
		require.NoError(t, err)
		assert.Equal(t, Alias{KeyID: k.ID, Alias: "beta", CreatedBy: svc.who(ctx), CreationDate: t0}, *a)
		_, err = svc.CreateAlias(ctx, k.ID, "gamma")
		require.NoError(t, err)
		_, err = svc.CreateAlias(ctx, k.ID, "delta")
		require.NoError(t, err)

		// Refusals change nothing.
		for _, c := range []struct {
			name, key, alias string
			want             error
		}{
			{"sixth alias", k.ID, "epsilon", ErrAliasQuota},
			{"another key's alias", other.ID, "beta", ErrAliasNotUnique},
			{"the key's own alias", k.ID, "beta", ErrAliasNotUnique},
			{"bad syntax", other.ID, "no way", ErrInvalidAlias},
			{"reserved", other.ID, "wrap", ErrInvalidAlias},
			{"unknown key", "nobody", "fine", ErrKeyNotFound},
		} {
			before := aliasState(t, svc)
			_, err := svc.CreateAlias(ctx, c.key, c.alias)
			assert.ErrorIs(t, err, c.want, c.name)
			assert.Equal(t, before, aliasState(t, svc), c.name)
		}
		before := aliasState(t, svc)
		assert.ErrorIs(t, svc.DeleteAlias(ctx, other.ID, "beta"), ErrAliasNotFound)
		assert.Equal(t, before, aliasState(t, svc))
		_, err = svc.CreateKey(ctx, CreateOptions{Name: "taken", Aliases: []string{"fresh", "beta"}})
		assert.ErrorIs(t, err, ErrAliasNotUnique)
		_, err = svc.CreateKey(ctx, CreateOptions{Name: "twice", Aliases: []string{"fresh", "fresh"}})
		assert.ErrorIs(t, err, ErrAliasNotUnique)
		_, err = svc.CreateKey(ctx, CreateOptions{Name: "six", Aliases: []string{"a1", "a2", "a3", "a4", "a5", "a6"}})
		assert.ErrorIs(t, err, ErrAliasQuota)
		assert.Equal(t, before, aliasState(t, svc), "no key was created, no alias taken")

		// A deleted alias is free for any key.
		require.NoError(t, svc.DeleteAlias(ctx, "beta", "beta"))
		_, err = svc.ResolveKey(ctx, "beta")
		assert.ErrorIs(t, err, ErrKeyNotFound)
		_, err = svc.CreateAlias(ctx, other.ID, "beta")
		require.NoError(t, err)

		// A deleted key keeps its aliases, takes no new one; a purge frees them.
		_, err = svc.DeleteKey(ctx, k.ID, DeleteOptions{})
		require.NoError(t, err)
		id, err := svc.ResolveKey(ctx, "zeta")
		require.NoError(t, err)
		assert.Equal(t, k.ID, id)
		_, err = svc.CreateAlias(ctx, k.ID, "late")
		assert.ErrorIs(t, err, ErrKeyDestroyed)
		assert.ErrorIs(t, svc.DeleteAlias(ctx, k.ID, "zeta"), ErrKeyDestroyed, "nor loses one")
		id, err = svc.ResolveKey(ctx, "zeta")
		require.NoError(t, err)
		assert.Equal(t, k.ID, id)
		clock.Advance(time.Minute)
		restored, err := svc.RestoreKey(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, []string{"alpha", "delta", "gamma", "zeta"}, restored.Aliases)
		_, err = svc.DeleteKey(ctx, k.ID, DeleteOptions{})
		require.NoError(t, err)
		clock.Advance(RestoreWindow)
		purged, err := svc.PurgeKey(ctx, k.ID)
		require.NoError(t, err)
		assert.Empty(t, purged.Aliases)
		_, err = svc.ResolveKey(ctx, "gamma")
		assert.ErrorIs(t, err, ErrKeyNotFound)
		_, err = svc.CreateAlias(ctx, other.ID, "gamma")
		require.NoError(t, err, "a purged key's alias is free")

		for _, action := range []string{ActionAliasCreate, ActionAliasDelete} {
			evs, err := svc.Events(ctx, EventFilter{Action: action})
			require.NoError(t, err)
			assert.NotEmpty(t, evs, action)
		}
	})
}

func TestKeyRings(t *testing.T) {
	docStores(t, func(t *testing.T, st *testStore, svc *Service) {
		ctx := context.Background()
		clock := svc.clock.(*ManualClock)
		ring, err := svc.CreateKeyRing(ctx, "team-a")
		require.NoError(t, err)
		assert.Equal(t, KeyRing{ID: "team-a", CreationDate: t0, CreatedBy: svc.who(ctx)}, *ring)
		_, err = svc.CreateKeyRing(ctx, "team-b")
		require.NoError(t, err)
		rings, err := svc.ListKeyRings(ctx)
		require.NoError(t, err)
		require.Len(t, rings, 3)
		assert.Equal(t, []string{"default", "team-a", "team-b"}, []string{rings[0].ID, rings[1].ID, rings[2].ID})

		k, err := svc.CreateKey(ctx, CreateOptions{Name: "in-a", KeyRingID: "team-a", Aliases: []string{"ka"}})
		require.NoError(t, err)
		assert.Equal(t, "team-a", k.KeyRingID)
		plain, err := svc.CreateRootKey(ctx, "plain")
		require.NoError(t, err)

		id, err := svc.ResolveKeyInRing(ctx, "ka", "team-a")
		require.NoError(t, err)
		assert.Equal(t, k.ID, id)
		_, err = svc.ResolveKeyInRing(ctx, k.ID, DefaultKeyRing)
		assert.ErrorIs(t, err, ErrKeyNotFound, "not in that ring")
		_, err = svc.ResolveKeyInRing(ctx, k.ID, "nowhere")
		assert.ErrorIs(t, err, ErrKeyRingNotFound)
		_, err = svc.ResolveKeyInRing(ctx, plain.ID, DefaultKeyRing)
		require.NoError(t, err)

		for _, c := range []struct {
			name string
			do   func() error
			want error
		}{
			{"create a bad id", func() error { _, err := svc.CreateKeyRing(ctx, "bad_id"); return err }, ErrInvalidKeyRing},
			{"create a taken id", func() error { _, err := svc.CreateKeyRing(ctx, "team-a"); return err }, ErrKeyRingExists},
			{"create default", func() error { _, err := svc.CreateKeyRing(ctx, "default"); return err }, ErrKeyRingExists},
			{"key in an unknown ring", func() error {
				_, err := svc.CreateKey(ctx, CreateOptions{Name: "lost", KeyRingID: "nowhere", Aliases: []string{"lost"}})
				return err
			}, ErrKeyRingNotFound},
			{"key in a bad ring id", func() error { _, err := svc.CreateKey(ctx, CreateOptions{Name: "lost", KeyRingID: "x"}); return err }, ErrInvalidKeyRing},
			{"move to an unknown ring", func() error { _, err := svc.SetKeyRing(ctx, k.ID, "nowhere"); return err }, ErrKeyRingNotFound},
			{"move an unknown key", func() error { _, err := svc.SetKeyRing(ctx, "nobody", "team-b"); return err }, ErrKeyNotFound},
			{"delete default", func() error { return svc.DeleteKeyRing(ctx, "default", true) }, ErrInvalidKeyRing},
			{"delete a ring with a live key", func() error { return svc.DeleteKeyRing(ctx, "team-a", true) }, ErrKeyRingNotEmpty},
			{"delete an unknown ring", func() error { return svc.DeleteKeyRing(ctx, "nowhere", false) }, ErrKeyRingNotFound},
		} {
			before := aliasState(t, svc)
			assert.ErrorIs(t, c.do(), c.want, c.name)
			assert.Equal(t, before, aliasState(t, svc), c.name)
		}

		moved, err := svc.SetKeyRing(ctx, "ka", "team-b")
		require.NoError(t, err)
		assert.Equal(t, "team-b", moved.KeyRingID)
		require.NoError(t, svc.DeleteKeyRing(ctx, "team-a", false), "empty now")
		_, err = svc.DeleteKey(ctx, k.ID, DeleteOptions{})
		require.NoError(t, err)
		before := aliasState(t, svc)
		assert.ErrorIs(t, svc.DeleteKeyRing(ctx, "team-b", false), ErrKeyRingNotEmpty, "a deleted key needs force")
		assert.Equal(t, before, aliasState(t, svc))
		require.NoError(t, svc.DeleteKeyRing(ctx, "team-b", true))
		got, err := svc.GetKeyMetadata(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, DefaultKeyRing, got.KeyRingID, "force moved the deleted key to the default ring")
		rings, err = svc.ListKeyRings(ctx)
		require.NoError(t, err)
		assert.Equal(t, []KeyRing{{ID: DefaultKeyRing}}, rings)
		clock.Advance(time.Minute)

		if st.kind == "bolt" { // the quota: cheap on bbolt, the same code on PostgreSQL
			for i := range MaxKeyRings {
				_, err := svc.CreateKeyRing(ctx, fmt.Sprintf("ring-%d", i))
				require.NoError(t, err)
			}
			_, err := svc.CreateKeyRing(ctx, "one-more")
			assert.ErrorIs(t, err, ErrKeyRingQuota)
		}
		for _, action := range []string{ActionKeyRingCreate, ActionKeyRingList, ActionKeyRingDelete, ActionPatch} {
			evs, err := svc.Events(ctx, EventFilter{Action: action})
			require.NoError(t, err)
			assert.NotEmpty(t, evs, action)
		}
	})
}

// TestAliasesAcrossProcesses: two processes on one PostgreSQL store giving one alias to two
// keys at once: one has it, the other gets ErrAliasNotUnique. A key created in a ring while
// another process deletes the ring: the key is created (and the delete refused, the ring not
// empty) or the ring is deleted (and the key refused, no such ring), never both.
func TestAliasesAcrossProcesses(t *testing.T) {
	ctx := context.Background()
	sharedDatabase(t) // made and migrated once per test binary
	rs := replicasOn(t, pgtest.Start(t).SharedDatabase(t, "crk_tests"), 2, nil)
	sa, sb := rs[0], rs[1]
	k1, err := sa.CreateRootKey(ctx, "one")
	require.NoError(t, err)
	k2, err := sb.CreateRootKey(ctx, "two")
	require.NoError(t, err)

	for i := range 4 {
		alias := fmt.Sprintf("contended-%d", i)
		errs := make(chan error, 2)
		go func() { _, err := sa.CreateAlias(ctx, k1.ID, alias); errs <- err }()
		go func() { _, err := sb.CreateAlias(ctx, k2.ID, alias); errs <- err }()
		e1, e2 := <-errs, <-errs
		if e1 != nil {
			e1, e2 = e2, e1
		}
		require.NoError(t, e1, alias)
		assert.ErrorIs(t, e2, ErrAliasNotUnique, alias)
		id, err := sa.ResolveKey(ctx, alias)
		require.NoError(t, err)
		owner, err := sa.GetKeyMetadata(ctx, id)
		require.NoError(t, err)
		assert.Contains(t, owner.Aliases, alias)
	}

	for i := range 4 {
		ring := fmt.Sprintf("race-%d", i)
		_, err := sa.CreateKeyRing(ctx, ring)
		require.NoError(t, err)
		created, deleted := make(chan error, 1), make(chan error, 1)
		go func() { _, err := sa.CreateKey(ctx, CreateOptions{Name: "racer", KeyRingID: ring}); created <- err }()
		go func() { deleted <- sb.DeleteKeyRing(ctx, ring, false) }()
		ce, de := <-created, <-deleted
		switch {
		case ce == nil:
			assert.ErrorIs(t, de, ErrKeyRingNotEmpty, ring)
		case de == nil:
			assert.ErrorIs(t, ce, ErrKeyRingNotFound, ring)
		default:
			t.Fatalf("%s: both refused: create %v, delete %v", ring, ce, de)
		}
	}
}

func FuzzCheckKeyRingID(f *testing.F) {
	for _, s := range []string{"ab", "default", "a_b", strings.Repeat("r", 101)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckKeyRingID(s) != nil {
			return
		}
		if len(s) < 2 || len(s) > 100 {
			t.Fatalf("accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !isAlnum(c) && c != '-' {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}
