package kpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"crkvol/crk"
	"crkvol/internal/ident"
	"crkvol/internal/pgdb"
)

// OpenTenantsPostgres opens the tenants kept in the PostgreSQL database db (tables
// kp_instances, kp_api_keys, kp_api_key_instances, kp_tokens and kp_sessions, made by
// [pgdb.Open]): every process on the same database — every `kms serve` replica — sees the
// same instances and API keys and accepts the tokens and console sessions any of them
// issued, and a revoked API key's tokens and sessions stop working at once on all of them. open opens an instance's crk service, when first needed, by its id; the default
// instance is the kp_instances row marked default, made with a random id by the first
// Tenants on an empty database (replicas starting together agree on one).
//
// Tokens are kept as sha256 hashes with their expiry, the issuing replica's wall-clock time
// plus [TokenLifetime], and are checked against the checking replica's wall clock: the
// replicas' clocks must agree within seconds, as in any system of expiring tokens. The limits
// [MaxTokens] and [MaxTokensPerKey] hold across the replicas: a token is issued in one
// transaction that counts, evicts and inserts under a lock of the token table that only
// issuing and revoking take (checking a token does not wait for it). Sessions are kept and
// bounded ([MaxSessions], [MaxSessionsPerKey]) the same way, in their own table.
//
// The Tenants does not own db: [Tenants.Close] closes the services it opened, not the
// database.
func OpenTenantsPostgres(ctx context.Context, db *pgdb.DB, open func(instance string) (*crk.Service, error)) (*Tenants, error) {
	if db == nil || open == nil {
		return nil, errors.New("kpapi: OpenTenantsPostgres needs a database and a way to open services")
	}
	store := &pgStore{db: db}
	t := newTenants(store, func(id string, _ bool) (*crk.Service, error) { return open(id) })
	def, err := store.ensureDefault(ctx, func() (string, error) { return ident.NewUUID(rand.Reader) })
	if err != nil {
		return nil, err
	}
	t.def, t.db = def, db
	return t, nil
}

// Database returns the PostgreSQL database of tenants opened by [OpenTenantsPostgres] or
// [OpenTenantsDatabase] (for a lease of its own, as kms serve's scheduler), and nil for a
// state directory's.
func (t *Tenants) Database() *pgdb.DB { return t.db }

// OpenTenantsDatabase opens the tenants and the key services of the PostgreSQL database at
// url (postgres://…), creating or migrating its tables: what any number of kms serve
// replicas share. opts configure every instance's service; opts.MasterKey or
// opts.MasterKeyFile is required, the same key for every replica. The Tenants owns the
// database connections and closes them in Close.
func OpenTenantsDatabase(ctx context.Context, url string, opts crk.Options) (*Tenants, error) {
	if opts.MasterKey == nil && opts.MasterKeyFile == "" {
		return nil, fmt.Errorf("kpapi: %w: a PostgreSQL store needs the master key or its key file", crk.ErrMasterKey)
	}
	services, err := crk.OpenDatabase(ctx, url, opts.Logger)
	if err != nil {
		return nil, err
	}
	db, err := pgdb.Open(ctx, url, pgdb.Options{Logger: opts.Logger, ApplicationName: "crkvol tenants"})
	if err != nil {
		services.Close()
		return nil, fmt.Errorf("kpapi: %w", err)
	}
	t, err := OpenTenantsPostgres(ctx, db, func(instance string) (*crk.Service, error) {
		o := opts
		o.Instance = instance
		return services.Open(o)
	})
	if err != nil {
		db.Close()
		services.Close()
		return nil, err
	}
	t.closers = append(t.closers, func() { db.Close() }, func() { services.Close() })
	return t, nil
}

// pgStore is the tenant store of a PostgreSQL database.
type pgStore struct {
	db *pgdb.DB
}

// lockTokens is the lock taken by the transactions that add tokens or delete API keys:
// SHARE ROW EXCLUSIVE conflicts with itself and with the ROW EXCLUSIVE of other writers, not
// with the ACCESS SHARE of readers. Issuing under it makes the limits exact across replicas;
// revoking under it takes the same locks in the same order (the table, then the key's row)
// as issuing, whose token insert locks the key's row for its foreign key, so the two never
// deadlock.
const lockTokens = `LOCK TABLE kp_tokens IN SHARE ROW EXCLUSIVE MODE`

// lockSessions is lockTokens for the session table, taken by the transactions that start
// sessions or delete API keys. Revoking takes lockTokens, then lockSessions, then the key's
// row; starting a session takes lockSessions, then the key's row; issuing a token takes
// lockTokens, then the key's row: the same order everywhere, so none deadlock.
const lockSessions = `LOCK TABLE kp_sessions IN SHARE ROW EXCLUSIVE MODE`

func (s *pgStore) ensureDefault(ctx context.Context, mk func() (string, error)) (string, error) {
	var def string
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT id FROM kp_instances WHERE is_default`).Scan(&def)
		if !errors.Is(err, pgx.ErrNoRows) {
			return err // found, or failed
		}
		id, err := mk()
		if err != nil {
			return err
		}
		// Another replica may insert its own default at the same time: the unique index
		// on is_default lets one win, and the loser reads the winner's row back.
		_, err = tx.Exec(ctx, `INSERT INTO kp_instances (id, name, created, is_default)
			VALUES ($1, 'default', $2, true) ON CONFLICT DO NOTHING`, id, time.Now().UTC())
		if err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT id FROM kp_instances WHERE is_default`).Scan(&def)
	})
	return def, dbError("recording the default instance", err)
}

func (s *pgStore) createInstance(ctx context.Context, in instanceEntry) error {
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO kp_instances (id, name, created, is_default) VALUES ($1, $2, $3, false)`,
			in.ID, in.Name, in.Created)
		return err
	})
	return dbError("recording an instance", err)
}

func (s *pgStore) known(ctx context.Context, id string) (bool, error) {
	var ok bool
	err := s.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM kp_instances WHERE id = $1)`, id).Scan(&ok)
	})
	return ok, dbError("reading instances", err)
}

func (s *pgStore) instances(ctx context.Context) ([]InstanceInfo, error) {
	out, err := ListInstancesPostgres(ctx, s.db)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 || !out[0].Default {
		return nil, errors.New("kpapi: the database has no default instance")
	}
	return out, nil
}

func (s *pgStore) addAPIKey(ctx context.Context, k apiKeyEntry) error {
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		return insertAPIKey(ctx, tx, k, false)
	})
	return dbError("recording an API key", err)
}

// insertAPIKey inserts the API key k, of its instances, which must exist; with
// ifMissing, a key already there is left as it is (its instances too).
func insertAPIKey(ctx context.Context, tx pgx.Tx, k apiKeyEntry, ifMissing bool) error {
	instances := k.instanceList()
	var found []string
	rows, err := tx.Query(ctx, `SELECT id FROM kp_instances WHERE id = ANY($1)`, instances)
	if err == nil {
		found, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return err
	}
	for _, in := range instances {
		if !slices.Contains(found, in) {
			return errKeyInstance(in)
		}
	}
	conflict := ""
	if ifMissing {
		conflict = " ON CONFLICT (hash) DO NOTHING"
	}
	tag, err := tx.Exec(ctx, `INSERT INTO kp_api_keys (hash, instance, created) VALUES ($1, $2, $3)`+conflict,
		k.Hash, instances[0], k.Created)
	if err != nil || tag.RowsAffected() == 0 {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO kp_api_key_instances (hash, instance, position)
		SELECT $1, instance, position - 1 FROM unnest($2::text[]) WITH ORDINALITY AS i (instance, position)`,
		k.Hash, instances)
	return err
}

func (s *pgStore) apiKeys(ctx context.Context) ([]apiKeyEntry, error) {
	var out []apiKeyEntry
	err := s.db.ReadTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT k.hash, k.instance, k.created, array(SELECT i.instance FROM kp_api_key_instances i
				WHERE i.hash = k.hash ORDER BY i.position)
			FROM kp_api_keys k ORDER BY k.created, k.hash`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (apiKeyEntry, error) {
			var k apiKeyEntry
			if err := r.Scan(&k.Hash, &k.Instance, &k.Created, &k.Instances); err != nil {
				return k, err
			}
			// Every key has instance rows (programs older than migration 2 refuse
			// the database); a row made by hand without them is listed with
			// kp_api_keys.instance rather than failing the whole listing, and its
			// tokens are accepted for no instance.
			if len(k.Instances) > 0 {
				k.Instance = k.Instances[0]
			}
			k.Created = k.Created.UTC()
			return k, nil
		})
		return err
	})
	return out, dbError("reading API keys", err)
}

func (s *pgStore) revokeAPIKeys(ctx context.Context, id string) (int, error) {
	var n int
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockTokens); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, lockSessions); err != nil {
			return err
		}
		// The key's tokens, sessions and instance rows go with it (ON DELETE CASCADE).
		tag, err := tx.Exec(ctx, `DELETE FROM kp_api_keys WHERE left(hash, 16) = $1`, id)
		n = int(tag.RowsAffected())
		return err
	})
	return n, dbError("revoking API keys", err)
}

// credTable is a table of credentials, kp_tokens or kp_sessions, for makeRoom: its name
// and the column its rows are evicted by, oldest (smallest) first. Tokens all live
// [TokenLifetime], so their expiry orders them as their issue would; sessions' lifetimes
// may differ ([Tenants.SetSessionLifetime]), so they go by their start.
type credTable struct{ name, age string }

// makeRoom prepares tbl for one more credential of the API key with hash keyHash, in tx,
// which holds the table's lock (lockTokens, lockSessions): it drops the rows expired at
// now, then keeps the key's newest lim.perKey-1 rows and the table's newest lim.total-1.
func makeRoom(ctx context.Context, tx pgx.Tx, tbl credTable, keyHash string, now time.Time, lim tokenLimits) error {
	// tbl's names are literals of this file, never input.
	if _, err := tx.Exec(ctx, `DELETE FROM `+tbl.name+` WHERE expires <= $1`, now); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM `+tbl.name+` WHERE hash IN (
		SELECT hash FROM `+tbl.name+` WHERE key_hash = $1 ORDER BY `+tbl.age+` DESC, hash DESC OFFSET $2)`,
		keyHash, lim.perKey-1); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM `+tbl.name+` WHERE hash IN (
		SELECT hash FROM `+tbl.name+` ORDER BY `+tbl.age+` DESC, hash DESC OFFSET $1)`, lim.total-1)
	return err
}

func (s *pgStore) issueToken(ctx context.Context, keyHash string, tok credEntry, now time.Time, lim tokenLimits) error {
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockTokens); err != nil {
			return err
		}
		// Looked up by its hash: the timing of an index lookup tells nothing of the hashes
		// of keys one does not hold. kp_tokens.instance keeps the key's first instance;
		// authorize reads the key's instances.
		var instance string
		err := tx.QueryRow(ctx, `SELECT instance FROM kp_api_keys WHERE hash = $1`, keyHash).Scan(&instance)
		if errors.Is(err, pgx.ErrNoRows) {
			return errAPIKeyUnknown
		}
		if err != nil {
			return err
		}
		if err := makeRoom(ctx, tx, credTable{name: "kp_tokens", age: "expires"}, keyHash, now, lim); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO kp_tokens (hash, instance, key_hash, expires) VALUES ($1, $2, $3, $4)`,
			tok.sum[:], instance, keyHash, tok.expires)
		return err
	})
	return dbError("issuing a token", err)
}

func (s *pgStore) authorize(ctx context.Context, sum [sha256.Size]byte, instance string, now time.Time) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout) // Tenants.Authorize sets none
	defer cancel()
	// One query: a token whose API key was revoked has no row (the join, and the cascade
	// that deleted the token with the key), on every replica at once.
	var (
		expires time.Time
		ofKey   bool
		keyHash string
	)
	err := s.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT t.key_hash, t.expires, EXISTS (SELECT 1 FROM kp_api_key_instances i
				WHERE i.hash = t.key_hash AND i.instance = $2)
			FROM kp_tokens t JOIN kp_api_keys k ON k.hash = t.key_hash WHERE t.hash = $1`,
			sum[:], instance).Scan(&keyHash, &expires, &ofKey)
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", errTokenUnknown
	case err != nil:
		return "", dbError("reading tokens", err)
	case !now.Before(expires):
		if err := s.expire(ctx, now); err != nil {
			return "", err
		}
		return "", errTokenUnknown
	case !ofKey:
		return "", errOtherInstance(instance)
	}
	return keyHash, nil
}

func (s *pgStore) startSession(ctx context.Context, keyHash string, e credEntry, now time.Time, lim tokenLimits) ([]string, error) {
	var instances []string
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockSessions); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `SELECT array(SELECT i.instance FROM kp_api_key_instances i
				WHERE i.hash = k.hash ORDER BY i.position)
			FROM kp_api_keys k WHERE k.hash = $1`, keyHash).Scan(&instances)
		if errors.Is(err, pgx.ErrNoRows) {
			return errAPIKeyUnknown
		}
		if err != nil {
			return err
		}
		if err := makeRoom(ctx, tx, credTable{name: "kp_sessions", age: "created"}, keyHash, now, lim); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO kp_sessions (hash, key_hash, created, expires) VALUES ($1, $2, $3, $4)`,
			e.sum[:], keyHash, e.created, e.expires)
		return err
	})
	if err != nil {
		return nil, dbError("starting a session", err)
	}
	return instances, nil
}

func (s *pgStore) checkSession(ctx context.Context, sum [sha256.Size]byte, now time.Time) (string, []string, time.Time, error) {
	// One query, as authorize: a revoked key's sessions are gone with it.
	var (
		keyHash   string
		instances []string
		expires   time.Time
	)
	err := s.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT s.key_hash, s.expires, array(SELECT i.instance FROM kp_api_key_instances i
				WHERE i.hash = s.key_hash ORDER BY i.position)
			FROM kp_sessions s JOIN kp_api_keys k ON k.hash = s.key_hash WHERE s.hash = $1`,
			sum[:]).Scan(&keyHash, &expires, &instances)
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", nil, time.Time{}, errSessionUnknown
	case err != nil:
		return "", nil, time.Time{}, dbError("reading sessions", err)
	case !now.Before(expires):
		if err := s.expire(ctx, now); err != nil {
			return "", nil, time.Time{}, err
		}
		return "", nil, time.Time{}, errSessionUnknown
	}
	return keyHash, instances, expires.UTC(), nil
}

func (s *pgStore) endSession(ctx context.Context, sum [sha256.Size]byte) error {
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM kp_sessions WHERE hash = $1`, sum[:])
		return err
	})
	return dbError("ending a session", err)
}

func (s *pgStore) expire(ctx context.Context, now time.Time) error {
	err := s.db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM kp_tokens WHERE expires <= $1`, now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM kp_sessions WHERE expires <= $1`, now)
		return err
	})
	return dbError("expiring tokens and sessions", err)
}

func (s *pgStore) tokenCount(ctx context.Context) (int, error) {
	var n int
	err := s.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT count(*) FROM kp_tokens`).Scan(&n)
	})
	return n, dbError("counting tokens", err)
}

func (s *pgStore) sessionCount(ctx context.Context) (int, error) {
	var n int
	err := s.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT count(*) FROM kp_sessions`).Scan(&n)
	})
	return n, dbError("counting sessions", err)
}

// dbError names what failed of a database error; refusals of credentials, and unknown
// instances, pass unchanged. A database out of reach (even after retries), or a commit of
// unknown outcome, is marked [crk.ErrUnavailable]: the server answers 503, not a refusal of
// the credential.
func dbError(what string, err error) error {
	switch {
	case err == nil || errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrUnknownInstance):
		return err
	case errors.Is(err, crk.ErrUnavailable):
	case errors.Is(err, pgdb.ErrCommitUnknown):
		return fmt.Errorf("kpapi: %s: %w: the change may or may not have happened: %w", what, crk.ErrUnavailable, err)
	case errors.Is(err, pgdb.ErrUnavailable):
		return fmt.Errorf("kpapi: %s: %w: %w", what, crk.ErrUnavailable, err)
	}
	return fmt.Errorf("kpapi: %s: %w", what, err)
}

// ErrDefaultInstanceMismatch means a database already has a default instance other than the
// one [CopyTenants] would copy into it.
var ErrDefaultInstanceMismatch = errors.New("the database has another default instance")

// ErrNotStateDirectory means [CopyTenants] was given tenants that are not a state
// directory's.
var ErrNotStateDirectory = errors.New("not the tenants of a state directory")

// CopyTenants copies the instances and API-key hashes of a state directory's tenants (from,
// opened by [OpenTenants]) into the database db, in one transaction, for moving a key
// service to PostgreSQL: afterwards [OpenTenantsPostgres] on db has the same default instance
// and instances, and the same API keys work. Issued tokens are not copied (clients exchange
// their API keys again). Rows already in db are left as they are, so a copy interrupted or
// repeated can be run again; a database whose default instance is another one (a service
// already started on it) is refused with [ErrDefaultInstanceMismatch], before anything is
// written. The instances' crk stores are not copied: that is the crk store's migration.
func CopyTenants(ctx context.Context, from *Tenants, db *pgdb.DB) error {
	fs, ok := from.store.(*fileStore)
	if !ok {
		return fmt.Errorf("kpapi: copying tenants: %w", ErrNotStateDirectory)
	}
	tf, err := fs.load()
	if err != nil {
		return err
	}
	if tf.Default == "" {
		return fmt.Errorf("kpapi: copying tenants: %s has no default instance: %w", fs.dir, ErrNotStateDirectory)
	}
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		var def string
		err := tx.QueryRow(ctx, `SELECT id FROM kp_instances WHERE is_default FOR UPDATE`).Scan(&def)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// The unique index refuses a second default inserted meanwhile; the
			// transaction then fails and nothing is copied.
			if _, err := tx.Exec(ctx, `INSERT INTO kp_instances (id, name, created, is_default)
				VALUES ($1, 'default', $2, true)`, tf.Default, time.Now().UTC()); err != nil {
				return err
			}
		case err != nil:
			return err
		case def != tf.Default:
			return fmt.Errorf("%w: %s, not %s", ErrDefaultInstanceMismatch, def, tf.Default)
		}
		for _, in := range tf.Instances {
			if in.ID == tf.Default {
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO kp_instances (id, name, created, is_default)
				VALUES ($1, $2, $3, false) ON CONFLICT (id) DO NOTHING`, in.ID, in.Name, in.Created); err != nil {
				return err
			}
		}
		for _, k := range tf.APIKeys {
			if err := insertAPIKey(ctx, tx, k, true); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrDefaultInstanceMismatch) || errors.Is(err, ErrUnknownInstance) {
		return fmt.Errorf("kpapi: copying tenants: %w", err)
	}
	return dbError("copying tenants", err)
}
