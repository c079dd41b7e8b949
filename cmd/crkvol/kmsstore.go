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
	"crkvol/internal/fsutil"
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
	switch {
	case s == "":
		dir, err := a.stateDirectory() // checked: the store lives there
		if err != nil {
			return kmsStore{}, err
		}
		return kmsStore{dir: dir}, nil
	case pgdb.IsURL(s):
		// The state directory holds only the master key file, unless the key comes from the
		// environment: crk checks the file's directory when it reads or makes it.
		dir, err := a.stateDirectoryPath()
		if err != nil {
			return kmsStore{}, err
		}
		return kmsStore{dir: dir, url: s}, nil
	}
	if !strings.HasPrefix(s, "bolt:") {
		return kmsStore{}, usagef("--store %q: %w", redactStore(s), errBadStore)
	}
	d, ok := parseBoltStore(s)
	if !ok {
		return kmsStore{}, usagef("--store %q: %w", redactStore(s), errBadStore)
	}
	// Checked before anything in it is read (kms serve's record, its store's lock), as the
	// state directory is.
	if err := fsutil.CheckPrivate(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return kmsStore{}, fmt.Errorf("--store %s: %w", redactStore(s), err)
	}
	return kmsStore{dir: d}, nil
}

// openTenants opens the tenants of store: the state directory's (kpapi.OpenTenants), or the
// PostgreSQL database's (kpapi.OpenTenantsDatabase). For a database the master key is
// CRKVOL_MASTER_KEY, else the state directory's key file, which kms serve makes only while the
// database holds no instance: a replica joining a database in use needs the key file of the
// others. log, given by kms serve only, receives the database's retries and reconnections;
// without it (the instance and API key commands, which open no key service) the master key
// file is not checked.
func (a *app) openTenants(ctx context.Context, store kmsStore, log *slog.Logger) (*kpapi.Tenants, error) {
	clock, err := a.clock()
	if err != nil {
		return nil, err
	}
	opts, err := a.crkOptions(clock)
	if err != nil {
		return nil, err
	}
	if store.url == "" {
		return kpapi.OpenTenants(store.dir, opts)
	}
	serving := log != nil
	if !serving {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Logger = log
	if opts.MasterKey == nil {
		opts.MasterKeyFile = filepath.Join(store.dir, masterKeyFileName)
		// Managing instances and API keys opens no key service: only a server needs the key.
		if serving {
			if err := a.checkMasterKeyFile(ctx, store, opts.MasterKeyFile); err != nil {
				return nil, err
			}
		}
	}
	t, err := kpapi.OpenTenantsDatabase(ctx, store.url, opts)
	if err != nil {
		return nil, storeUnreachable(err, store)
	}
	return t, nil
}

// checkMasterKeyFile refuses to let a replica make a new master key file while the
// database already holds instances: their keys are sealed under the key file of the
// replicas that made them, and a new one would open none of them.
func (a *app) checkMasterKeyFile(ctx context.Context, store kmsStore, file string) error {
	if _, err := os.Stat(file); !errors.Is(err, fs.ErrNotExist) {
		return nil // there is one (or crk reports what is wrong with it)
	}
	services, err := crk.OpenDatabase(ctx, store.url, nil)
	if err != nil {
		return storeUnreachable(err, store)
	}
	defer services.Close()
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
// replica needs the same key file; not to a key file refused for its directory, whose error
// says what to change.
func masterKeyHint(err error, file string) error {
	if err == nil || !errors.Is(err, crk.ErrMasterKey) || errors.Is(err, fsutil.ErrNotPrivate) {
		return err
	}
	if file == "" {
		return withHint(err, "every replica needs the same master key: give the one the database was made with in "+masterKeyEnv)
	}
	return withHint(err, "every replica needs the same master key: copy the master key file from another replica to "+file+" (mode 0600)")
}

// masterKeyFileOf is the master key file a PostgreSQL store's services use: the state
// directory's, or "" when the key comes from CRKVOL_MASTER_KEY.
func masterKeyFileOf(store kmsStore, a *app) string {
	if a.getenv(masterKeyEnv) != "" {
		return ""
	}
	return filepath.Join(store.dir, masterKeyFileName)
}

// storeUnreachable adds the store to an error opening a database (pgdb keeps passwords
// out of its messages).
func storeUnreachable(err error, store kmsStore) error {
	return fmt.Errorf("opening the key store %s: %w", store.redacted(), err)
}
