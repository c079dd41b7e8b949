package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/internal/fsutil"
	"crkvol/nbd"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// attachment is the record an attach process keeps in <state>/attached/ while it serves, so
// that detach and status can find it.
type attachment struct {
	PID       int       `json:"pid"`
	StartTime uint64    `json:"startTime"` // the process's start, in clock ticks since boot
	Image     string    `json:"image"`
	CRN       string    `json:"crn"`
	Listen    string    `json:"listen"`
	URI       string    `json:"uri"`
	ReadOnly  bool      `json:"readOnly"`
	Since     time.Time `json:"since"`
	// KMS is the key service the process follows: "embedded" (the state directory's crk.db,
	// which it reads without holding; a record without it is from before this field, and
	// embedded too) or the --kms-url.
	KMS string `json:"kms,omitempty"`
}

// embeddedKMS is attachment.KMS for the embedded key service.
const embeddedKMS = "embedded"

// usesStore reports whether the attach process of rec reads the state directory's crk.db.
func (rec *attachment) usesStore() bool { return rec.KMS == "" || rec.KMS == embeddedKMS }

// storeAttaches returns the live attachment records of the state directory dir whose attach
// processes use its embedded key service, sorted by image.
func storeAttaches(dir string) []*attachment {
	entries, err := os.ReadDir(filepath.Join(dir, "attached"))
	if err != nil {
		return nil
	}
	var out []*attachment
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		if rec := readRecord(filepath.Join(dir, "attached", e.Name())); rec != nil && rec.usesStore() && alive(rec) {
			out = append(out, rec)
		}
	}
	slices.SortFunc(out, func(a, b *attachment) int { return strings.Compare(a.Image, b.Image) })
	return out
}

// refuseServeWhileAttached is kms serve's check that no attach process follows the embedded
// key service of the state directory dir: its feed reads and state checks open crk.db, which
// the server holds while it runs, so it would keep serving after a disable made through the
// server.
func refuseServeWhileAttached(dir string) error {
	recs := storeAttaches(dir)
	if len(recs) == 0 {
		return nil
	}
	more := ""
	if len(recs) > 1 {
		more = fmt.Sprintf(" (and %d more)", len(recs)-1)
	}
	err := fmt.Errorf("%s is attached%s by process %d with the embedded key service: its attach process follows the key by reading %s, which kms serve would hold",
		recs[0].Image, more, recs[0].PID, filepath.Join(dir, "crk.db"))
	return withHint(err, "detach it (crkvol volume detach "+recs[0].Image+"), start kms serve, then attach it again with --kms-url")
}

func (a *app) attachCommands() (*cobra.Command, *cobra.Command) {
	var listen string
	var readOnly bool
	var maxConns int
	var grace time.Duration
	attach := &cobra.Command{Use: "attach IMG", Short: "Serve a volume's plaintext as a block device over NBD until SIGINT/SIGTERM or detach", Args: args(cobra.ExactArgs(1)),
		Long: fmt.Sprintf(`attach unwraps the volume's passphrase, opens the volume and serves it with the Network Block
Device protocol, so that qemu-img, nbdcopy, nbd-client or a VM can use it as a disk, for example
  nbdinfo 'nbd+unix:///?socket=/path/to/socket'
It serves until SIGINT or SIGTERM, or until "crkvol volume detach IMG"; then it lets requests in
flight finish, flushes, closes the image and clears the key. The volume stays attached to one
process at a time; its key can still be rotated (the header is rewrapped) while it is attached.

attach follows its volume's root key. When the key is disabled, deleted or purged (an event
of the key service's lifecycle feed: read from the state directory's crk.db without holding
it, or from the --kms-url service), or when a check of the key's state finds it neither
active nor deactivated (every 30s, and at once on SIGUSR1), attach stops serving within
seconds: new requests fail with EIO, requests in flight finish, the NBD connections close,
the image is flushed and closed, the key is cleared, the attachment record and socket are
removed, and it exits with status 1 naming the key and its state. Writes acknowledged before
then are on disk: once the key is enabled or restored, the volume attaches again with its
data. A volume whose key is not usable does not attach.

attach also stops serving, the same way, when it can no longer make sure that the key is
usable: when the key service has refused this host's credentials (the API key revoked, the
token expired or refused: a 401 or 403 answer, or the token endpoint refusing the API key) at
every feed read and state check for a minute (half the --offline-grace if that is shorter: a
refusal that passes, such as one failed token renewal, never stops a volume), and once
--offline-grace (%s by default, at least 10s) has passed without any successful read of the
feed or check of the key's state (the key service out of reach, the store locked). Until then
such failures are logged and retried. --offline-grace 0 keeps serving however long the key
service cannot be reached. A fixed token (CRKVOL_KMS_TOKEN) cannot be renewed: once it expires,
or a kms serve that issued it restarts, the volume stops within a minute; attach with an API
key (CRKVOL_KMS_APIKEY) to keep serving across both.

--listen takes unix:PATH (default: a 0600 socket in the state directory) or tcp:HOST:PORT on a
loopback address: NBD has no authentication, so plaintext is never served to the network. Note
that a loopback TCP port is open to every local user and to containers sharing the network
namespace; the unix socket is not.

--max-connections bounds the NBD clients served at once (%d by default; nbdcopy and qemu open
one to four each); further clients are disconnected at once. A client that has not finished
the NBD handshake within %s is disconnected, and the requests of all clients together
hold at most %d MiB of buffers: a client that sends requests without reading the replies is
not read from until it does, and is disconnected once a reply has waited %s.`,
			lockoutOfflineGrace, nbd.DefaultMaxConnections, nbd.DefaultNegotiationTimeout, nbd.DefaultMaxBufferedBytes>>20, nbd.DefaultReplyTimeout),
		RunE: func(cmd *cobra.Command, args []string) error {
			if grace < 0 || grace > 0 && grace < lockoutMinGrace {
				return fmt.Errorf("--offline-grace %s: want 0 (no limit) or at least %s", grace, lockoutMinGrace)
			}
			return a.runAttach(cmd.Context(), args[0], listen, readOnly, maxConns, grace)
		}}
	attach.Flags().StringVar(&listen, "listen", "", "unix:PATH or tcp:127.0.0.1:PORT (default: a unix socket in <state>/attached/)")
	attach.Flags().BoolVar(&readOnly, "read-only", false, "refuse writes (the export is read-only)")
	attach.Flags().IntVar(&maxConns, "max-connections", nbd.DefaultMaxConnections, "NBD clients served at once; further ones are disconnected")
	attach.Flags().DurationVar(&grace, "offline-grace", lockoutOfflineGrace, "stop serving after this long without reaching the key service (0: never)")

	var timeout time.Duration
	detach := &cobra.Command{Use: "detach IMG", Short: "Stop the process that serves an attached volume, and wait for it", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return fmt.Errorf("--timeout %s: want a positive duration", cmd.Flags().Lookup("timeout").Value)
			}
			return a.runDetach(cmd.Context(), args[0], timeout)
		}}
	detach.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the attach process to flush and exit")
	return attach, detach
}

// listenAddr parses --listen into a network and an address.
func listenAddr(spec, defaultSock string) (network, addr string, err error) {
	if spec == "" {
		return "unix", defaultSock, nil
	}
	network, addr, ok := strings.Cut(spec, ":")
	switch {
	case !ok || addr == "":
	case network == "unix":
		if abs, err := filepath.Abs(addr); err == nil {
			addr = abs // the URI works from any directory
		}
		return network, addr, nil
	case network == "tcp":
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", "", usagef("--listen %q: %v", spec, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return "", "", fmt.Errorf("--listen %q: NBD has no authentication or encryption, so crkvol serves plaintext only on a loopback address (127.0.0.1, ::1) or a unix socket", spec)
		}
		return network, addr, nil
	}
	return "", "", usagef("--listen %q: want unix:PATH or tcp:127.0.0.1:PORT", spec)
}

// nbdURI is the NBD URI (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md) of
// an export: the export name percent-encoded as a path segment and, for a unix socket, the
// socket path as the socket query parameter, percent-encoded as RFC 3986 says (a space is
// %20: NBD clients do not read "+" as a space, as HTML forms do).
func nbdURI(network, addr, export string) string {
	if network == "unix" {
		return "nbd+unix:///" + url.PathEscape(export) + "?socket=" + queryValueEscape(addr)
	}
	return "nbd://" + addr + "/" + url.PathEscape(export)
}

// queryValueEscape percent-encodes s as the value of a URI query parameter: every byte but
// RFC 3986's unreserved characters and "/" (which a query may hold as it is, and which keeps
// a socket path readable) is %XX, so that "&", "=", "+", "#" and "%" cannot be misread.
func queryValueEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

func (a *app) attachDir() (string, error) {
	dir, err := a.stateDirectory()
	if err != nil {
		return "", err
	}
	return privateSubdir(dir, "attached")
}

// recordPath is where the attachment record of the image at abs lives: named by a hash of
// the path, so copies of an image (which share its LUKS UUID) have records of their own.
func recordPath(dir, abs string) string {
	h := sha256.Sum256([]byte(abs))
	return filepath.Join(dir, hex.EncodeToString(h[:8])+".json")
}

// processStart returns a process's start time in clock ticks since boot (field 22 of
// /proc/PID/stat), which tells a live process from a later one that reused its PID.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

// attachTarget resolves the image path of attach or detach, checks it is a volume image, and
// returns its public facts and its attachment record's path.
func (a *app) attachTarget(path string) (abs, recPath string, info *volume.Info, err error) {
	if abs, err = filepath.Abs(path); err != nil {
		return "", "", nil, err
	}
	if info, err = volume.Describe(abs); err != nil {
		return "", "", nil, err
	}
	dir, err := a.attachDir()
	if err != nil {
		return "", "", nil, err
	}
	return abs, recordPath(dir, abs), info, nil
}

func (a *app) runAttach(ctx context.Context, path, listen string, readOnly bool, maxConns int, grace time.Duration) error {
	if maxConns < 1 {
		return fmt.Errorf("--max-connections %d: want at least 1", maxConns)
	}
	// Signals first: from the moment the record exists, SIGTERM must mean a clean detach, and
	// SIGUSR1 (whose default is to end the process) a check of the key's state.
	sigctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	abs, recPath, info, err := a.attachTarget(path)
	if err != nil {
		return err
	}
	network, addr, err := listenAddr(listen, strings.TrimSuffix(recPath, ".json")+".sock")
	if err != nil {
		return err
	}
	if network == "unix" {
		if sockAbs, err := filepath.Abs(addr); err == nil && sockAbs == abs {
			return fmt.Errorf("--listen %q is the image itself", listen)
		}
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, nil))
	// The key's lifecycle is followed from the feed's head taken before the unwrap, so that no
	// disable between the unwrap and the start of following goes unseen. Embedded, the feed
	// is read from crk.db without holding it, and the state by opening it read-only: the
	// attach process releases the store once the volume is open.
	watch := &keyWatch{keyID: info.KeyID, checkNow: usr1Checks(sigctx, usr1), every: lockoutCheckEvery, wait: lockoutFeedWait,
		retryMin: lockoutRetryMin, retryMax: lockoutRetryMax, poll: lockoutPoll, grace: grace,
		refusedFor: lockoutRefusedFor, log: logger}
	if grace > 0 {
		// A healthy key service answers a feed read or a state check well within the grace.
		watch.every, watch.wait = min(watch.every, grace/2), min(watch.wait, grace/2)
		watch.refusedFor = min(watch.refusedFor, grace/2)
	}
	var head string
	remote := a.remoteURL() != ""
	if !remote { // before open, which holds crk.db
		if watch.feed, err = a.keyFeed(); err != nil {
			return err
		}
		if watch.state, err = a.storeKeyState(); err != nil {
			return err
		}
		// The first read waits for a command that holds the store as long as opening it would
		// (5 s), and says so as other commands do.
		headFeed := watch.feed
		if sf, ok := headFeed.(*kms.StoreFeed); ok {
			first := *sf
			first.LockTimeout = storeLockTimeout
			headFeed = &first
		}
		dir, err := a.stateDirectory()
		if err != nil {
			return err
		}
		if head, err = feedHead(ctx, headFeed, func(err error) error { return storeHeld(err, filepath.Join(dir, "crk.db"), dir) }); err != nil {
			return err
		}
	}
	if err := a.open(ctx); err != nil {
		return err
	}
	if remote {
		watch.feed, watch.state = a.remote, a.remote.KeyState
		if head, err = feedHead(ctx, watch.feed, nil); err != nil {
			a.close()
			return err
		}
	}
	// The attachment lock, and the data area locked exclusively (read-write) or shared
	// (read-only: volume read still reads): a second attach, or a writer, fails here, at once.
	v, err := a.mgr.OpenWith(ctx, abs, volume.OpenOptions{ReadOnly: readOnly, Exclusive: true})
	if err != nil {
		return keyRefusalHint(err, info.KeyID)
	}
	// The key service and registry are not needed while serving: release their locks so that
	// other commands (a rotation, say) run meanwhile.
	a.close()
	volumeOpen := true
	closeVolume := func() error {
		if !volumeOpen {
			return nil
		}
		volumeOpen = false
		serr := v.Sync()
		cerr := v.Close() // clears the master key
		return errors.Join(serr, cerr)
	}
	defer closeVolume()
	watchCtx, stopWatch := context.WithCancel(sigctx)
	defer stopWatch()
	locked := make(chan *keyLock, 1)
	go func() {
		if l := watch.run(watchCtx, head); l != nil {
			locked <- l
		}
	}()

	l, err := listenNBD(network, addr)
	if err != nil {
		return err
	}
	if network == "tcp" {
		addr = l.Addr().String() // the port chosen for :0
	}
	dev := &fencedDevice{v: v}
	srv, err := nbd.NewServer(nbd.Export{Name: filepath.Base(abs), Description: v.CRN(), Device: dev, ReadOnly: readOnly,
		PreferredBlockSize: v.SectorSize()}, nbd.Options{MaxConnections: maxConns, Logger: logger})
	if err != nil {
		l.Close()
		return err
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		l.Close()
		return err
	}
	rec := attachment{PID: os.Getpid(), StartTime: start, Image: abs, CRN: v.CRN(), Listen: network + ":" + addr,
		URI: nbdURI(network, addr, ""), ReadOnly: readOnly, Since: time.Now().UTC(), KMS: embeddedKMS}
	if remote {
		rec.KMS = a.remoteURL()
		if u, err := url.Parse(rec.KMS); err == nil && u.User != nil {
			u.User = nil // never keep credentials a URL may carry
			rec.KMS = u.String()
		}
	}
	// Cleanup order matters: the record and the socket go before the volume's lock is
	// released, because detach returns as soon as the lock is free and a new attach may
	// follow at once.
	cleanup := func() {
		os.Remove(recPath)
		if network == "unix" {
			os.Remove(addr)
		}
	}
	if err := writeRecord(recPath, rec); err != nil {
		l.Close()
		cleanup()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	shutdown := func(timeout time.Duration) error {
		shctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		err := srv.Shutdown(shctx)
		cleanup()
		return err
	}

	if a.asJSON {
		err = a.emit(attachmentView(&rec))
	} else {
		_, err = fmt.Fprintln(a.stdout, rec.URI)
	}
	if err != nil {
		shutdown(30 * time.Second)
		return err
	}
	fmt.Fprintf(a.stderr, "attached %s (%d bytes%s) at %s; stop with SIGINT, SIGTERM or crkvol volume detach\n",
		absPath(path), v.Size(), map[bool]string{true: ", read-only"}[readOnly], rec.URI)

	var serveErr error
	var lock *keyLock
	select {
	case <-sigctx.Done():
	case serveErr = <-served:
	case lock = <-locked:
	}
	stop() // a second SIGINT or SIGTERM now ends the process at once
	if lock != nil {
		// New requests fail with EIO from here; those under way finish, the connections
		// close, the image is flushed and closed, and the master key cleared.
		dev.fence()
		shErr := shutdown(lockoutShutdown)
		cerr := closeVolume()
		if shErr != nil {
			fmt.Fprintf(a.stderr, "crkvol: some NBD clients were cut off after %s: %v\n", lockoutShutdown, shErr)
		}
		if cerr != nil {
			return errors.Join(lock.err(abs), fmt.Errorf("closing %s: %w", path, cerr))
		}
		return lock.err(abs)
	}
	shErr := shutdown(30 * time.Second)
	if err := closeVolume(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	if serveErr != nil && !errors.Is(serveErr, nbd.ErrServerClosed) {
		return serveErr
	}
	if shErr != nil {
		fmt.Fprintf(a.stderr, "crkvol: some NBD clients were cut off after 30 s: %v\n", shErr)
	}
	fmt.Fprintf(a.stderr, "detached %s: flushed, closed, key cleared\n", absPath(path))
	return nil
}

// storeLockTimeout is how long a command waits for another one's lock on the key store, as
// crk.Open does.
const storeLockTimeout = 5 * time.Second

// feedHead returns the head of a key service's lifecycle feed: following from it misses no
// event that comes after. held, if not nil, maps the feed's error (a store held by another
// process) before it is wrapped.
func feedHead(ctx context.Context, feed volume.KeyFeed, held func(error) error) (string, error) {
	page, err := feed.KeyEvents(ctx, "", 0)
	if err != nil {
		if held != nil {
			err = held(err)
		}
		return "", fmt.Errorf("reading the head of the key's lifecycle feed: %w", err)
	}
	return page.Cursor, nil
}

// usr1Checks turns SIGUSR1s into requests for a state check, until ctx ends.
func usr1Checks(ctx context.Context, sig <-chan os.Signal) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				select {
				case out <- struct{}{}:
				default: // a check is pending already
				}
			}
		}
	}()
	return out
}

// keyRefusalHint adds to an open's error how to make the volume's key usable again, when the
// key service refused the unwrap because of the key's state.
func keyRefusalHint(err error, keyID string) error {
	switch {
	case errors.Is(err, crk.ErrKeyPurged):
		return withHint(err, keyStateHint(keyID, volume.KeyStateDestroyed, true, ""))
	case errors.Is(err, crk.ErrKeySuspended):
		return withHint(err, keyStateHint(keyID, volume.KeyStateSuspended, false, "attach again"))
	case errors.Is(err, crk.ErrKeyDestroyed):
		return withHint(err, keyStateHint(keyID, volume.KeyStateDestroyed, false, "attach again"))
	}
	return err
}

// listenNBD listens on a unix socket (mode 0600) or on TCP. An existing socket file nobody
// listens on is replaced; any other file is refused, never removed.
func listenNBD(network, addr string) (net.Listener, error) {
	if network != "unix" {
		return net.Listen(network, addr)
	}
	if len(addr) > 107 { // sun_path holds 108 bytes with the terminating NUL
		return nil, fmt.Errorf("unix socket path %s is %d bytes, more than the 107 the kernel allows; pass a shorter --listen unix:PATH", addr, len(addr))
	}
	if fi, err := os.Lstat(addr); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; choose another --listen path", addr)
		}
		c, err := net.Dial("unix", addr)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: a server is already listening there", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", addr, err)
		}
		if err := os.Remove(addr); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", addr)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // removed by the caller, before the volume closes
	return l, nil
}

// writeRecord writes the attachment record atomically, mode 0600.
func writeRecord(path string, rec attachment) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'))
}

func (a *app) runDetach(ctx context.Context, path string, timeout time.Duration) error {
	abs, recPath, _, err := a.attachTarget(path)
	if err != nil {
		return err
	}
	busy, err := volume.InUse(abs)
	if err != nil {
		return err
	}
	rec := readRecord(recPath)
	if rec != nil && (rec.Image != abs || !alive(rec)) {
		os.Remove(recPath) // the attach process died without cleaning up
		rec = nil
	}
	switch {
	case rec == nil && busy:
		return fmt.Errorf("%s is in use by a process this state directory has no attachment record of (another --state, or a writer)", path)
	case rec == nil:
		return fmt.Errorf("%s is not attached", path)
	}
	if err := syscall.Kill(rec.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("signalling process %d: %w", rec.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		busy, err := volume.InUse(abs)
		if err != nil {
			return err
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d still holds %s after %s", rec.PID, path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if a.asJSON {
		return a.emit(map[string]any{"path": absPath(path), "detached": true, "pid": rec.PID})
	}
	fmt.Fprintf(a.stderr, "detached %s (process %d)\n", absPath(path), rec.PID)
	return nil
}

// alive reports whether the process that wrote rec still runs (and is not a later process
// that reused its PID).
func alive(rec *attachment) bool {
	start, err := processStart(rec.PID)
	return err == nil && start == rec.StartTime
}

// readRecord returns the attachment record at path, or nil when there is none or it cannot
// be trusted: the CLI signals the process a record names, so a record is read only from a
// private directory, only when it is a regular file (never through a link) of this user's
// that no one else can write.
func readRecord(path string) *attachment {
	if fsutil.CheckPrivate(filepath.Dir(path)) != nil {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !fsutil.OwnFile(st) {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil
	}
	var rec attachment
	if json.Unmarshal(b, &rec) != nil || rec.PID <= 0 {
		return nil
	}
	return &rec
}

// attachmentOf returns the live attachment record of the image at path, or nil.
func (a *app) attachmentOf(path string) *attachment {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return nil
	}
	rec := readRecord(recordPath(filepath.Join(dir, "attached"), abs))
	if rec == nil || rec.Image != abs || !alive(rec) {
		return nil
	}
	return rec
}
