package crk

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// docStores runs fn on a bbolt store and on a PostgreSQL one (the latter in the long run,
// as forEachStore does; TestInsertDocAcrossProcesses and TestAliasesAcrossProcesses run on
// PostgreSQL in every run), each opened on a manual clock.
func docStores(t *testing.T, fn func(t *testing.T, st *testStore, svc *Service)) {
	t.Helper()
	for _, kind := range []string{"bolt", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			st := &testStore{kind: kind}
			if kind == "postgres" {
				if !tooltest.Long() {
					t.Skip("the PostgreSQL variant runs with CRKVOL_LONG_TESTS=1 (CI)")
				}
				st.db, st.instances = sharedDatabase(t), map[string]string{}
			}
			svc, err := st.open(tempPath(t), Options{Clock: NewManualClock(t0)})
			require.NoError(t, err)
			t.Cleanup(func() { svc.Close() })
			fn(t, st, svc)
		})
	}
}

// listDocs returns the documents of kind as name -> JSON text, and their names in order.
func listDocs(t *testing.T, svc *Service, kind string) (map[string]string, []string) {
	t.Helper()
	out, names := map[string]string{}, []string(nil)
	require.NoError(t, svc.view(context.Background(), func(tx storeTx) error {
		out, names = map[string]string{}, nil
		return tx.docs(kind, func(name string, data []byte) error {
			out[name] = string(data)
			names = append(names, name)
			return nil
		})
	}))
	return out, names
}

func TestDocs(t *testing.T) {
	docStores(t, func(t *testing.T, _ *testStore, svc *Service) {
		ctx := context.Background()
		seed := func(tx storeTx) error {
			for _, d := range []struct{ kind, name, data string }{
				{"a", "b", `"b"`}, {"a", "a", `"a"`}, {"a", "é", `"e"`}, {"ab", "a", `"other kind"`},
			} {
				if err := tx.insertDoc(d.kind, d.name, []byte(d.data)); err != nil {
					return err
				}
			}
			return nil
		}
		require.NoError(t, svc.update(ctx, seed))
		errBoom := errors.New("boom")
		for _, c := range []struct {
			name    string
			fn      func(tx storeTx) error
			wantErr error
			want    map[string]string // kind "a" afterwards
		}{
			{"insert of a taken name", func(tx storeTx) error { return tx.insertDoc("a", "a", []byte(`"again"`)) },
				errDocExists, nil},
			{"insert in another kind", func(tx storeTx) error { return tx.insertDoc("b", "a", []byte(`1`)) },
				nil, nil},
			{"put replaces", func(tx storeTx) error { return tx.putDoc("a", "a", []byte(`{"x": 1}`)) },
				nil, map[string]string{"a": `{"x": 1}`, "b": `"b"`, "é": `"e"`}},
			{"put makes", func(tx storeTx) error { return tx.putDoc("a", "c", []byte(`"c"`)) },
				nil, map[string]string{"a": `{"x": 1}`, "b": `"b"`, "c": `"c"`, "é": `"e"`}},
			{"delete", func(tx storeTx) error { return tx.deleteDoc("a", "c") },
				nil, map[string]string{"a": `{"x": 1}`, "b": `"b"`, "é": `"e"`}},
			{"delete of nothing", func(tx storeTx) error { return tx.deleteDoc("a", "zz") }, nil, nil},
			{"delete of a name no store holds", func(tx storeTx) error { return tx.deleteDoc("a", "\x00") }, nil, nil},
			{"not JSON", func(tx storeTx) error { return tx.putDoc("a", "a", []byte(`{`)) }, nil, nil},
			{"name with NUL", func(tx storeTx) error { return tx.insertDoc("a", "x\x00y", []byte(`1`)) },
				ErrInvalidArgument, nil},
			{"name not UTF-8", func(tx storeTx) error { return tx.putDoc("a", "\xff", []byte(`1`)) },
				ErrInvalidArgument, nil},
			{"empty kind", func(tx storeTx) error { return tx.putDoc("", "a", []byte(`1`)) }, ErrInvalidArgument, nil},
			{"a failed transaction keeps nothing", func(tx storeTx) error {
				if err := tx.deleteDoc("a", "a"); err != nil {
					return err
				}
				if err := tx.insertDoc("a", "new", []byte(`1`)); err != nil {
					return err
				}
				return errBoom
			}, errBoom, nil},
		} {
			t.Run(c.name, func(t *testing.T) {
				before, _ := listDocs(t, svc, "a")
				err := svc.update(ctx, c.fn)
				switch {
				case c.name == "not JSON":
					require.Error(t, err)
					assert.Contains(t, err.Error(), "is not JSON")
				case c.wantErr != nil:
					require.ErrorIs(t, err, c.wantErr)
				default:
					require.NoError(t, err)
				}
				want := c.want
				if want == nil {
					want = before
				}
				got, _ := listDocs(t, svc, "a")
				assert.Equal(t, want, got)
			})
		}

		// Reads: a missing document, names in byte order within their kind.
		require.NoError(t, svc.view(ctx, func(tx storeTx) error {
			_, err := tx.doc("a", "zz")
			assert.ErrorIs(t, err, errNoDoc)
			_, err = tx.doc("a", "\x00")
			assert.ErrorIs(t, err, errNoDoc)
			_, err = tx.doc("", "a")
			assert.ErrorIs(t, err, errNoDoc)
			d, err := tx.doc("ab", "a")
			require.NoError(t, err)
			assert.JSONEq(t, `"other kind"`, string(d))
			var kinds []string
			require.NoError(t, tx.allDocs(func(kind, name string, _ []byte) error {
				kinds = append(kinds, kind+"/"+name)
				return nil
			}))
			assert.Equal(t, []string{"a/a", "a/b", "a/é", "ab/a", "b/a"}, kinds)
			return nil
		}))
		_, names := listDocs(t, svc, "a")
		assert.Equal(t, []string{"a", "b", "é"}, names)
		got, _ := listDocs(t, svc, "nothing")
		assert.Empty(t, got)

		// fn's error stops a scan and comes back.
		err := svc.view(ctx, func(tx storeTx) error {
			return tx.docs("a", func(string, []byte) error { return errBoom })
		})
		assert.ErrorIs(t, err, errBoom)
	})
}

// TestDocSecretsFollowTheMasterKey: a secret sealed in a document opens after a master key
// rotation, and after a copy into a store with another master key; a copy takes every
// document, and is refused into a store that holds a document.
func TestDocSecretsFollowTheMasterKey(t *testing.T) {
	docStores(t, func(t *testing.T, st *testStore, svc *Service) {
		ctx := context.Background()
		type tokenDoc struct {
			Nonce   string       `json:"nonce"`
			Private sealedSecret `json:"private"`
			Count   json.Number  `json:"count"`
		}
		sec, err := svc.sealDocSecret("import-token", "current", []byte("private key"))
		require.NoError(t, err)
		raw, err := json.Marshal(tokenDoc{Nonce: "n", Private: sec, Count: "12345678901234567890"})
		require.NoError(t, err)
		require.NoError(t, svc.update(ctx, func(tx storeTx) error {
			if err := tx.putDoc("import-token", "current", raw); err != nil {
				return err
			}
			return tx.insertDoc(docAlias, "my-alias", []byte(`"key-id"`))
		}))
		secret := func(s *Service) string {
			t.Helper()
			var d tokenDoc
			require.NoError(t, s.view(ctx, func(tx storeTx) error {
				raw, err := tx.doc("import-token", "current")
				if err != nil {
					return err
				}
				return json.Unmarshal(raw, &d)
			}))
			assert.Equal(t, "n", d.Nonce)
			assert.Equal(t, json.Number("12345678901234567890"), d.Count, "numbers are kept as written")
			p, err := s.openDocSecret("import-token", "current", d.Private)
			require.NoError(t, err)
			_, err = s.openDocSecret("import-token", "other", d.Private)
			require.ErrorIs(t, err, ErrMasterKey, "the secret is bound to its document")
			return string(p)
		}

		require.NoError(t, svc.RotateMasterKey(ctx, material(32, 3)))
		assert.Equal(t, "private key", secret(svc))
		ev, err := svc.Events(ctx, EventFilter{Action: ActionMasterKeyRotate, Limit: 1})
		require.NoError(t, err)
		require.Len(t, ev, 1)
		assert.Contains(t, ev[0].Reason, "the secrets of 1 documents")

		// A copy into a bbolt store under another master key.
		dst, err := Open(filepath.Join(t.TempDir(), "copy.db"), Options{Instance: svc.Instance(), MasterKey: material(32, 5)})
		require.NoError(t, err)
		defer dst.Close()
		res, err := CopyStore(ctx, svc, dst)
		require.NoError(t, err)
		assert.Equal(t, 2, res.Docs)
		assert.Equal(t, "private key", secret(dst))
		aliases, _ := listDocs(t, dst, docAlias)
		assert.Equal(t, map[string]string{"my-alias": `"key-id"`}, aliases)
		_, err = CopyStore(ctx, svc, dst)
		assert.ErrorIs(t, err, ErrInvalidArgument, "the copy holds documents")
	})
}

// TestInsertDocAcrossProcesses: of two processes inserting the same document at once, the
// one that commits first has it and the other gets errDocExists; when the first rolls back,
// the other inserts.
func TestInsertDocAcrossProcesses(t *testing.T) {
	a := sharedDatabase(t)
	rs := replicasOn(t, pgtest.Start(t).SharedDatabase(t, "crk_tests"), 2, nil)
	sa, sb := rs[0], rs[1]
	ctx := context.Background()

	for _, commitFirst := range []bool{true, false} {
		name := map[bool]string{true: "committed", false: "rolled-back"}[commitFirst]
		inserted, release, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
		errRollback := errors.New("roll back")
		go func() {
			done <- sa.update(ctx, func(tx storeTx) error {
				if err := tx.insertDoc(docAlias, name, []byte(`"first"`)); err != nil {
					return err
				}
				close(inserted)
				<-release
				if !commitFirst {
					return errRollback
				}
				return nil
			})
		}()
		<-inserted
		second := make(chan error, 1)
		go func() {
			second <- sb.update(ctx, func(tx storeTx) error { return tx.insertDoc(docAlias, name, []byte(`"second"`)) })
		}()
		// The second insert waits on the first's row lock before the first ends.
		require.Eventually(t, func() bool {
			var n int
			err := a.db.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted`).Scan(&n)
			return err == nil && n > 0
		}, 10e9, 5e6)
		close(release)
		firstErr := <-done
		secondErr := <-second
		got, _ := listDocs(t, sb, docAlias)
		if commitFirst {
			require.NoError(t, firstErr)
			assert.ErrorIs(t, secondErr, errDocExists)
			assert.JSONEq(t, `"first"`, got[name])
		} else {
			assert.ErrorIs(t, firstErr, errRollback)
			require.NoError(t, secondErr)
			assert.JSONEq(t, `"second"`, got[name])
		}
	}
}
