package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/crk/console"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgdb"
)

func (a *app) kmsCommand() *cobra.Command {
	k := group("kms", "Serve the Key Protect API v2, and manage its instances and API keys")

	var listen, cert, keyFile, static, addrFile string
	var insecure, force, noUI, secureCookies bool
	var sessionLifetime time.Duration
	serve := &cobra.Command{Use: "serve", Short: "Serve the Key Protect API v2 on HTTP(S)", Args: args(cobra.NoArgs),
		Long: `Serve the Key Protect API v2 on HTTP(S) for the instances of the state directory, and each
instance's lifecycle feed at GET /api/crkvol/v1/lifecycle (see crkvol key feed).

Due rotation policies and expiries run on the server clock (--now), at start and then every
second; each rotation and expiry is logged on stderr. SIGINT or SIGTERM shuts the server down
after the requests in flight; the feed's long polls are answered at once.

kms serve holds the state directory's key store while it runs, so it refuses to start while a
volume attach process serves a volume with the state directory's embedded key service (attached
without --kms-url): that process follows its key by reading the store and could no longer see
a disable. Detach such volumes first and attach them again with --kms-url.

With --store postgres://… (env CRKVOL_STORE) the instances, keys, API keys and tokens are kept
in a PostgreSQL database instead, and any number of kms serve replicas, on any machines, serve
the same service: put an HTTP load balancer in front of them. Every replica needs the same
master key: CRKVOL_MASTER_KEY, or the master key file crk.db.masterkey of its state directory
(--state), which the first replica on an empty database makes; copy it to the others. The
scheduled work (rotation policies, expiries, purges, token clean-up) runs on one replica at a
time, the holder of the database's scheduler lease; another takes over within about 10 s of
its end (the lease lasts 8 s from its last renewal; the others try to take it every 2 s). The server keeps running while the database is unreachable (its requests fail) and
serves again once it is back. Move a state directory's store into a database with kms migrate.

The web console is served at /ui/ on the same listener (--no-ui turns it off): sign in with an
API key (crkvol kms apikey create) to browse and manage the keys of its instances, their
versions and associated resources, the audit events and the fleet. A console session lasts
--session-lifetime (1m to 168h) from sign-in, or until sign-out. With --store postgres://… it
lives in the database, so every replica accepts it; with a state directory sessions are kept in
memory and end when the server restarts. Behind a proxy that terminates TLS, give
--secure-cookies so that the console's cookies are Secure (with the __Host- prefix) and pages
carry Strict-Transport-Security; X-Forwarded-* headers are never trusted.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (cert == "") != (keyFile == "") {
				return usagef("give both --tls-cert and --tls-key, or neither")
			}
			if err := checkListenSyntax(listen); err != nil {
				return err
			}
			if sessionLifetime < minSessionLifetime || sessionLifetime > maxSessionLifetime {
				return usagef("--session-lifetime must be from 1m to 168h, got %s", sessionLifetime)
			}
			if addrFile != "" && !force {
				if _, err := os.Lstat(addrFile); err == nil {
					return withHint(existsError("addr-file", addrFile), "a server that did not shut down cleanly leaves it; give --force to replace it")
				}
			}
			store, err := a.kmsStore()
			if err != nil {
				return err
			}
			dir := store.dir
			if store.url == "" {
				if err := refuseServeWhileAttached(dir); err != nil {
					return err
				}
				// Another kms serve on the state directory holds its key store: refuse
				// before listening, naming it, rather than serve requests the store would
				// fail.
				if err := refuseServeWhileServed(dir); err != nil {
					return err
				}
			}
			loopback := loopbackAddress(listen)
			if err := checkListen(listen, loopback, cert != "", insecure, static != ""); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			defer ln.Close()
			// A name such as localhost is taken as loopback before listening; check what was
			// actually bound too.
			if tcp, ok := ln.Addr().(*net.TCPAddr); ok && loopback && !tcp.IP.IsLoopback() {
				if err := checkListen(listen, false, cert != "", insecure, static != ""); err != nil {
					return err
				}
			}
			if !loopback && cert == "" {
				fmt.Fprintf(a.stderr, "crkvol: kms serve: warning: serving plain HTTP on non-loopback address %s (--insecure): tokens, API keys and key material cross the network unencrypted\n", listen)
			}
			log := slog.New(slog.NewTextHandler(a.stderr, nil))
			tenants, err := a.openTenants(cmd.Context(), store, log)
			if err != nil {
				return err
			}
			defer tenants.Close()
			db := tenants.Database()
			// Open the default instance now: a replica without the database's master key, or
			// a state directory whose key store another process holds (or that cannot be
			// read), fails here, not at its first request.
			def, _, err := tenants.DefaultService()
			if err != nil {
				if store.url == "" {
					return storeHeld(err, filepath.Join(dir, "crk.db"), dir)
				}
				return masterKeyHint(err, masterKeyFileOf(store, a))
			}
			if static != "" {
				tenants.SetStaticToken(static)
			}
			tenants.SetSessionLifetime(sessionLifetime)
			api := kpapi.NewServer(tenants, kpapi.WithLogger(log))
			handler, err := serveHandler(tenants, api, !noUI, console.Options{Logger: log, SecureCookies: secureCookies})
			if err != nil {
				return err
			}
			srv := &http.Server{
				Handler:           handler,
				ReadHeaderTimeout: 10 * time.Second,
				ReadTimeout:       30 * time.Second,
				WriteTimeout:      60 * time.Second,
				IdleTimeout:       120 * time.Second,
			}
			// Shutdown waits for the requests in flight: answer the lifecycle feed's long
			// polls at once rather than at the end of their waits.
			srv.RegisterOnShutdown(api.StopWaiting)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			scheme := "http"
			if cert != "" {
				scheme = "https"
			}
			addr := scheme + "://" + ln.Addr().String()
			if store.url != "" {
				fmt.Fprintf(a.stderr, "crkvol: serving the Key Protect API v2 at %s (default instance %s, store %s)\n", addr, def, store.redacted())
			} else {
				fmt.Fprintf(a.stderr, "crkvol: serving the Key Protect API v2 at %s (default instance %s)\n", addr, def)
				// While serving, say who holds the stores to the commands that find them
				// locked (the default store is open already: opening the tenants opened it).
				removeRecord, err := writeServeRecord(dir, addr)
				if err != nil {
					return err
				}
				defer removeRecord()
			}
			if !noUI {
				fmt.Fprintf(a.stderr, "crkvol: web console at %s%s\n", addr, console.Prefix)
			}
			if addrFile != "" {
				removeAddr, err := writeAddrFile(addrFile, []byte(addr+"\n"), force)
				if err != nil {
					return err
				}
				// Removed at a clean shutdown, so that the next kms serve can write it.
				defer removeAddr()
			}
			if a.asJSON {
				// One document once listening; the shutdown is reported on stderr only.
				j := map[string]any{"url": addr, "defaultInstance": def, "store": store.redacted()}
				if !noUI {
					j["consoleUrl"] = addr + console.Prefix
				}
				if addrFile != "" {
					j["addrFile"] = absPath(addrFile)
				}
				if err := a.emit(j); err != nil {
					return err
				}
			}
			// Rotation policies and expiries, on the server clock: run what is due now and
			// then every second (one read transaction per instance when nothing is due),
			// dropping expired bearer tokens on the way. The loop and its token clean-ups are
			// joined before the stores close.
			dueDone := make(chan struct{})
			sweeper := &tokenSweeper{tenants: tenants}
			defer func() { stop(); <-dueDone; sweeper.wg.Wait() }()
			go func() {
				defer close(dueDone)
				if db == nil {
					a.runDueLoop(ctx, tenants, sweeper, log, time.Second)
					return
				}
				// Replicas on one database: the scheduled work runs on the one holding
				// the scheduler lease, and stops at once when it is lost.
				db.Lead(ctx, schedulerLease, schedulerHolder(ln.Addr().String()), schedulerTTL, func(ctx context.Context) {
					log.Info("scheduler: this replica runs the scheduled work")
					a.runDueLoop(ctx, tenants, sweeper, log, time.Second)
					log.Info("scheduler: this replica stopped running the scheduled work")
				})
			}()
			errc := make(chan error, 1)
			go func() {
				if cert != "" {
					errc <- srv.ServeTLS(ln, cert, keyFile)
				} else {
					errc <- srv.Serve(ln)
				}
			}()
			select {
			case err := <-errc:
				return err
			case <-ctx.Done():
			}
			shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := srv.Shutdown(shutdown); err != nil {
				return fmt.Errorf("shutting down: %w", err)
			}
			if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			fmt.Fprintln(a.stderr, "crkvol: kms serve: shut down after finishing in-flight requests")
			return nil
		}}
	serve.Flags().StringVar(&listen, "listen", "127.0.0.1:8410", "address to listen on")
	serve.Flags().StringVar(&cert, "tls-cert", "", "TLS certificate file")
	serve.Flags().StringVar(&keyFile, "tls-key", "", "TLS private key file")
	serve.Flags().StringVar(&static, "static-token", "", "also accept this bearer token for every instance (tests only; loopback addresses only)")
	serve.Flags().BoolVar(&insecure, "insecure", false, "allow plain HTTP on a non-loopback address (tokens and key material cross the network unencrypted)")
	serve.Flags().StringVar(&addrFile, "addr-file", "", "write the serving URL to this new file once listening (removed at shutdown)")
	serve.Flags().BoolVar(&noUI, "no-ui", false, "do not serve the web console at /ui/")
	serve.Flags().DurationVar(&sessionLifetime, "session-lifetime", kpapi.SessionLifetime, "how long a web console session lasts from sign-in (1m to 168h)")
	serve.Flags().BoolVar(&secureCookies, "secure-cookies", false, "the console is behind a TLS-terminating proxy: Secure __Host- cookies and HSTS on plain HTTP requests")
	serve.Flags().BoolVar(&force, "force", false, "replace an existing --addr-file (left by a server that did not shut down cleanly)")
	serve.Flags().StringVar(&a.store, "store", "", storeFlagUsage)

	instance := group("instance", "Manage service instances")
	instance.AddCommand(&cobra.Command{Use: "create NAME", Short: "Create an instance and print its id", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			tenants, closeTenants, err := a.tenants(cmd.Context())
			if err != nil {
				return err
			}
			defer closeTenants()
			id, err := tenants.CreateInstance(args[0])
			if err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"id": id, "name": args[0]})
			}
			fmt.Fprintln(a.stdout, id)
			return nil
		}})
	instance.AddCommand(&cobra.Command{Use: "list", Short: "List the instances: ids, names and creation times, the default first", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, err := a.listInstances(cmd.Context())
			if err != nil {
				return err
			}
			type row struct {
				ID      string `json:"id"`
				Name    string `json:"name"`
				Created string `json:"created,omitempty"`
				Default bool   `json:"default"`
			}
			rows := []row{}
			for _, in := range all {
				rows = append(rows, row{in.ID, in.Name, rfc3339(in.Created), in.Default})
			}
			if a.asJSON {
				return a.emit(rows)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tCREATED\tDEFAULT")
			for _, r := range rows {
				created, def := r.Created, ""
				if created == "" {
					created = "-"
				}
				if r.Default {
					def = "yes"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.ID, shown(r.Name), created, def)
			}
			return w.Flush()
		}})
	var insts []string
	apikey := group("apikey", "Manage API keys")
	create := &cobra.Command{Use: "create", Short: "Create an API key for one or more instances and print it (once)", Args: args(cobra.NoArgs),
		Long: `Create an API key and print it; only its hash is kept, so it cannot be shown again.

The key's bearer tokens, and the console sessions signed in with it, are accepted for
each instance given with --instance (repeat the flag for a key that sees several
instances), and for no other; without --instance, for the default instance:

  crkvol kms apikey create --instance ID1 --instance ID2`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tenants, closeTenants, err := a.tenants(cmd.Context())
			if err != nil {
				return err
			}
			defer closeTenants()
			instances := slices.Clone(insts)
			if len(instances) == 0 {
				def, _ := tenants.Default()
				instances = []string{def}
			}
			key, err := tenants.CreateAPIKey(instances...)
			if err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]any{"apikey": key, "id": kpapi.APIKeyID(key), "instance": instances[0], "instances": instances})
			}
			fmt.Fprintln(a.stdout, key)
			return nil
		}}
	create.Flags().StringArrayVar(&insts, "instance", nil, "instance id the key sees; repeat for several (default: the default instance)")
	var listInst string
	list := &cobra.Command{Use: "list", Short: "List API keys by id, instances and creation time (never the keys)", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			tenants, closeTenants, err := a.tenants(cmd.Context())
			if err != nil {
				return err
			}
			defer closeTenants()
			if listInst != "" {
				// A mistyped id must not look like an instance without keys.
				insts, err := tenants.ListInstances()
				if err != nil {
					return err
				}
				if !slices.ContainsFunc(insts, func(in kpapi.InstanceInfo) bool { return strings.EqualFold(in.ID, listInst) }) {
					return fmt.Errorf("%w %q (see kms instance list)", kpapi.ErrUnknownInstance, listInst)
				}
			}
			all, err := tenants.ListAPIKeys()
			if err != nil {
				return err
			}
			type row struct {
				ID        string   `json:"id"`
				Instance  string   `json:"instance"` // the first of Instances
				Instances []string `json:"instances"`
				Created   jsonTime `json:"created,omitzero"`
			}
			rows := []row{}
			for _, k := range all {
				sees := listInst == "" || slices.ContainsFunc(k.Instances, func(in string) bool { return strings.EqualFold(in, listInst) })
				if sees {
					rows = append(rows, row{k.ID, k.Instance, k.Instances, jsonTime{k.Created}})
				}
			}
			if a.asJSON {
				return a.emit(rows)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tINSTANCES\tCREATED")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\n", r.ID, strings.Join(r.Instances, ","), rfc3339(r.Created.Time))
			}
			return w.Flush()
		}}
	list.Flags().StringVar(&listInst, "instance", "", "list only the keys that see this instance (an instance that does not exist is an error)")
	revoke := &cobra.Command{Use: "revoke ID", Short: "Revoke an API key by its id (see list); its tokens stop working at once", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			tenants, closeTenants, err := a.tenants(cmd.Context())
			if err != nil {
				return err
			}
			defer closeTenants()
			if err := tenants.RevokeAPIKey(args[0]); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"revoked": args[0]})
			}
			fmt.Fprintf(a.stdout, "revoked API key %s\n", args[0])
			return nil
		}}
	apikey.AddCommand(create, list, revoke)
	a.addStoreFlag(instance)
	a.addStoreFlag(apikey)
	k.AddCommand(serve, instance, apikey, a.kmsMigrateCommand())
	return k
}

// loopbackAddress reports whether the listen address addr (host:port) names only loopback
// interfaces: a loopback IP address, or localhost. An empty host (every interface), any other
// IP address and any other host name count as non-loopback; names are not resolved.
func loopbackAddress(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// The bounds of kms serve --session-lifetime.
const (
	minSessionLifetime = time.Minute
	maxSessionLifetime = 168 * time.Hour
)

// serveHandler is what kms serve answers with: the API, and with ui the web console at
// console.Prefix on the same listener.
func serveHandler(tenants *kpapi.Tenants, api http.Handler, ui bool, opts console.Options) (http.Handler, error) {
	if !ui {
		return api, nil
	}
	c, err := console.New(tenants, opts)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, c)
	mux.Handle("/", api)
	return mux, nil
}

// checkListen refuses what kms serve must not do on a network: plain HTTP on a non-loopback
// address without --insecure (bearer tokens, API keys and unwrapped key material would cross
// the network in clear text), and a static token on a non-loopback address at all (it never
// expires, cannot be revoked and is valid for every instance).
func checkListen(addr string, loopback, tls, insecure, static bool) error {
	switch {
	case loopback:
		return nil
	case static:
		return fmt.Errorf("--static-token is only allowed on a loopback address, not %s", addr)
	case !tls && !insecure:
		return withHint(fmt.Errorf("refusing to serve plain HTTP on non-loopback address %s", addr), "use --tls-cert and --tls-key, or --insecure to serve plain HTTP anyway")
	}
	return nil
}

// The scheduler lease: among kms serve replicas on one database, the holder runs the
// scheduled work (runDueLoop). A replica that dies is replaced within schedulerTTL plus a
// poll (a quarter of it): about 10 s, as kms serve --help and the README say.
const (
	schedulerLease = "scheduler"
	schedulerTTL   = 8 * time.Second
)

// schedulerHolder names this replica in the scheduler lease: host name, process id, 48
// random bits and listen address. The random part keeps apart replicas that share the rest
// (containers: pid 1 and the same port, a host name reused by a replacement), which would
// otherwise both take themselves for the lease's holder.
func schedulerHolder(listen string) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	var nonce [6]byte
	_, _ = rand.Read(nonce[:]) // crypto/rand.Read never returns an error (Go 1.24)
	return fmt.Sprintf("%s/%d/%x/%s", host, os.Getpid(), nonce, listen)
}

// tokenSweeper drops expired bearer tokens and console sessions for runDueLoop, one clean-up
// at a time, in the background: Tenants.ExpireTokens takes no context and may wait for an
// unreachable database for the database's retry time (pgdb.DefaultRetryFor, 10 s), and the
// loop must stop at once when its context ends (a lost scheduler lease). A clean-up still
// running then is harmless (any replica may drop expired tokens and sessions); wg joins it
// before the stores close.
type tokenSweeper struct {
	tenants *kpapi.Tenants
	wg      sync.WaitGroup
	busy    atomic.Bool
}

// sweep starts a clean-up unless one is running, logging its failure with d.
func (s *tokenSweeper) sweep(d *dueLog) {
	if !s.busy.CompareAndSwap(false, true) {
		return
	}
	s.wg.Go(func() {
		defer s.busy.Store(false)
		d.tokens(s.tenants.ExpireTokens())
	})
}

// runDueLoop runs the due policy rotations and expiries of every instance of tenants at once
// and then every period until ctx ends, logging them with log (see dueLog), and has sweeper
// drop expired tokens.
func (a *app) runDueLoop(ctx context.Context, tenants *kpapi.Tenants, sweeper *tokenSweeper, log *slog.Logger, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	d := &dueLog{log: log}
	for {
		sweeper.sweep(d)
		d.record(tenants.RunDue(ctx))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dueLog logs the outcome of each run of the due work: every rotation and expiry, and each
// failure once, until its message changes or it stops failing (the loop runs every second).
type dueLog struct {
	log *slog.Logger
	// tokenErr is the message of the token clean-up's failure last logged, "" once it works;
	// one clean-up at a time writes it (tokenSweeper).
	tokenErr string
	// failing maps what failed, an instance and key or the zero dueFailure for the run as a
	// whole, to the message last logged.
	failing map[dueFailure]string
}

type dueFailure struct{ instance, key string }

// tokens logs a failure of the expired tokens' clean-up once, until its message changes or
// it stops failing.
func (d *dueLog) tokens(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg != "" && msg != d.tokenErr {
		d.log.Error("dropping expired tokens and sessions failed", "err", msg)
	}
	d.tokenErr = msg
}

// record logs one run of Tenants.RunDue.
func (d *dueLog) record(res map[string]crk.RunDueResult, err error) {
	now := map[dueFailure]string{}
	if err != nil {
		now[dueFailure{}] = err.Error()
	}
	for _, inst := range slices.Sorted(maps.Keys(res)) {
		r := res[inst]
		for _, id := range r.Rotated {
			d.log.Info("rotation policy rotated a key", "instance", inst, "key", id)
		}
		for _, id := range r.Expired {
			d.log.Info("key expired", "instance", inst, "key", id)
		}
		for _, id := range r.Purged {
			d.log.Info("deleted key purged", "instance", inst, "key", id)
		}
		for id, err := range r.Failed {
			now[dueFailure{inst, id}] = err.Error()
		}
	}
	for f, msg := range now {
		switch {
		case d.failing[f] == msg:
		case f.key == "":
			d.log.Error("running due rotations failed", "err", msg)
		default:
			d.log.Error("due rotation failed", "instance", f.instance, "key", f.key, "err", msg)
		}
	}
	d.failing = now
}

// tenants opens the instances of the store of --store (kmsStore): the state directory's,
// or a PostgreSQL database's. close closes them (and the database's connections).
func (a *app) tenants(ctx context.Context) (t *kpapi.Tenants, close func() error, err error) {
	store, err := a.kmsStore()
	if err != nil {
		return nil, nil, err
	}
	if t, err = a.openTenants(ctx, store, nil); err != nil {
		return nil, nil, err
	}
	return t, t.Close, nil
}

// listInstances lists the instances of the key store, reading only: a database that nothing
// opened yet lists none, and stays so (opening its tenants would make a default instance,
// and kms migrate copies only into a database without one).
func (a *app) listInstances(ctx context.Context) ([]kpapi.InstanceInfo, error) {
	store, err := a.kmsStore()
	if err != nil {
		return nil, err
	}
	if store.url == "" {
		t, closeTenants, err := a.tenants(ctx)
		if err != nil {
			return nil, err
		}
		defer closeTenants()
		return t.ListInstances()
	}
	db, err := pgdb.Open(ctx, store.url, pgdb.Options{ApplicationName: "crkvol tenants"})
	if err != nil {
		return nil, storeUnreachable(err, store)
	}
	defer db.Close()
	return kpapi.ListInstancesPostgres(ctx, db)
}
