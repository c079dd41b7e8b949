package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	bolt "go.etcd.io/bbolt"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgdb"
)

// errMigrated is a destination that already holds keys, registrations or events of an
// instance being copied: kms migrate never merges two stores.
var errMigrated = errors.New("the destination already holds this instance's data")

// errMigrateMismatch is a destination whose listing after the copy differs from the
// source's.
var errMigrateMismatch = errors.New("the copy differs from the source")

func (a *app) kmsMigrateCommand() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{Use: "migrate", Short: "Copy a state directory's key service into a PostgreSQL database, verified", Args: args(cobra.NoArgs),
		Long: `Copy the key service of a state directory (--from bolt:DIR, or DIR) into a PostgreSQL database
(--to postgres://…), for kms serve --store: every instance with its keys, versions,
registrations, audit events and lifecycle feed (event sequence numbers and feed cursors kept,
so feed followers carry on), and the instances' names and API keys (issued tokens are not
copied: clients exchange their API keys again). The state directory is left as it was, except
that an instance whose master key file differs from the state directory's crk.db.masterkey is
first re-encrypted under that key (one master key serves every instance of a database): copy
that file to every kms serve replica, or give the key in CRKVOL_MASTER_KEY.

Stop kms serve (and every other crkvol process using the state directory) first: kms migrate
refuses while one holds the stores. A destination that already holds data of an instance
being copied is refused before anything is written, so a second run changes nothing. After
the copy, every instance is listed in both stores (keys with their states and versions,
registrations, the feed head, the number of audit events) and any difference is an error; the
summary printed is that listing.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.migrate(cmd.Context(), from, to)
		}}
	cmd.Flags().StringVar(&from, "from", "", "the state directory to copy: bolt:DIR, bolt:DIR/crk.db or DIR")
	cmd.Flags().StringVar(&to, "to", "", "the PostgreSQL database to copy into: postgres://…")
	requireFlags(cmd, "from", "to")
	return cmd
}

// instanceListing is what kms migrate compares between the source and the copy.
type instanceListing struct {
	ID            string   `json:"id"`
	Name          string   `json:"name"`
	Default       bool     `json:"default"`
	Keys          []string `json:"-"` // id, state, latest version, deleted
	KeyCount      int      `json:"keys"`
	Registrations []string `json:"-"` // key id and CRN
	RegCount      int      `json:"registrations"`
	Events        int      `json:"events"`
	FeedHead      string   `json:"feedHead"`
	Rekeyed       bool     `json:"rekeyed,omitempty"`
}

// listInstance lists what kms migrate checks of one instance's service. Listing keys and
// registrations records an audit event each: a source is listed before its events are
// counted, so that the count includes the listing's (and they are copied), and a copy after
// (eventsFirst), so that its count is the copy's.
func listInstance(ctx context.Context, svc *crk.Service, eventsFirst bool) (instanceListing, error) {
	l := instanceListing{ID: svc.Instance(), Keys: []string{}, Registrations: []string{}}
	count := func() error {
		evs, err := svc.Events(ctx, crk.EventFilter{})
		if err != nil {
			return fmt.Errorf("listing the audit events of instance %s: %w", l.ID, err)
		}
		head, err := svc.Lifecycle(ctx, "", 0)
		if err != nil {
			return fmt.Errorf("reading the lifecycle feed of instance %s: %w", l.ID, err)
		}
		l.Events, l.FeedHead = len(evs), head.Cursor
		return nil
	}
	if eventsFirst {
		if err := count(); err != nil {
			return l, err
		}
	}
	keys, err := svc.ListKeys(ctx, crk.ListOptions{States: []crk.State{crk.StatePreActivation, crk.StateActive, crk.StateSuspended, crk.StateDeactivated, crk.StateDestroyed}})
	if err != nil {
		return l, fmt.Errorf("listing the keys of instance %s: %w", l.ID, err)
	}
	for _, k := range keys {
		l.Keys = append(l.Keys, fmt.Sprintf("%s state=%s version=%s deleted=%t", k.ID, k.State, k.KeyVersion.ID, k.Deleted))
	}
	regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{})
	if err != nil {
		return l, fmt.Errorf("listing the registrations of instance %s: %w", l.ID, err)
	}
	for _, r := range regs {
		l.Registrations = append(l.Registrations, r.KeyID+" "+r.ResourceCRN)
	}
	l.KeyCount, l.RegCount = len(l.Keys), len(l.Registrations)
	if !eventsFirst {
		if err := count(); err != nil {
			return l, err
		}
	}
	return l, nil
}

// copiedBefore reports whether the destination's service of an instance holds audit events
// already (every key and registration made records one; reading them would record more):
// such an instance was copied before, or used. crk.CopyStore refuses any other content.
func copiedBefore(ctx context.Context, svc *crk.Service) (int, error) {
	evs, err := svc.Events(ctx, crk.EventFilter{})
	if err != nil {
		return 0, fmt.Errorf("listing the audit events of instance %s: %w", svc.Instance(), err)
	}
	return len(evs), nil
}

// diff names the first difference between the source's listing l and the copy's.
func (l instanceListing) diff(c instanceListing) error {
	switch {
	case !slices.Equal(l.Keys, c.Keys):
		return fmt.Errorf("%w: instance %s: keys %q, copied %q", errMigrateMismatch, l.ID, l.Keys, c.Keys)
	case !slices.Equal(l.Registrations, c.Registrations):
		return fmt.Errorf("%w: instance %s: registrations %q, copied %q", errMigrateMismatch, l.ID, l.Registrations, c.Registrations)
	case l.Events != c.Events:
		return fmt.Errorf("%w: instance %s: %d audit events, copied %d", errMigrateMismatch, l.ID, l.Events, c.Events)
	case l.FeedHead != c.FeedHead:
		return fmt.Errorf("%w: instance %s: lifecycle feed head %q, copied %q", errMigrateMismatch, l.ID, l.FeedHead, c.FeedHead)
	}
	return nil
}

// migrate copies the state directory of from into the database of to (see kmsMigrateCommand).
func (a *app) migrate(ctx context.Context, from, to string) error {
	dir, ok := parseBoltStore(from)
	if !ok || pgdb.IsURL(from) {
		return usagef("--from %q: want a state directory: bolt:DIR, bolt:DIR/crk.db or DIR", redactStore(from))
	}
	if !pgdb.IsURL(to) {
		if _, ok := parseBoltStore(to); ok {
			return usagef("--to %q: kms migrate copies into PostgreSQL only; copying back into a state directory is not supported", to)
		}
		return usagef("--to %q: want a PostgreSQL URL, postgres://…", redactStore(to))
	}
	dest := kmsStore{dir: dir, url: to}
	defPath := filepath.Join(dir, "crk.db")
	if _, err := os.Stat(defPath); err != nil {
		return fmt.Errorf("no key store to copy at %s: %w", defPath, err)
	}
	if rec, held := serveHolds(defPath, dir); held {
		return withHint(fmt.Errorf("the key store %s is held by kms serve at %s (process %d)", defPath, rec.URL, rec.PID),
			"stop that kms serve first (its clients wait or retry), then run kms migrate again")
	}
	clock, err := a.clock()
	if err != nil {
		return err
	}
	opts, err := a.crkOptions(clock)
	if err != nil {
		return err
	}
	src, err := kpapi.OpenTenants(dir, opts)
	if err != nil {
		return migrateHeld(err, defPath)
	}
	defer src.Close()
	infos, err := src.ListInstances()
	if err != nil {
		return err
	}
	// Open every source store first: a store held by another process stops the migration
	// before anything is written.
	// An instance created but never used has no store yet: there is nothing to copy but its
	// name, and the database makes its store when first used.
	srcSvc := map[string]*crk.Service{}
	var stored []kpapi.InstanceInfo
	for _, in := range infos {
		if !in.Default {
			if _, err := os.Stat(filepath.Join(dir, "instances", in.ID, "crk.db")); errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		stored = append(stored, in)
		svc, err := src.Service(in.ID)
		if err != nil {
			return migrateHeld(err, fmt.Sprintf("of instance %s", in.ID))
		}
		srcSvc[in.ID] = svc
	}

	dstOpts := opts
	if dstOpts.MasterKey == nil {
		dstOpts.MasterKeyFile = filepath.Join(dir, masterKeyFileName)
	}
	services, err := crk.OpenDatabase(ctx, to, nil)
	if err != nil {
		return storeUnreachable(err, dest)
	}
	defer services.Close()
	db, err := pgdb.Open(ctx, to, pgdb.Options{ApplicationName: "crkvol migrate"})
	if err != nil {
		return storeUnreachable(err, dest)
	}
	defer db.Close()
	dstSvc := map[string]*crk.Service{}
	defer func() {
		for _, s := range dstSvc {
			s.Close()
		}
	}()
	// Refuse a destination holding data of any instance before writing anything.
	for _, in := range stored {
		o := dstOpts
		o.Instance = in.ID
		svc, err := services.Open(o)
		if err != nil {
			return fmt.Errorf("opening instance %s in %s: %w", in.ID, dest.redacted(), masterKeyHint(err, dstOpts.MasterKeyFile))
		}
		dstSvc[in.ID] = svc
		n, err := copiedBefore(ctx, svc)
		if err != nil {
			return err
		}
		if n > 0 {
			return withHint(fmt.Errorf("instance %s in %s: %w (%d audit events); nothing was changed", in.ID, dest.redacted(), errMigrated, n),
				"was the state directory migrated already? kms serve --store with this database serves it; to copy again, use an empty database")
		}
	}

	// One master key serves every instance of a database: re-encrypt an instance whose key
	// file differs under the state directory's.
	rekeyed := map[string]bool{}
	if opts.MasterKey == nil {
		defKey, err := readMasterKeyFile(dstOpts.MasterKeyFile)
		if err != nil {
			return err
		}
		for _, in := range stored {
			if in.Default {
				continue
			}
			k, err := readMasterKeyFile(filepath.Join(dir, "instances", in.ID, "crk.db.masterkey"))
			if err != nil {
				return err
			}
			if bytes.Equal(k, defKey) {
				continue
			}
			if err := srcSvc[in.ID].RotateMasterKey(ctx, defKey); err != nil {
				return fmt.Errorf("re-encrypting instance %s under the master key of %s: %w", in.ID, dstOpts.MasterKeyFile, err)
			}
			rekeyed[in.ID] = true
		}
	}

	var before []instanceListing
	for _, in := range stored {
		l, err := listInstance(ctx, srcSvc[in.ID], false)
		if err != nil {
			return err
		}
		l.Name, l.Default, l.Rekeyed = in.Name, in.Default, rekeyed[in.ID]
		before = append(before, l)
	}
	srcKeys, err := src.ListAPIKeys()
	if err != nil {
		return err
	}

	// The tenants first: kpapi.CopyTenants must run before anything opens the database's
	// tenants (which would make a default instance of its own).
	if err := kpapi.CopyTenants(ctx, src, db); err != nil {
		return fmt.Errorf("copying instances and API keys into %s: %w", dest.redacted(), err)
	}
	for _, in := range stored {
		if _, err := crk.CopyStore(ctx, srcSvc[in.ID], dstSvc[in.ID]); err != nil {
			return fmt.Errorf("copying instance %s into %s: %w", in.ID, dest.redacted(), err)
		}
	}

	// Verify: the same listing from the database, and the same instances and API keys.
	for _, l := range before {
		c, err := listInstance(ctx, dstSvc[l.ID], true)
		if err != nil {
			return err
		}
		if err := l.diff(c); err != nil {
			return err
		}
	}
	copied, err := kpapi.OpenTenantsPostgres(ctx, db, func(string) (*crk.Service, error) {
		return nil, errors.New("not opened by kms migrate")
	})
	if err != nil {
		return err
	}
	defer copied.Close()
	if err := sameTenants(src, copied, srcKeys); err != nil {
		return err
	}
	return a.printMigration(dir, dest, before, len(srcKeys))
}

// sameTenants checks that the database's tenants hold the state directory's instances and
// API keys (srcKeys).
func sameTenants(src, copied *kpapi.Tenants, srcKeys []kpapi.APIKeyInfo) error {
	a, err := src.ListInstances()
	if err != nil {
		return err
	}
	b, err := copied.ListInstances()
	if err != nil {
		return err
	}
	ids := func(in []kpapi.InstanceInfo) []string {
		var out []string
		for _, i := range in {
			out = append(out, fmt.Sprintf("%s %s default=%t", i.ID, i.Name, i.Default))
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(ids(a), ids(b)) {
		return fmt.Errorf("%w: instances %q, copied %q", errMigrateMismatch, ids(a), ids(b))
	}
	dk, err := copied.ListAPIKeys()
	if err != nil {
		return err
	}
	keyIDs := func(in []kpapi.APIKeyInfo) []string {
		var out []string
		for _, k := range in {
			out = append(out, k.ID+" "+k.Instance)
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(keyIDs(srcKeys), keyIDs(dk)) {
		return fmt.Errorf("%w: API keys %q, copied %q", errMigrateMismatch, keyIDs(srcKeys), keyIDs(dk))
	}
	return nil
}

// printMigration prints the verified listing of every instance copied.
func (a *app) printMigration(dir string, dest kmsStore, ls []instanceListing, apiKeys int) error {
	if a.asJSON {
		return a.emit(map[string]any{"from": "bolt:" + absPath(dir), "to": dest.redacted(), "instances": ls, "apiKeys": apiKeys, "verified": true})
	}
	fmt.Fprintf(a.stdout, "copied bolt:%s into %s, verified:\n", absPath(dir), dest.redacted())
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tNAME\tKEYS\tREGISTRATIONS\tEVENTS\tFEED HEAD\tNOTE")
	for _, l := range ls {
		var notes []string
		if l.Default {
			notes = append(notes, "default")
		}
		if l.Rekeyed {
			notes = append(notes, "re-encrypted under crk.db.masterkey")
		}
		note := strings.Join(notes, ", ")
		head := l.FeedHead
		if head == "" {
			head = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\t%s\n", l.ID, shown(l.Name), l.KeyCount, l.RegCount, l.Events, head, note)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%d API keys copied; kms serve --store with this database serves them (copy %s to every replica)\n", apiKeys, filepath.Join(absPath(dir), masterKeyFileName))
	return nil
}

// migrateHeld turns a lock timeout on a source store into the advice to stop its holder.
func migrateHeld(err error, store string) error {
	if !errors.Is(err, bolt.ErrTimeout) {
		return err
	}
	return withHint(fmt.Errorf("the key store %s is held by another crkvol process: %w", store, err),
		"stop kms serve (and any volume attach using the embedded key service) first, then run kms migrate again")
}

// readMasterKeyFile reads a base64 master key file.
func readMasterKeyFile(file string) ([]byte, error) {
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("master key file %s: %w (give the key in %s)", file, err, masterKeyEnv)
	}
	if err != nil {
		return nil, err
	}
	k, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(raw)))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("master key file %s does not hold 32 bytes of base64: %w", file, crk.ErrMasterKey)
	}
	return k, nil
}
