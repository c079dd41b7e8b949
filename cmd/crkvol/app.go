package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"crkvol/crk"
	"crkvol/internal/fsutil"
	"crkvol/internal/pgdb"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// app carries one invocation's settings and, once opened, its services.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// cpus is how many CPUs the process may use, as it started (see passProcs).
	cpus int

	stateDir string
	asJSON   bool
	now      string
	kmsURL   string
	kmsInst  string
	// kmsCA and kmsInsecure are --kms-ca and --kms-insecure, read with their environment
	// variables by remoteTLS.
	kmsCA       string
	kmsInsecure bool
	local       bool        // force the embedded key service (the demo)
	config      configState // the config file (config.go)
	// readOnly marks a command that only reads (readOnlyCommand): it opens the store and the
	// registry read-only, and rotates, rewraps and writes nothing (see openReadOnly).
	readOnly bool
	// auditedRead marks the one read that opens the store read-write to record its audit
	// event, if it can: key show --reveal, which hands out key material.
	auditedRead bool
	// emptyStoreDir is the temporary directory of the empty store a command that only reads
	// opens when the state directory has none; close removes it.
	emptyStoreDir string
	// eventMaxAge and eventMaxCount are the audit log retention flags, parsed by
	// eventRetention.
	eventMaxAge, eventMaxCount string
	// store is --store of kms serve and the instance and API key commands (kmsStore).
	store string

	// background marks the actions of `crkvol agent`: open leaves due policy rotations to
	// the agent (agent.Options.RunDue) and no progress bars are drawn.
	background bool
	// warnedInsecure is set once the --kms-insecure warning was printed.
	warnedInsecure bool
	// registered caches registeredImages' read of the registry file when the command has no
	// registry open.
	registered *[]string
	// workers is --workers of key rotate and key sync: the volumes a rewrap pass takes at
	// once (volume.Options.Workers); 0 for the default.
	workers int

	svc     *crk.Service // the embedded key service, or nil with --kms-url
	remote  *kms.Remote  // the remote key service with --kms-url
	reg     *volume.Registry
	mgr     *volume.Manager
	reports []*volume.Report
}

// run executes one command line and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, cpus: usableCPUs()}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	// Long commands stop at a clean point on SIGINT or SIGTERM: their loops check ctx
	// between chunks, record their state and return an interrupted error.
	ctx, stop := interruptContext(context.Background())
	defer stop()
	cmd, err := root.ExecuteContextC(ctx)
	a.close()
	if err == nil {
		return 0
	}
	f := failureBody{Command: commandName(cmd), Message: errorText(err), ExitCode: 1, Hints: hintsOf(err)}
	if sig, ok := interruption(ctx); ok {
		var in interrupted
		if !errors.As(err, &in) {
			in = interrupted{f.Message}
			if msg, ok := rewrapInterrupted(a.reports); ok {
				in = interrupted{msg}
			}
		}
		f.Message, f.ExitCode, f.Signal, f.Hints = "interrupted: "+in.msg, sig.exitCode(), sig.name(), nil
		report(stderr, a.asJSON || wantsJSON(args), f)
		return f.ExitCode
	}
	switch {
	case errors.Is(err, kms.ErrCertificate):
		f.Hints = append(f.Hints, "to trust a private CA, give its certificate with --kms-ca FILE (env CRKVOL_KMS_CA)")
	case errors.Is(err, kms.ErrInsecureURL):
		f.Hints = append(f.Hints, "use an https URL (--kms-ca FILE to trust a private CA), or --kms-insecure to allow plain http")
	}
	var u usageError
	if errors.As(err, &u) {
		f.ExitCode, f.Usage = 2, true
		if cmd != nil {
			f.Hints = append(f.Hints, "see "+cmd.CommandPath()+" --help")
		}
	}
	report(stderr, a.asJSON || wantsJSON(args), f)
	return f.ExitCode
}

// args wraps a cobra argument check so that its errors are usage errors (exit status 2).
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// unknownCommand is the usage error for an unknown subcommand name, with cobra's
// suggestions of similar names.
func unknownCommand(cmd *cobra.Command, name string) error {
	err := usagef("unknown command %q", name)
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		return withHint(err, "did you mean "+strings.Join(s, " or ")+"?")
	}
	return err
}

// group returns a command that only holds subcommands: run alone it is a usage error.
func group(use, short string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			return usagef("missing subcommand")
		}}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "crkvol",
		Short: "Encrypted volume images protected by customer root keys",
		Long: `crkvol creates, attaches and rotates LUKS2 volume images whose passphrase is wrapped by a
customer root key (CRK) in an embedded Key Protect-style key service.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			return cmd.Help()
		},
	}
	root.PersistentFlags().StringVar(&a.stateDir, "state", "", "state directory: KMS store, master key file, volume registry (env CRKVOL_STATE)")
	root.PersistentFlags().BoolVar(&a.asJSON, "json", false, "machine-readable JSON output")
	root.PersistentFlags().StringVar(&a.now, "now", "", "service clock start, RFC 3339 (env CRKVOL_NOW); it advances in real time")
	root.PersistentFlags().StringVar(&a.kmsURL, "kms-url", "", "use a remote Key Protect-compatible service at this URL (env CRKVOL_KMS_URL; API key in CRKVOL_KMS_APIKEY or token in CRKVOL_KMS_TOKEN)")
	root.PersistentFlags().StringVar(&a.kmsInst, "kms-instance", "", "the remote service instance id (env CRKVOL_KMS_INSTANCE)")
	root.PersistentFlags().StringVar(&a.kmsCA, "kms-ca", "", "trust the CA certificates of this PEM file (instead of the system's) for the remote service (env CRKVOL_KMS_CA)")
	root.PersistentFlags().BoolVar(&a.kmsInsecure, "kms-insecure", false, "allow a plain http --kms-url to a host that is not loopback: the API key and wrapped keys cross the network in clear (env CRKVOL_KMS_INSECURE=1)")
	root.PersistentFlags().StringVar(&a.eventMaxAge, "event-max-age", "", "embedded key service: delete audit events older than this, such as 2160h or 90d (env CRKVOL_EVENT_MAX_AGE; default: any age)")
	root.PersistentFlags().StringVar(&a.eventMaxCount, "event-max-count", "", "embedded key service: keep at most this many audit events, -1 for no limit (env CRKVOL_EVENT_MAX_COUNT; default 1048576)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		if fs := (*flagSyntaxError)(nil); errors.As(err, &fs) {
			err = fs // its own message names the flag and the values wanted
		}
		return usageError{err}
	})
	root.AddCommand(a.keyCommand(), a.volumeCommand(), a.imageCommand(), a.eventsCommand(), a.demoCommand(), a.kmsCommand(), a.benchCommand(), a.simCommand(), a.agentCommand(), a.kpCommand())
	root.PersistentPreRun = func(cmd *cobra.Command, args []string) {
		a.readOnly, a.auditedRead = readOnlyCommand(cmd)
		absImageArg(cmd, args)
	}
	a.addVersion(root)
	root.AddCommand(a.manCommand())
	a.addConfig(root)     // after every command: it makes each read the config file
	a.addCompletion(root) // after every command: it completes their keys and images
	plainFlagErrors(root) // last: every flag of the tree exists
	// The completion generators keep the writer set when they are made.
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	strictHelpAndCompletion(root)
	return root
}

// absImageArg makes the IMG argument of cmd (one whose Use names IMG first) absolute, in
// place: cobra passes the same slice to the command's RunE, so every message and error about
// the image names it by its absolute path, whatever the working directory.
func absImageArg(cmd *cobra.Command, args []string) {
	fields := strings.Fields(cmd.Use)
	if len(fields) < 2 || fields[1] != "IMG" || len(args) == 0 || args[0] == "" {
		return
	}
	if abs, err := filepath.Abs(args[0]); err == nil {
		args[0] = abs
	}
}

// readOnlyCommands are the commands that only read the state directory: they open the store
// and the registry read-only (so they work on one that cannot be written), rotate and rewrap
// nothing, and leave the store, the registry and every image as they were. Commands that open
// a volume through the key service (volume read, volume passphrase) are not among them: the
// unwrap that hands out a passphrase is audited, and a key rotated since the volume was last
// wrapped has it rewrapped (lazily) as it opens.
var readOnlyCommands = map[string]bool{
	"key list": true, "key show": true, "key versions": true, "key registrations": true,
	"volume list": true, "volume status": true, "events": true,
	"image list": true, "image show": true, "image verify": true,
}

// readOnlyCommand reports whether cmd only reads (readOnlyCommands), and whether it is the
// read that is audited when it can be (key show --reveal: it hands out key material).
func readOnlyCommand(cmd *cobra.Command) (readOnly, audited bool) {
	if !readOnlyCommands[commandName(cmd)] {
		return false, false
	}
	reveal := cmd.Flags().Lookup("reveal")
	return true, reveal != nil && reveal.Changed
}

// unwritable reports whether err is a failure to open a file for writing: a read-only file
// system, or no write permission.
func unwritable(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)
}

// stateDirectory resolves --state, $CRKVOL_STATE, $XDG_DATA_HOME/crkvol, ~/.local/share/crkvol.
// A state directory that exists must be private (fsutil.CheckPrivate): it holds the master
// key, the key store, the registry, the agent's lock and cursor and the attachment records,
// and one that others can write is refused before any of them is read or written.
func (a *app) stateDirectory() (string, error) {
	dir, err := a.stateDirectoryPath()
	if err != nil {
		return "", err
	}
	if err := fsutil.CheckPrivate(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("state directory: %w", err)
	}
	return dir, nil
}

// stateDirectoryPath is where the state directory is (see stateDirectory), unchecked.
func (a *app) stateDirectoryPath() (string, error) {
	switch {
	case a.stateDir != "":
		return a.stateDir, nil
	case a.getenv("CRKVOL_STATE") != "":
		return a.getenv("CRKVOL_STATE"), nil
	case a.getenv("XDG_DATA_HOME") != "":
		return filepath.Join(a.getenv("XDG_DATA_HOME"), "crkvol"), nil
	}
	home := a.getenv("HOME")
	if home == "" {
		return "", errors.New("no state directory: set --state, CRKVOL_STATE or HOME")
	}
	return filepath.Join(home, ".local", "share", "crkvol"), nil
}

// privateSubdir returns the directory name of the state directory dir, making both (mode
// 0700) when they are missing, and checks both are private: the agent's lock and cursor,
// and the attachment records (whose process ids the CLI signals) live in one.
func privateSubdir(dir, name string) (string, error) {
	sub := filepath.Join(dir, name)
	if err := os.MkdirAll(sub, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	for _, d := range []string{dir, sub} {
		if err := fsutil.CheckPrivate(d); err != nil {
			return "", fmt.Errorf("state directory: %w", err)
		}
	}
	return sub, nil
}

// clock returns the service clock: --now / CRKVOL_NOW advancing in real time, or the wall
// clock.
func (a *app) clock() (crk.Clock, error) {
	now := a.now
	if now == "" {
		now = a.getenv("CRKVOL_NOW")
	}
	if now == "" {
		return crk.SystemClock{}, nil
	}
	t, err := time.Parse(time.RFC3339, now)
	if err != nil {
		return nil, usagef("--now %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z", now)
	}
	return &offsetClock{base: t.UTC(), start: time.Now()}, nil
}

// offsetClock starts at base and advances in real time.
type offsetClock struct {
	base, start time.Time
}

func (c *offsetClock) Now() time.Time { return c.base.Add(time.Since(c.start)) }

// open opens the key service, the registry and the volume manager. A command that changes the
// state then runs the policy rotations that came due on the service clock (with their
// rewraps); a command that only reads (a.readOnly) opens the store and the registry
// read-only, so that it leaves them, and every image, as they were: it rotates and rewraps
// nothing and only says which rotations are due (see openReadOnly).
func (a *app) open(ctx context.Context) error {
	if a.mgr != nil { // already open, embedded or remote
		return nil
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return err
	}
	// A command that only reads creates nothing, not even the state directory.
	if !a.readOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	// The state directory holds the master key, the key store and the registry: one that
	// others can write is refused before anything is read from it or written to it.
	if err := fsutil.CheckPrivate(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state directory: %w", err)
	}
	clock, err := a.clock()
	if err != nil {
		return err
	}
	if url := a.remoteURL(); url != "" {
		return a.openRemote(dir, url, clock)
	}
	a.warnStoreEnv()
	opts, err := a.crkOptions(clock)
	if err != nil {
		return err
	}
	if rec, held := serveHolds(filepath.Join(dir, "crk.db"), dir); held {
		return heldByServe(rec, filepath.Join(dir, "crk.db"), errStoreHeld)
	}
	if a.readOnly {
		return a.openReadOnly(ctx, dir, opts, clock)
	}
	svc, err := crk.Open(filepath.Join(dir, "crk.db"), opts)
	if err != nil {
		return storeHeld(err, filepath.Join(dir, "crk.db"), dir)
	}
	reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
	if err != nil {
		svc.Close()
		return registryHeld(err, filepath.Join(dir, "volumes.db"))
	}
	a.useLocal(svc, reg, clock)
	if a.background {
		return nil // the agent runs due rotations itself (agent.Options.RunDue)
	}
	restore := a.passProcs() // a due rotation rewraps the key's volumes
	res, err := svc.RunDue(ctx)
	restore()
	if err != nil {
		return fmt.Errorf("running due rotations: %w", err)
	}
	for _, id := range res.Rotated {
		fmt.Fprintf(a.stderr, "crkvol: rotation policy rotated key %s\n", id)
	}
	return nil
}

// warnStoreEnv says on stderr, once per command, that CRKVOL_STORE is not used when it names
// a PostgreSQL database and the command is about to open the embedded key service on the
// state directory's store (open is the one place that does): the variable selects the store
// of kms serve and the kms commands only. The URL, which may hold a password, is not shown.
func (a *app) warnStoreEnv() {
	if !pgdb.IsURL(a.getenv(storeEnv)) {
		return
	}
	fmt.Fprintln(a.stderr, "crkvol: warning: "+storeEnv+" applies to kms serve/instance/apikey/migrate; this command uses the state directory's store; use --kms-url to reach the replicas")
}

// openReadOnly opens the store and the registry of dir read-only for a command that only
// reads, and reports the policy rotations that are due instead of running them. Its reads are
// not audited: a store opened read-only cannot record them (kms serve audits the reads of its
// API). The one exception is key show --reveal (a.auditedRead), which hands out key material:
// it opens the store read-write to record its event, but it too runs no rotation; on a state
// directory that cannot be written it reads unaudited, as the other reads do.
//
// A store that does not exist (a new state directory) is a new, empty one: the command reads
// an empty store made in a temporary directory, removed on close, so that it answers as on a
// new store (no keys, no events, a key not found) and creates nothing in dir.
func (a *app) openReadOnly(ctx context.Context, dir string, opts crk.Options, clock crk.Clock) error {
	path := filepath.Join(dir, "crk.db")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		tmp, err := os.MkdirTemp("", "crkvol-empty-store-")
		if err != nil {
			return fmt.Errorf("making an empty key store to read: %w", err)
		}
		a.emptyStoreDir = tmp
		path = filepath.Join(tmp, "crk.db")
	} else {
		opts.ReadOnly = !a.auditedRead
	}
	svc, err := crk.Open(path, opts)
	if err != nil && !opts.ReadOnly && unwritable(err) {
		opts.ReadOnly = true
		svc, err = crk.Open(path, opts)
	}
	if err != nil {
		return storeHeld(err, path, dir)
	}
	reg, err := volume.OpenRegistryReadOnly(filepath.Join(dir, "volumes.db"))
	if err != nil {
		svc.Close()
		return registryHeld(err, filepath.Join(dir, "volumes.db"))
	}
	a.useLocal(svc, reg, clock)
	work, err := svc.Due(ctx)
	if err != nil {
		return fmt.Errorf("looking for due rotations: %w", err)
	}
	for _, id := range work.Rotations {
		fmt.Fprintf(a.stderr, "crkvol: rotation policy: key %s is due for rotation; the next command that changes the state, crkvol agent or crkvol kms serve runs it\n", id)
	}
	return nil
}

// useLocal makes the embedded key service svc and the registry reg the command's, with a
// volume manager over them.
func (a *app) useLocal(svc *crk.Service, reg *volume.Registry, clock crk.Clock) {
	a.svc, a.reg = svc, reg
	a.mgr = volume.NewManager(kms.NewLocal(svc), reg, volume.Options{
		Now:      clock.Now,
		OnReport: func(r *volume.Report) { a.reports = append(a.reports, r) },
		Progress: a.rewrapProgress(),
		Workers:  a.workers,
	})
}

func (a *app) remoteURL() string {
	if a.local {
		return ""
	}
	// A flag given wins even when empty: --kms-url '' is the embedded key service.
	if a.kmsURL != "" || a.flagGiven("kms-url") {
		return a.kmsURL
	}
	return a.getenv("CRKVOL_KMS_URL")
}

// openRemote uses a remote key service; the volume registry stays in the state directory.
func (a *app) openRemote(dir, url string, clock crk.Clock) error {
	remote, err := a.newRemote(url)
	if err != nil {
		return err
	}
	openReg := volume.OpenRegistry
	if a.readOnly {
		openReg = volume.OpenRegistryReadOnly
	}
	reg, err := openReg(filepath.Join(dir, "volumes.db"))
	if err != nil {
		return registryHeld(err, filepath.Join(dir, "volumes.db"))
	}
	a.remote, a.reg = remote, reg
	a.mgr = volume.NewManager(remote, reg, volume.Options{Now: clock.Now, Progress: a.rewrapProgress(), Workers: a.workers})
	return nil
}

// newRemote returns the client of the remote key service at url, configured by the flags
// and the environment.
func (a *app) newRemote(url string) (*kms.Remote, error) {
	inst := a.kmsInst
	if inst == "" {
		inst = a.getenv("CRKVOL_KMS_INSTANCE")
	}
	if inst == "" {
		return nil, usagef("--kms-url needs --kms-instance (or CRKVOL_KMS_INSTANCE)")
	}
	ca, insecure, err := a.remoteTLS()
	if err != nil {
		return nil, err
	}
	remote, err := kms.NewRemote(kms.RemoteConfig{
		URL: url, Instance: inst, APIKey: a.getenv("CRKVOL_KMS_APIKEY"), Token: a.getenv("CRKVOL_KMS_TOKEN"),
		TokenURL: a.getenv("CRKVOL_KMS_TOKEN_URL"), CAFile: ca, Insecure: insecure,
	})
	if err != nil {
		return nil, usageError{err}
	}
	if insecure && !a.warnedInsecure {
		a.warnedInsecure = true // the agent opens once per action: once is enough
		fmt.Fprintln(a.stderr, "crkvol: warning: --kms-insecure: plain http to a remote key service is allowed; the API key, tokens and wrapped keys may cross the network in clear")
	}
	return remote, nil
}

// remoteTLS returns the CA file (--kms-ca, else CRKVOL_KMS_CA, else the config file) and
// whether plain http off loopback is allowed (--kms-insecure, else CRKVOL_KMS_INSECURE, a
// boolean such as 1, else the config file). A flag given wins even when it says false or
// empty.
func (a *app) remoteTLS() (caFile string, insecure bool, err error) {
	caFile = a.kmsCA
	if caFile == "" && !a.flagGiven("kms-ca") {
		caFile = a.getenv("CRKVOL_KMS_CA")
	}
	if a.flagGiven("kms-insecure") {
		return caFile, a.kmsInsecure, nil
	}
	insecure = a.kmsInsecure
	if v := a.getenv("CRKVOL_KMS_INSECURE"); v != "" {
		if insecure, err = strconv.ParseBool(v); err != nil {
			return "", false, usagef("CRKVOL_KMS_INSECURE=%q: want 1 or 0", v)
		}
	}
	return caFile, insecure, nil
}

// needLocal refuses commands that need the embedded key service in remote mode. what is
// the part of the command that needs it (a flag such as "--reveal"), or "" for the whole
// command: the command path is printed before the message already.
func (a *app) needLocal(what string) error {
	if a.svc != nil {
		return nil
	}
	if what == "" {
		return errors.New("not available with --kms-url; use the service's own API or CLI")
	}
	return fmt.Errorf("%s: not available with --kms-url; use the service's own API or CLI", what)
}

// close releases the key service, the registry and the manager (and their file locks); a
// later open opens them again.
func (a *app) close() {
	if a.mgr != nil {
		a.mgr.Close()
	}
	if a.reg != nil {
		a.reg.Close()
	}
	if a.svc != nil {
		a.svc.Close()
	}
	if a.emptyStoreDir != "" {
		os.RemoveAll(a.emptyStoreDir)
	}
	a.mgr, a.reg, a.svc, a.remote, a.emptyStoreDir = nil, nil, nil, nil, ""
}

// emit prints v as indented JSON.
func (a *app) emit(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// rfc3339 formats a time, or "" for the zero time.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}
