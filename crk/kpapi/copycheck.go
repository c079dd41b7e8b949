package kpapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"crkvol/internal/pgdb"
)

// ErrTenantsDiffer means a database holds instances or API keys that a state directory's
// tenants do not (or holds one of them differently), so that copying the tenants into it
// ([CopyTenants]) would merge two services.
var ErrTenantsDiffer = errors.New("the database holds instances or API keys the state directory does not")

// CheckCopyTenants checks, reading only, that [CopyTenants] may copy the tenants from (a
// state directory's, opened by [OpenTenants]) into db, and reports whether it has nothing
// left to copy: every instance and API key of from is in db already. A database whose
// default instance is another one is refused with [ErrDefaultInstanceMismatch]; one holding
// an instance or API key that from does not, an instance under another name or an API key
// of other instances (or of the same ones in another order), with [ErrTenantsDiffer]. Rows missing from db (an empty database, or
// a copy that was interrupted) are what CopyTenants adds. The check writes nothing: run it
// before anything is written to db.
func CheckCopyTenants(ctx context.Context, from *Tenants, db *pgdb.DB) (copied bool, err error) {
	fs, ok := from.store.(*fileStore)
	if !ok {
		return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w", ErrNotStateDirectory)
	}
	tf, err := fs.load()
	if err != nil {
		return false, err
	}
	if tf.Default == "" {
		return false, fmt.Errorf("kpapi: checking a copy of the tenants: %s has no default instance: %w", fs.dir, ErrNotStateDirectory)
	}
	type dbInstance struct {
		name string
		def  bool
	}
	instances := map[string]dbInstance{}
	keys := map[string][]string{} // hash -> instances
	err = db.ReadTx(ctx, func(tx pgx.Tx) error {
		clear(instances)
		clear(keys)
		rows, err := tx.Query(ctx, `SELECT id, name, is_default FROM kp_instances`)
		if err != nil {
			return err
		}
		var id, name string
		var def bool
		if _, err := pgx.ForEachRow(rows, []any{&id, &name, &def}, func() error {
			instances[id] = dbInstance{name, def}
			return nil
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT k.hash, array(SELECT i.instance FROM kp_api_key_instances i
			WHERE i.hash = k.hash ORDER BY i.position) FROM kp_api_keys k`)
		if err != nil {
			return err
		}
		var hash string
		var in []string
		_, err = pgx.ForEachRow(rows, []any{&hash, &in}, func() error {
			keys[hash] = slices.Clone(in)
			return nil
		})
		return err
	})
	if err != nil {
		return false, dbError("reading the database's instances and API keys", err)
	}

	srcNames := map[string]string{}
	for _, in := range tf.Instances {
		srcNames[in.ID] = in.Name
	}
	srcNames[tf.Default] = "default" // CopyTenants names the default so
	srcKeys := map[string][]string{}
	for _, k := range tf.APIKeys {
		srcKeys[k.Hash] = k.instanceList()
	}
	for id, in := range instances {
		if in.def && id != tf.Default {
			return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w: %s, not %s", ErrDefaultInstanceMismatch, id, tf.Default)
		}
	}
	for id, in := range instances {
		name, ok := srcNames[id]
		switch {
		case !ok:
			return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w: instance %s (%s)", ErrTenantsDiffer, id, in.name)
		case in.def != (id == tf.Default):
			return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w: instance %s is the default in the database, not in the state directory", ErrTenantsDiffer, id)
		case !in.def && in.name != name:
			return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w: instance %s is named %q in the database, %q in the state directory", ErrTenantsDiffer, id, in.name, name)
		}
	}
	for hash, inst := range keys {
		want, ok := srcKeys[hash]
		switch {
		case !ok:
			return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w: an API key of %s", ErrTenantsDiffer, instanceWords(inst))
		case !slices.Equal(want, inst):
			return false, fmt.Errorf("kpapi: checking a copy of the tenants: %w: API key %s of %s belongs to %s in the database",
				ErrTenantsDiffer, keyID(hash), instanceWords(want), instanceWords(inst))
		}
	}
	return len(instances) == len(srcNames) && len(keys) == len(srcKeys), nil
}

// instanceWords names instances in a message: "instance A", "instances A, B".
func instanceWords(in []string) string {
	switch len(in) {
	case 0:
		return "no instance"
	case 1:
		return "instance " + in[0]
	}
	return "instances " + strings.Join(in, ", ")
}

// ListInstancesPostgres returns the instances of the tenants kept in db, the default first,
// as [Tenants.ListInstances] does, reading only: a database that no [OpenTenantsPostgres]
// opened yet has none, and is left so (opening its Tenants would make the default
// instance), so that listing it does not stop [CopyTenants] from copying into it.
func ListInstancesPostgres(ctx context.Context, db *pgdb.DB) ([]InstanceInfo, error) {
	out := []InstanceInfo{}
	err := db.ReadTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx,
			`SELECT id, name, created, is_default FROM kp_instances ORDER BY is_default DESC, created, id`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (InstanceInfo, error) {
			var in InstanceInfo
			err := r.Scan(&in.ID, &in.Name, &in.Created, &in.Default)
			in.Created = in.Created.UTC()
			return in, err
		})
		return err
	})
	if err != nil {
		return nil, dbError("reading instances", err)
	}
	return out, nil
}
