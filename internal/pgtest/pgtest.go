// Package pgtest gives crkvol's tests a real, throwaway PostgreSQL server: no test of the
// database code runs against a mock.
//
// A [Cluster] is a fresh data directory made by initdb in a temporary directory and a
// postgres server on it that listens only on a unix socket in that directory
// (listen_addresses=”), tuned for tests (fsync, synchronous_commit and full_page_writes
// off). Each test takes its own database with [Cluster.NewDatabase] and gets a URL that
// works for the test and for any child process it starts.
//
// # One cluster per test binary
//
// initdb runs once for every test binary and run: its data directory is kept in a cache
// (CRKVOL_PGTEST_CACHE, default crkvol-pgtest in the user's cache directory; "off" to run
// initdb in each binary) and every cluster starts from a copy of it.
//
// Starting a cluster takes about a second, so a package's tests share one. The package's
// TestMain calls [Main]:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// and each test calls [Start], which starts the shared cluster on first use and returns it;
// Main stops it after the tests, whatever their outcome, so no postgres process outlives
// `go test`. Without Main, Start gives each test a cluster of its own, stopped when the test
// ends. Tests that stop or restart the server ([Cluster.Stop], [Cluster.Restart]) should take
// their own cluster with [New], so as not to disturb the others.
//
// # Running as root
//
// PostgreSQL refuses to run as root, and CI runs as root: then initdb and postgres run as the
// `postgres` system user, which owns the temporary directory. Otherwise they run as the
// current user.
//
// # Missing PostgreSQL
//
// The server programs are found by [tooltest.PostgresBinDir]; without them a test is skipped,
// or fails under CI=true.
//
// The package is meant for tests only.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"crkvol/internal/tooltest"
)

// Superuser is the name of the cluster's superuser, whom every URL names.
const Superuser = "postgres"

// startTimeout bounds how long a starting server may take to accept connections.
const startTimeout = 60 * time.Second

// Cluster is one running PostgreSQL server on a temporary data directory. Its methods are
// safe for concurrent use.
type Cluster struct {
	bin     string              // directory of initdb and postgres
	dir     string              // the temporary directory: data/, the socket, server.log
	cred    *syscall.Credential // run the programs as this user; nil: as ourselves
	dbCount atomic.Int64

	mu   sync.Mutex
	proc *exec.Cmd     // the running postmaster; nil when stopped
	done chan struct{} // closed when proc has been waited for

	sharedMu sync.Mutex
	sharedDB map[string]bool // the databases SharedDatabase made
}

// shared is the cluster [Main] offers to every [Start] of a test binary. It is the package's
// one piece of global state, and it has to be: TestMain and the tests share nothing else,
// and starting a server per test would cost a second each.
// It also holds the data directory every cluster of the binary starts from as a copy,
// which takes a fraction of initdb's time: the cached one, else one of the binary's own.
var shared struct {
	active atomic.Bool // Main is running the tests
	once   sync.Once
	c      *Cluster
	err    error

	templateOnce sync.Once
	template     string   // the data directory clusters start from as a copy; "" before first use
	templateTemp *Cluster // the template's own directory when it is not in the cache; else nil
	templateErr  error
}

// Main runs the tests of m with a cluster that [Start] starts on first use, then stops it
// and exits with m's result. Call it from TestMain.
func Main(m *testing.M) {
	shared.active.Store(true)
	code := m.Run()
	shared.active.Store(false)
	if shared.c != nil {
		shared.c.Stop()
		shared.c.removeDir()
	}
	if shared.templateTemp != nil {
		shared.templateTemp.removeDir()
	}
	os.Exit(code)
}

// Start returns the test binary's shared cluster, started on first use, when [Main] runs the
// tests; otherwise a cluster of t's own, stopped when t ends. Without PostgreSQL it skips t,
// or fails it under CI=true.
func Start(t testing.TB) *Cluster {
	t.Helper()
	if !shared.active.Load() {
		return New(t)
	}
	bin := tooltest.PostgresBinDir(t)
	shared.once.Do(func() {
		shared.c, shared.err = start(bin)
	})
	if shared.err != nil {
		t.Fatalf("start PostgreSQL: %v", shared.err)
	}
	return shared.c
}

// New starts a cluster of t's own, stopped and removed when t ends: for a test that stops
// or restarts the server. Without PostgreSQL it skips t, or fails it under CI=true.
func New(t testing.TB) *Cluster {
	t.Helper()
	c, err := start(tooltest.PostgresBinDir(t))
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		c.Stop()
		c.removeDir()
	})
	return c
}

// start makes a data directory and starts postgres on it: a copy of the template initdb made
// once for every test binary ([cachedTemplate]); else, under [Main], a copy of the binary's
// own template; otherwise initdb makes it.
func start(bin string) (*Cluster, error) {
	template := ""
	if shared.active.Load() {
		shared.templateOnce.Do(func() {
			if shared.template = cachedTemplate(bin); shared.template != "" {
				return
			}
			shared.templateTemp, shared.templateErr = initCluster(bin, "")
			if shared.templateErr == nil {
				shared.template = shared.templateTemp.dataDir()
			}
		})
		if shared.templateErr != nil {
			return nil, shared.templateErr
		}
		template = shared.template
	} else {
		template = cachedTemplate(bin)
	}
	c, err := initCluster(bin, template)
	if err != nil {
		return nil, err
	}
	if err := c.startServer(); err != nil {
		c.removeDir()
		return nil, err
	}
	return c, nil
}

// initdbArgs are initdb's arguments after its -D DIR.
var initdbArgs = []string{"-A", "trust", "-U", Superuser, "-E", "UTF8", "--locale=C", "--no-sync"}

// initCluster makes a cluster's directory and its data directory: a copy of template, or
// made by initdb when template is "".
func initCluster(bin, template string) (*Cluster, error) {
	c := &Cluster{bin: bin}
	cred, err := serverUser()
	if err != nil {
		return nil, err
	}
	c.cred = cred
	base := os.TempDir()
	if cred != nil && !traversable(base) {
		base = "/tmp" // the server's user must reach its socket and data directory
	}
	dir, err := os.MkdirTemp(base, "crkvol-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("make cluster directory: %w", err)
	}
	c.dir = dir
	fail := func(err error) (*Cluster, error) {
		c.removeDir()
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(fmt.Errorf("give cluster directory to the postgres user: %w", err))
		}
	}
	if template != "" {
		// cp -a keeps the owner and the 0700 mode postgres insists on.
		if out, err := exec.Command("cp", "-a", template, c.dataDir()).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("copy template data directory: %w: %s", err, strings.TrimSpace(string(out))))
		}
		return c, nil
	}
	initdb := c.command(filepath.Join(bin, "initdb"), append([]string{"-D", c.dataDir()}, initdbArgs...)...)
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %w: %s", err, strings.TrimSpace(string(out))))
	}
	return c, nil
}

// serverUser returns the credential to run PostgreSQL's programs with: the postgres system
// user when we are root, nobody else otherwise.
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL needs the postgres system user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres user id %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres group id %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// traversable reports whether every directory from dir up to / lets others through.
func traversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

// command prepares one of PostgreSQL's programs, run as the server's user, killed if the
// test binary dies first (a panicking test exits without Main's Stop): Pdeathsig, which Go
// sets after changing the credentials, so that the change does not clear it. Its own
// process group lets a hung server be killed with all its children.
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return cmd
}

// startServer starts postgres on the data directory and waits until it accepts connections.
func (c *Cluster) startServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		return nil
	}
	logPath := filepath.Join(c.dir, "server.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logFile.Close()
	cmd := c.command(filepath.Join(c.bin, "postgres"),
		"-D", c.dataDir(),
		"-k", c.dir,
		"-c", "listen_addresses=",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
		"-c", "shared_buffers=16MB",
		"-c", "max_wal_size=256MB",
		"-c", "log_min_messages=warning",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	c.proc, c.done = cmd, done

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		select {
		case <-done:
			c.proc, c.done = nil, nil
			return fmt.Errorf("postgres exited while starting: %s", c.logTail())
		case <-ctx.Done():
			c.killLocked()
			return fmt.Errorf("postgres did not accept connections within %v: %w: %s", startTimeout, err, c.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTail returns the end of the server's log, for an error message.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(filepath.Join(c.dir, "server.log"))
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	const max = 2000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}

// SocketDir returns the directory of the server's unix socket: the host of its URLs.
func (c *Cluster) SocketDir() string { return c.dir }

// URL returns the URL of database name on the cluster, as its superuser.
func (c *Cluster) URL(name string) string {
	return "postgres:///" + name + "?host=" + c.dir + "&user=" + Superuser + "&sslmode=disable"
}

// NewDatabase creates an empty database of t's own and returns its URL. The database is
// dropped when t ends (best effort: the server may be stopped by then).
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("crkvol_test_%d", c.dbCount.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.admin(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c.running() {
			_ = c.admin(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
	})
	return c.URL(name)
}

// SharedDatabase returns the URL of database name, created on the first call for that name
// and kept as long as the cluster: for the tests of a binary that share one database, each
// on rows of its own (creating a database costs a third of a second or more).
func (c *Cluster) SharedDatabase(t testing.TB, name string) string {
	t.Helper()
	c.sharedMu.Lock()
	defer c.sharedMu.Unlock()
	if !c.sharedDB[name] {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.admin(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
			t.Fatalf("create the shared database %s: %v", name, err)
		}
		if c.sharedDB == nil {
			c.sharedDB = map[string]bool{}
		}
		c.sharedDB[name] = true
	}
	return c.URL(name)
}

// admin runs one statement on the postgres database.
func (c *Cluster) admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func (c *Cluster) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil
}

// Restart stops the server with a fast shutdown (open connections are cut) and starts it
// again on the same data directory and socket: what a test of surviving a database restart
// needs.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.Stop()
	if err := c.startServer(); err != nil {
		t.Fatalf("restart PostgreSQL: %v", err)
	}
}

// StartAgain starts a stopped server again, on the same data directory and socket.
func (c *Cluster) StartAgain(t testing.TB) {
	t.Helper()
	if err := c.startServer(); err != nil {
		t.Fatalf("start PostgreSQL again: %v", err)
	}
}

// Stop stops the server with a fast shutdown (killing it if that takes over 10 s) and waits
// for it to exit. Stopping a stopped cluster does nothing.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return
	}
	_ = c.proc.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.killLocked()
	}
	c.proc, c.done = nil, nil
}

// killLocked kills the server's process group and waits for it.
func (c *Cluster) killLocked() {
	if c.proc == nil {
		return
	}
	_ = syscall.Kill(-c.proc.Process.Pid, syscall.SIGKILL)
	<-c.done
	c.proc, c.done = nil, nil
}

// removeDir removes the cluster's temporary directory.
func (c *Cluster) removeDir() {
	if c.dir != "" {
		if err := os.RemoveAll(c.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "pgtest: remove %s: %v\n", c.dir, err)
		}
	}
}
