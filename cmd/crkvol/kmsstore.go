package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgdb"
)

// storeEnv names the environment variable that selects the key service's store for kms
// serve and the instance and API key commands, as --store does.
const storeEnv = "CRKVOL_STORE"

// storeFlagUsage is the help of --store.
const storeFlagUsage = "where the key service keeps its state: postgres://… (a PostgreSQL database shared by any number of kms serve replicas) or bolt:DIR (a state directory; default: --state) (env " + storeEnv + ")"

// masterKeyFileName is the master key file of the state directory: the bbolt store's, and
// the one a PostgreSQL store uses too, so that kms migrate keeps the key.
const masterKeyFileName = "crk.db.masterkey"

// kmsStore is where the key service keeps its instances, keys and API keys.
type kmsStore struct {
	// dir is the state directory: the bbolt stores, or with url the master key file.
	dir string
	// url is the PostgreSQL database's URL, or "" for the state directory's bbolt stores.
	url string
}

// redacted returns the store as it may be shown: a URL without its password, or the state
// directory.
func (s kmsStore) redacted() string {
	if s.url != "" {
		return pgdb.Redact(s.url)
	}
	return "bolt:" + s.dir
}

// redactStore returns a --store, --from or --to value without any password written in it,
// whatever its scheme.
func redactStore(s string) string {
	return pgdb.Redact(redactURL(s))
}

// errBadStore is a --store value that names no store crkvol knows.
var errBadStore = errors.New("want postgres://…, postgresql://… or bolt:DIR")

// parseBoltStore returns the state directory named by s: bolt:DIR, bolt:DIR/crk.db, or a
// plain path to either.
func parseBoltStore(s string) (string, bool) {
	dir, _ := strings.CutPrefix(s, "bolt:")
	if dir == "" || strings.Contains(dir, "://") {
		return "", false
	}
	if filepath.Base(dir) == "crk.db" {
		dir = filepath.Dir(dir)
	}
	return filepath.Clean(dir), true
}

// addStoreFlag gives cmd (and its subcommands) the --store flag.
func (a *app) addStoreFlag(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&a.store, "store", "", storeFlagUsage)
}

// kmsStore resolves --store, else CRKVOL_STORE: a PostgreSQL URL, or bolt:DIR for the state
// directory DIR; empty means the state directory (--state), as before PostgreSQL stores.
func (a *app) kmsStore() (kmsStore, error) {
	s := a.store
	if s == "" && !a.flagGiven("store") {
		s = a.getenv(storeEnv)
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return kmsStore{}, err
	}
	switch {
	case s == "":
		return kmsStore{dir: dir}, nil
	case pgdb.IsURL(s):
		return kmsStore{dir: dir, url: s}, nil
	}
	if !strings.HasPrefix(s, "bolt:") {
		return kmsStore{}, usagef("--store %q: %w", redactStore(s), errBadStore)
	}
	d, ok := parseBoltStore(s)
	if !ok {
		return kmsStore{}, usagef("--store %q: %w", redactStore(s), errBadStore)
	}
	return kmsStore{dir: d}, nil
}

// pgTenants is a PostgreSQL store opened for kms serve and the instance and API key
// commands: the tenants, and the database connection kms serve also holds its scheduler
// lease on.
type pgTenants struct {
	*kpapi.Tenants
	db       *pgdb.DB
	services *crk.Database
}

// Close closes the tenants' services, then both connections.
func (p *pgTenants) Close() error {
	err := p.Tenants.Close()
	p.db.Close()
	p.services.Close()
	return err
}

// openTenants opens the tenants of store: the state directory's (kpapi.OpenTenants), or the
// PostgreSQL database's. For a database the master key is CRKVOL_MASTER_KEY, else the state
// directory's key file, which is made only while the database holds no instance: a replica
// joining a database in use needs the key file of the others. With a database, the
// returned *pgdb.DB is the tenants' connection (for kms serve's scheduler lease); it is nil
// for a state directory. log, given by kms serve only, receives the database's retries and
// reconnections; without it (the instance and API key commands, which open no key service)
// the master key file is not checked.
func (a *app) openTenants(ctx context.Context, store kmsStore, log *slog.Logger) (*kpapi.Tenants, *pgdb.DB, func() error, error) {
	clock, err := a.clock()
	if err != nil {
		return nil, nil, nil, err
	}
	opts, err := a.crkOptions(clock)
	if err != nil {
		return nil, nil, nil, err
	}
	if store.url == "" {
		t, err := kpapi.OpenTenants(store.dir, opts)
		if err != nil {
			return nil, nil, nil, err
		}
		return t, nil, t.Close, nil
	}
	serving := log != nil
	if !serving {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Logger = log
	services, err := crk.OpenDatabase(ctx, store.url, log)
	if err != nil {
		return nil, nil, nil, storeUnreachable(err, store)
	}
	if opts.MasterKey == nil {
		opts.MasterKeyFile = filepath.Join(store.dir, masterKeyFileName)
	}
	// Managing instances and API keys opens no key service: only a server needs the key.
	if opts.MasterKey == nil && serving {
		if err := a.checkMasterKeyFile(ctx, services, opts.MasterKeyFile); err != nil {
			services.Close()
			return nil, nil, nil, err
		}
	}
	db, err := pgdb.Open(ctx, store.url, pgdb.Options{Logger: log, ApplicationName: "crkvol tenants"})
	if err != nil {
		services.Close()
		return nil, nil, nil, storeUnreachable(err, store)
	}
	t, err := kpapi.OpenTenantsPostgres(ctx, db, func(instance string) (*crk.Service, error) {
		o := opts
		o.Instance = instance
		svc, err := services.Open(o)
		return svc, masterKeyHint(err, opts.MasterKeyFile)
	})
	if err != nil {
		db.Close()
		services.Close()
		return nil, nil, nil, err
	}
	p := &pgTenants{Tenants: t, db: db, services: services}
	return t, db, p.Close, nil
}

// checkMasterKeyFile refuses to let a replica make a new master key file while the
// database already holds instances: their keys are sealed under the key file of the
// replicas that made them, and a new one would open none of them.
func (a *app) checkMasterKeyFile(ctx context.Context, services *crk.Database, file string) error {
	if _, err := os.Stat(file); !errors.Is(err, fs.ErrNotExist) {
		return nil // there is one (or crk reports what is wrong with it)
	}
	ids, err := services.Instances(ctx)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		// A new database: the first replica makes the key file.
		return os.MkdirAll(filepath.Dir(file), 0o700)
	}
	return withHint(fmt.Errorf("master key file %s does not exist, and the database already holds %d instance(s) sealed under another replica's key: %w", file, len(ids), crk.ErrMasterKey),
		"copy the master key file from another replica to "+file+" (mode 0600), or give the key in "+masterKeyEnv)
}

// masterKeyHint adds to a master key error of a PostgreSQL store the hint that every
// replica needs the same key file.
func masterKeyHint(err error, file string) error {
	if err == nil || !errors.Is(err, crk.ErrMasterKey) {
		return err
	}
	if file == "" {
		return withHint(err, "every replica needs the same master key: give the one the database was made with in "+masterKeyEnv)
	}
	return withHint(err, "every replica needs the same master key: copy the master key file from another replica to "+file+" (mode 0600)")
}

// storeUnreachable adds the store to an error opening a database (pgdb keeps passwords
// out of its messages).
func storeUnreachable(err error, store kmsStore) error {
	return fmt.Errorf("opening the key store %s: %w", store.redacted(), err)
}
