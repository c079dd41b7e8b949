package pgdb

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrSchemaTooNew is returned by [Open] for a database whose schema version is newer than
// this program knows: a newer crkvol has migrated it, and this one must not write to it.
var ErrSchemaTooNew = errors.New("database schema is newer than this program")

//go:embed migrations/*.sql
var migrationFiles embed.FS

// LatestVersion is the schema version this program's migrations bring a database to.
const LatestVersion = 4

// migrationLock is the key of the transaction-scoped advisory lock that serialises
// migrations between replicas ("crkvol" in ASCII).
const migrationLock int64 = 0x63726b766f6c

// migration is one embedded file, migrations/NNNN_name.sql, which brings the schema from
// version-1 to version.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations in order and checks that they are numbered
// 1, 2, … without gaps.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries { // ReadDir sorts by name, and names start with a fixed-width number
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || len(num) != 4 {
			return nil, fmt.Errorf("migration %s: name is not NNNN_name.sql", e.Name())
		}
		if v != len(ms)+1 {
			return nil, fmt.Errorf("migration %s: expected version %d", e.Name(), len(ms)+1)
		}
		b, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	if len(ms) != LatestVersion {
		return nil, fmt.Errorf("embedded migrations reach version %d, LatestVersion is %d", len(ms), LatestVersion)
	}
	return ms, nil
}

// migrate applies the migrations the database lacks, each in a transaction of its own
// under the advisory lock, and records the version reached in db.version.
func (db *DB) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	for {
		var current int
		var applied *migration
		done := false
		err := db.Tx(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
				return fmt.Errorf("lock for migration: %w", err)
			}
			if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS crkvol_schema (version integer NOT NULL)"); err != nil {
				return fmt.Errorf("create crkvol_schema: %w", err)
			}
			var versions []int
			rows, err := tx.Query(ctx, "SELECT version FROM crkvol_schema")
			if err == nil {
				versions, err = pgx.CollectRows(rows, pgx.RowTo[int])
			}
			if err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			switch len(versions) {
			case 0:
				current = 0
			case 1:
				current = versions[0]
			default:
				return fmt.Errorf("crkvol_schema has %d rows, expected one", len(versions))
			}
			if current > LatestVersion {
				return fmt.Errorf("%w: the database is at version %d, this program knows up to version %d: use a newer crkvol",
					ErrSchemaTooNew, current, LatestVersion)
			}
			if current < 0 {
				return fmt.Errorf("crkvol_schema holds version %d", current)
			}
			if current == LatestVersion {
				done = true
				return nil
			}
			m := ms[current] // brings current to current+1
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, "DELETE FROM crkvol_schema"); err != nil {
				return fmt.Errorf("record schema version: %w", err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO crkvol_schema (version) VALUES ($1)", m.version); err != nil {
				return fmt.Errorf("record schema version: %w", err)
			}
			applied = &m
			return nil
		})
		if err != nil {
			return err
		}
		if applied != nil { // logged once committed (Tx may have run fn more than once)
			db.log.Info("database schema migrated", "version", applied.version, "migration", applied.name)
		}
		if done {
			db.version = current
			return nil
		}
	}
}
