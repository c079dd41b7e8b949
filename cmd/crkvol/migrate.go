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
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	bolt "go.etcd.io/bbolt"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgdb"
)

// errMigrated is a destination that already holds data of an instance being copied, other
// than the source's: kms migrate never merges two stores.
var errMigrated = errors.New("the destination already holds this instance's data")

// errMigrateMismatch is a destination whose listing after the copy differs from the
// source's.
var errMigrateMismatch = errors.New("the copy differs from the source")

// hintUsedDatabase is the advice for a database that holds a service of its own.
const hintUsedDatabase = "migrate into an empty database (createdb), or drop crkvol's tables from this one (crkvol_*, crk_*, kp_*) if nothing in it is needed"

func (a *app) kmsMigrateCommand() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{Use: "migrate", Short: "Copy a state directory's key service into a PostgreSQL database, verified", Args: args(cobra.NoArgs),
		Long: `Copy the key service of a state directory (--from bolt:DIR, or DIR) into a PostgreSQL database
(--to postgres://…), for kms serve --store: every instance with its keys, versions,
registrations, audit events and lifecycle feed (event sequence numbers and feed cursors kept,
so feed followers carry on), and the instances' names and API keys (issued tokens are not
copied: clients exchange their API keys again). The state directory is only read: its files
keep every byte. One master key serves every instance of a database, the state directory's
crk.db.masterkey (or CRKVOL_MASTER_KEY): an instance whose own key file differs is
re-encrypted under it in the copy. Copy that file to every kms serve replica, or give the
key in CRKVOL_MASTER_KEY.

Stop kms serve (and every other crkvol process using the state directory) first: kms migrate
refuses while one holds the stores. Every instance is listed in both stores (keys with their
states and versions, registrations, the feed head, the number of audit events; reading
records no audit event) and any difference is an error; the summary printed is that listing.
An instance the database holds already, identical, is reported "already copied" and left as
it is, so an interrupted run is completed by running kms migrate again, and a run with
everything copied verifies the copy, changes nothing and succeeds. A database holding
anything else (an instance that differs from the state directory's, an instance, API key or
default instance of its own) is refused before anything is written: migrate into an empty
database.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.migrate(cmd.Context(), from, to)
		}}
	cmd.Flags().StringVar(&from, "from", "", "the state directory to copy: bolt:DIR, bolt:DIR/crk.db or DIR")
	cmd.Flags().StringVar(&to, "to", "", "the PostgreSQL database to copy into: postgres://…")
	requireFlags(cmd, "from", "to")
	return cmd
}

// instanceListing is what kms migrate prints of an instance, from its summary.
type instanceListing struct {
	ID            string           `json:"id"`
	Name          string           `json:"name"`
	Default       bool             `json:"default"`
	Summary       crk.StoreSummary `json:"-"`
	KeyCount      int              `json:"keys"`
	RegCount      int              `json:"registrations"`
	Events        int              `json:"events"`
	FeedHead      string           `json:"feedHead"`
	Rekeyed       bool             `json:"rekeyed,omitempty"`
	AlreadyCopied bool             `json:"alreadyCopied,omitempty"`
}

// summarize reads the summary of an instance's store (recording nothing in it).
func summarize(ctx context.Context, svc *crk.Service, where string) (crk.StoreSummary, error) {
	sum, err := svc.Summary(ctx)
	if err != nil {
		return sum, fmt.Errorf("listing instance %s in %s: %w", svc.Instance(), where, err)
	}
	return sum, nil
}

// diffSummaries names the first difference between the source's summary src and the
// database's dst, or returns "" when they are the same.
func diffSummaries(src, dst crk.StoreSummary) string {
	keys := func(ks []crk.KeySummary) []string {
		out := make([]string, len(ks))
		for i, k := range ks {
			out[i] = fmt.Sprintf("%s (%s) state=%s deleted=%t purged=%t versions=%s", k.ID, k.Name, k.State, k.Deleted, k.Purged, strings.Join(k.Versions, ","))
		}
		return out
	}
	regs := func(rs []crk.RegistrationSummary) []string {
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = fmt.Sprintf("%s %s version=%s", r.KeyID, r.CRN, r.VersionID)
		}
		return out
	}
	if d := diffLists("keys", keys(src.Keys), keys(dst.Keys)); d != "" {
		return d
	}
	if d := diffLists("registrations", regs(src.Registrations), regs(dst.Registrations)); d != "" {
		return d
	}
	for _, c := range []struct {
		what     string
		src, dst string
	}{
		{"audit events", strconv.Itoa(src.Events), strconv.Itoa(dst.Events)},
		{"last audit event", strconv.FormatUint(src.LastEvent, 10), strconv.FormatUint(dst.LastEvent, 10)},
		{"lifecycle feed head", src.FeedHead, dst.FeedHead},
		{"lifecycle feed pruned up to", strconv.FormatUint(src.FeedPruned, 10), strconv.FormatUint(dst.FeedPruned, 10)},
		{"host acknowledgements", strconv.Itoa(src.HostAcks), strconv.Itoa(dst.HostAcks)},
	} {
		if c.src != c.dst {
			return fmt.Sprintf("%s: %s in the state directory, %s in the database", c.what, c.src, c.dst)
		}
	}
	return ""
}

// diffLists names the first difference between two listings.
func diffLists(what string, src, dst []string) string {
	if len(src) != len(dst) {
		return fmt.Sprintf("%s: %d in the state directory, %d in the database", what, len(src), len(dst))
	}
	for i := range src {
		if src[i] != dst[i] {
			return fmt.Sprintf("%s: %q in the state directory, %q in the database", what, src[i], dst[i])
		}
	}
	return ""
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
	// The source is opened read-only: no transaction of its own, no event, not a byte
	// changed in the state directory.
	srcOpts := opts
	srcOpts.ReadOnly = true
	src, err := kpapi.OpenTenants(dir, srcOpts)
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

	// One master key serves every instance of a database: an instance whose key file
	// differs from the state directory's is re-encrypted under it in the copy (CopyStore),
	// the source left as it is.
	dstOpts := opts
	if dstOpts.MasterKey == nil {
		dstOpts.MasterKeyFile = filepath.Join(dir, masterKeyFileName)
	}
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
			rekeyed[in.ID] = !bytes.Equal(k, defKey)
		}
	}

	var before []instanceListing
	for _, in := range stored {
		sum, err := summarize(ctx, srcSvc[in.ID], "bolt:"+absPath(dir))
		if err != nil {
			return err
		}
		before = append(before, instanceListing{ID: in.ID, Name: in.Name, Default: in.Default, Summary: sum, Rekeyed: rekeyed[in.ID],
			KeyCount: len(sum.Keys), RegCount: len(sum.Registrations), Events: sum.Events, FeedHead: sum.FeedHead})
	}
	srcKeys, err := src.ListAPIKeys()
	if err != nil {
		return err
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

	// Every check before anything is written: the database's tenants hold nothing but
	// (part of) the state directory's, and its instances nothing but identical copies.
	tenantsCopied, err := kpapi.CheckCopyTenants(ctx, src, db)
	if errors.Is(err, kpapi.ErrDefaultInstanceMismatch) || errors.Is(err, kpapi.ErrTenantsDiffer) {
		return withHint(fmt.Errorf("copying into %s: %w; nothing was changed", dest.redacted(), err), hintUsedDatabase)
	}
	if err != nil {
		return fmt.Errorf("reading the instances and API keys of %s: %w", dest.redacted(), err)
	}
	existing, err := services.Instances(ctx)
	if err != nil {
		return fmt.Errorf("reading the instances of %s: %w", dest.redacted(), err)
	}
	for _, id := range existing {
		if _, ok := srcSvc[id]; !ok {
			return withHint(fmt.Errorf("instance %s in %s: the database holds a key store the state directory does not have; nothing was changed", id, dest.redacted()), hintUsedDatabase)
		}
	}
	for i := range before {
		l := &before[i]
		if !slices.Contains(existing, l.ID) {
			continue
		}
		svc, err := a.openCopy(services, dstOpts, l.ID, dest)
		if err != nil {
			return err
		}
		dstSvc[l.ID] = svc
		sum, err := summarize(ctx, svc, dest.redacted())
		if err != nil {
			return err
		}
		if sum.Empty() {
			// Opened by a run that failed before its copy committed (the copy is one
			// transaction): nothing of it is there yet.
			continue
		}
		if d := diffSummaries(l.Summary, sum); d != "" {
			return withHint(fmt.Errorf("instance %s in %s: %w, and it differs from the state directory's: %s; nothing was changed", l.ID, dest.redacted(), errMigrated, d),
				"was the state directory changed after it was migrated? kms serve --store with this database serves the copy; to copy again, use an empty database")
		}
		l.AlreadyCopied = true
	}

	// The tenants first: kpapi.CopyTenants must run before anything opens the database's
	// tenants (which would make a default instance of its own). It adds only what is
	// missing.
	if !tenantsCopied {
		if err := kpapi.CopyTenants(ctx, src, db); err != nil {
			return fmt.Errorf("copying instances and API keys into %s: %w", dest.redacted(), err)
		}
	}
	for _, l := range before {
		if l.AlreadyCopied {
			continue
		}
		svc, ok := dstSvc[l.ID] // opened above when a failed run left the instance empty
		if !ok {
			var err error
			if svc, err = a.openCopy(services, dstOpts, l.ID, dest); err != nil {
				return err
			}
			dstSvc[l.ID] = svc
		}
		if _, err := crk.CopyStore(ctx, srcSvc[l.ID], svc); err != nil {
			return fmt.Errorf("copying instance %s into %s: %w", l.ID, dest.redacted(), err)
		}
	}

	// Verify: the same summary from the database, and the same instances and API keys.
	for _, l := range before {
		sum, err := summarize(ctx, dstSvc[l.ID], dest.redacted())
		if err != nil {
			return err
		}
		if d := diffSummaries(l.Summary, sum); d != "" {
			return fmt.Errorf("%w: instance %s: %s", errMigrateMismatch, l.ID, d)
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
	return a.printMigration(dir, dest, before, len(srcKeys), tenantsCopied)
}

// openCopy opens the service of instance id in the database.
func (a *app) openCopy(services *crk.Database, opts crk.Options, id string, dest kmsStore) (*crk.Service, error) {
	opts.Instance = id
	// The copy keeps every event the state directory kept: opening it applies no
	// retention (the replicas apply theirs), so that a verifying run writes nothing.
	opts.EventRetention = crk.EventRetention{MaxCount: -1}
	opts.FeedRetention = crk.FeedRetention{MaxAge: -1, MaxCount: -1}
	svc, err := services.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("opening instance %s in %s: %w", id, dest.redacted(), masterKeyHint(err, opts.MasterKeyFile))
	}
	return svc, nil
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
			out = append(out, k.ID+" "+strings.Join(k.Instances, ","))
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
// apiKeysCopied tells whether the API keys were copied before (by an earlier run).
func (a *app) printMigration(dir string, dest kmsStore, ls []instanceListing, apiKeys int, apiKeysCopied bool) error {
	if a.asJSON {
		return a.emit(map[string]any{"from": "bolt:" + absPath(dir), "to": dest.redacted(), "instances": ls, "apiKeys": apiKeys, "apiKeysAlreadyCopied": apiKeysCopied, "verified": true})
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
			notes = append(notes, "re-encrypted under crk.db.masterkey in the copy")
		}
		if l.AlreadyCopied {
			notes = append(notes, "already copied")
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
	copied := "copied"
	if apiKeysCopied {
		copied = "already copied"
	}
	fmt.Fprintf(a.stdout, "%d %s %s; kms serve --store with this database serves them (copy %s to every replica)\n", apiKeys, plural(apiKeys, "API key", "API keys"), copied, filepath.Join(absPath(dir), masterKeyFileName))
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
