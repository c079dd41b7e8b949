package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/tooltest"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// nbdConn is a minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies) that keeps one
// connection to an attached volume open, to see what its requests get once the key is
// locked out.
type nbdConn struct {
	nc     net.Conn
	cookie uint64
}

// errNBD is an NBD error reply; errno is the protocol's (Linux) error number.
type errNBD struct{ errno uint32 }

func (e errNBD) Error() string {
	return fmt.Sprintf("nbd error reply %d (%v)", e.errno, syscall.Errno(e.errno))
}

func dialNBD(t *testing.T, sock string) *nbdConn {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
	hello := make([]byte, 18)
	_, err = io.ReadFull(nc, hello)
	require.NoError(t, err)
	require.Equal(t, "NBDMAGICIHAVEOPT", string(hello[:16]))
	b := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	b = binary.BigEndian.AppendUint64(b, 0x49484156454f5054)
	b = binary.BigEndian.AppendUint32(b, 7) // NBD_OPT_GO
	b = binary.BigEndian.AppendUint32(b, 6) // data: name length, "", no info requests
	b = append(b, 0, 0, 0, 0, 0, 0)
	_, err = nc.Write(b)
	require.NoError(t, err)
	for { // option replies until NBD_REP_ACK
		h := make([]byte, 20)
		_, err := io.ReadFull(nc, h)
		require.NoError(t, err)
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		_, err = io.CopyN(io.Discard, nc, int64(n))
		require.NoError(t, err)
		require.Less(t, typ, uint32(1<<31), "NBD_OPT_GO refused")
		if typ == 1 {
			break
		}
	}
	require.NoError(t, nc.SetDeadline(time.Time{}))
	return &nbdConn{nc: nc}
}

// do sends one request and reads its reply: the read data, an errNBD, or the connection's
// error.
func (c *nbdConn) do(typ uint16, off uint64, length uint32, payload []byte) ([]byte, error) {
	c.cookie++
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, c.cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if err := c.nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := c.nc.Write(append(b, payload...)); err != nil {
		return nil, err
	}
	h := make([]byte, 16)
	if _, err := io.ReadFull(c.nc, h); err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint32(h) != 0x67446698 || binary.BigEndian.Uint64(h[8:]) != c.cookie {
		return nil, errors.New("unexpected NBD reply")
	}
	if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
		return nil, errNBD{e}
	}
	if typ != 0 {
		return nil, nil
	}
	data := make([]byte, length)
	_, err := io.ReadFull(c.nc, data)
	return data, err
}

func (c *nbdConn) read(off uint64, n uint32) ([]byte, error) { return c.do(0, off, n, nil) }
func (c *nbdConn) write(off uint64, p []byte) error {
	_, err := c.do(1, off, uint32(len(p)), p)
	return err
}

// lockoutEnv runs crkvol commands of one state directory, at a service time that the test
// moves on (the 30 s enable cool-down).
type lockoutEnv struct {
	t     *testing.T
	dir   string
	now   time.Time
	extra []string // more environment (remote mode)
}

func (e *lockoutEnv) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command("crkvol", args...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "CRKVOL_STATE="+filepath.Join(e.dir, "state"), "CRKVOL_MASTER_KEY=",
		"CRKVOL_NOW="+e.now.Format(time.RFC3339))
	cmd.Env = append(cmd.Env, e.extra...)
	return cmd
}

// run runs a command that must succeed and returns its stdout.
func (e *lockoutEnv) run(args ...string) string {
	e.t.Helper()
	cmd := e.cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(e.t, cmd.Run(), "crkvol %s: %s", strings.Join(args, " "), errb.String())
	return out.String()
}

// fail runs a command that must fail with exit status 1 and returns its stderr.
func (e *lockoutEnv) fail(args ...string) string {
	e.t.Helper()
	out, err := e.cmd(args...).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(e.t, err, &ee, "crkvol %s succeeded: %s", strings.Join(args, " "), out)
	require.Equal(e.t, 1, ee.ExitCode(), "%s", out)
	return string(out)
}

// attached is a running attach process.
type attached struct {
	cmd    *exec.Cmd
	stderr *tooltest.SyncBuffer
	sock   string
	exited chan struct{}
	err    error
	at     time.Time // when it exited
}

func (e *lockoutEnv) attach(img, sock string, flags ...string) *attached {
	e.t.Helper()
	a := &attached{cmd: e.cmd(append([]string{"volume", "attach", img, "--listen", "unix:" + sock}, flags...)...), stderr: &tooltest.SyncBuffer{}, sock: sock, exited: make(chan struct{})}
	a.cmd.Stderr = a.stderr
	require.NoError(e.t, a.cmd.Start())
	go func() {
		a.err = a.cmd.Wait()
		a.at = time.Now()
		close(a.exited)
	}()
	e.t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.exited
	})
	require.Eventually(e.t, func() bool {
		select {
		case <-a.exited:
			return true
		default:
		}
		// Ready once it says so: the socket accepts connections (into its backlog) from
		// listen on, before the attachment record that detach, status and kms serve's
		// refusal read is written; the "attached" line comes after the record.
		if !strings.Contains(a.stderr.String(), "; stop with SIGINT, SIGTERM or crkvol volume detach") {
			return false
		}
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	select {
	case <-a.exited:
		e.t.Fatalf("attach ended: %v: %s", a.err, a.stderr.String())
	default:
	}
	return a
}

// lockoutCycle attaches a volume, writes a pattern, runs before (if not nil) while the volume
// is served, has disable (a function: a CLI command, or the API of kms serve) take the key
// out of use, and checks that requests on an open connection fail, the attach process exits
// 1 naming the key's state, a new attach is refused, and after enable the volume reads back
// the pattern. It returns how long the requests and the process took to stop after the
// disable returned.
func lockoutCycle(t *testing.T, e *lockoutEnv, key string, before func(*attached, *nbdConn), disable, enable func()) (failedAfter, exitedAfter time.Duration) {
	img := filepath.Join(e.dir, "a.img")
	sock := filepath.Join(e.dir, "a.sock")
	a := e.attach("a.img", sock)
	c := dialNBD(t, sock)
	pattern := randBytes(1<<20, 19)
	require.NoError(t, c.write(4096, pattern)) // no flush: the lockout must make it durable
	got, err := c.read(4096, 1<<20)
	require.NoError(t, err)
	require.True(t, bytes.Equal(pattern, got))

	// SIGUSR1 asks for a state check now; it does not end the process.
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGUSR1))
	require.Eventually(t, func() bool {
		return strings.Contains(a.stderr.String(), "checking the key's state now (SIGUSR1)")
	}, time.Minute, 10*time.Millisecond)
	_, err = c.read(0, 4096)
	require.NoError(t, err, "still serving after SIGUSR1 with the key active")
	if before != nil {
		before(a, c)
	}

	disable()
	disabled := time.Now()
	// Requests on the open connection fail from now on (an EIO reply, or the connection
	// closed); the hang guard is generous, the measured time is logged.
	for {
		_, err := c.read(0, 4096)
		if err != nil {
			failedAfter = time.Since(disabled)
			var ne errNBD
			if errors.As(err, &ne) {
				// EIO from the lockout, or NBD's ESHUTDOWN when the request reached the
				// server while it was already shutting down after the lockout.
				assert.Contains(t, []uint32{uint32(syscall.EIO), uint32(syscall.ESHUTDOWN)}, ne.errno,
					"a request after the lockout fails with EIO (or ESHUTDOWN while the server stops)")
			}
			t.Logf("requests fail %s after the disable: %v", failedAfter, err)
			break
		}
		require.Less(t, time.Since(disabled), time.Minute, "requests still served a minute after the disable")
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-a.exited:
	case <-time.After(time.Minute):
		t.Fatalf("the attach process still runs a minute after the disable: %s", a.stderr.String())
	}
	exitedAfter = a.at.Sub(disabled)
	t.Logf("the attach process exited %s after the disable", exitedAfter)
	var ee *exec.ExitError
	require.ErrorAs(t, a.err, &ee, "%s", a.stderr.String())
	assert.Equal(t, 1, ee.ExitCode(), "%s", a.stderr.String())
	stderr := a.stderr.String()
	assert.Contains(t, stderr, "crkvol: volume attach: key "+key+" is suspended (disabled): stopped serving "+img+"\n", stderr)
	assert.Contains(t, stderr, "crkvol: hint: enable the key (crkvol key enable "+key+") and attach again\n")
	assert.NoFileExists(t, sock, "the socket is removed")
	entries, err := os.ReadDir(filepath.Join(e.dir, "state", "attached"))
	require.NoError(t, err)
	assert.Empty(t, entries, "the attachment record is removed")

	// A new attach is refused, naming the key's state.
	out := e.fail("volume", "attach", "a.img", "--listen", "unix:"+sock)
	assert.Contains(t, out, "key is suspended")
	assert.Contains(t, out, "crkvol: hint: enable the key (crkvol key enable "+key+") and attach again")

	// Enabled again (after the cool-down, on the service clock), it attaches and reads back
	// what was written before the disable.
	e.now = e.now.Add(time.Minute)
	enable()
	a = e.attach("a.img", sock)
	c = dialNBD(t, sock)
	got, err = c.read(4096, 1<<20)
	require.NoError(t, err)
	require.True(t, bytes.Equal(pattern, got), "the data written before the disable reads back")
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGTERM))
	<-a.exited
	require.NoError(t, a.err, a.stderr.String())
	return failedAfter, exitedAfter
}

// TestAttachStopsWhenKeyDisabled: an attach process alone (embedded key service, no agent)
// follows its key: "key disable" in another process makes requests on an open NBD
// connection fail and the process exit 1 naming the key and its state, with the record and
// socket removed; a new attach is refused naming the state; after "key enable" the volume
// attaches and reads back exactly what was written before the disable. In the long run, both
// happen within 5 s of the disable.
func TestAttachStopsWhenKeyDisabled(t *testing.T) {
	t.Parallel()
	e := &lockoutEnv{t: t, dir: t.TempDir(), now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	key := jsonField(t, e.run("--json", "key", "create", "lockout"), "id")
	e.run("volume", "create", "a.img", "--size", "4MiB", "--key", key)
	failed, exited := lockoutCycle(t, e, key, nil,
		func() { e.run("key", "disable", key) },
		func() { e.run("key", "enable", key) })
	if tooltest.Long() {
		assert.Less(t, failed, 5*time.Second, "requests fail within 5 s of the disable")
		assert.Less(t, exited, 5*time.Second, "the attach process exits within 5 s of the disable")
	}
}

// fakeFeed is a lifecycle feed of scripted answers: each call takes the next one, and once
// they are spent it waits (as a long poll with nothing new).
type fakeFeed struct {
	mu      sync.Mutex
	answers []feedAnswer
	cursors []string // the cursors asked for
	// then, when set, answers every call once the answers are spent.
	then error
}

type feedAnswer struct {
	page volume.KeyEventPage
	err  error
}

func (f *fakeFeed) KeyEvents(ctx context.Context, cursor string, wait time.Duration) (volume.KeyEventPage, error) {
	f.mu.Lock()
	f.cursors = append(f.cursors, cursor)
	if len(f.answers) > 0 {
		a := f.answers[0]
		f.answers = f.answers[1:]
		f.mu.Unlock()
		return a.page, a.err
	}
	f.mu.Unlock()
	if f.then != nil {
		return volume.KeyEventPage{}, f.then
	}
	select {
	case <-ctx.Done():
		return volume.KeyEventPage{}, ctx.Err()
	case <-time.After(wait):
		return volume.KeyEventPage{Cursor: cursor}, nil
	}
}

// TestKeyWatch: what locks an attached volume's key and what does not. Events of the key
// that take it out of use lock; other events and other keys' do not; feed and state-check
// errors are retried and never lock; "resync needed" follows from the head and checks the
// state; SIGUSR1 (checkNow) checks the state at once.
func TestKeyWatch(t *testing.T) {
	t.Parallel()
	const key, other = "k1", "k2"
	active := volume.KeyStatus{State: volume.KeyStateActive}
	suspended := volume.KeyStatus{State: volume.KeyStateSuspended}
	ev := func(cursor, typ, keyID, state string) volume.KeyEvent {
		return volume.KeyEvent{Cursor: cursor, Type: typ, KeyID: keyID, State: state}
	}
	page := func(cursor string, evs ...volume.KeyEvent) feedAnswer {
		return feedAnswer{page: volume.KeyEventPage{Events: evs, Cursor: cursor}}
	}
	// renewGrace is the grace of the "within the grace" rows, which wait graceWait/2
	// graces with no lock: 2 s and 4 graces in the long run (CI), 1 s and 2.5 graces
	// otherwise. Either way a check comes every half grace, so only a stall of half a grace
	// could lock; the run outlasts the grace, so the lease must have been renewed.
	renewGrace := time.Duration(tooltest.Scale(2000, 1000)) * time.Millisecond
	graceWait := time.Duration(tooltest.Scale(8, 5))
	unreachable := errors.New("connection refused")
	refused := fmt.Errorf("kms: token: the token endpoint refused the API key (400 Bad Request): %w", kms.ErrCredentialsRefused)
	for _, tc := range []struct {
		name    string
		answers []feedAnswer
		// states answers the state checks in turn (the last one repeats).
		states   []volume.KeyStatus
		stateErr error
		// then answers the feed once the answers are spent; grace is the watch's.
		then  error
		grace time.Duration
		// refusedFor is how long refusals must last to lock (0: the first locks).
		refusedFor time.Duration
		checkNow   bool
		want       *keyLock // nil: no lock within the test's time
		cursors    []string // the first cursors the feed is asked for
	}{
		{name: "disable", answers: []feedAnswer{page("4", ev("4", volume.KeyDisabled, key, volume.KeyStateSuspended))},
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, state: volume.KeyStateSuspended, event: volume.KeyDisabled}, cursors: []string{"3"}},
		{name: "delete after a rotation", answers: []feedAnswer{page("5", ev("4", volume.KeyRotated, key, volume.KeyStateActive), ev("5", volume.KeyDeleted, key, volume.KeyStateDestroyed))},
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, state: volume.KeyStateDestroyed, event: volume.KeyDeleted}},
		{name: "purge", answers: []feedAnswer{page("4", ev("4", volume.KeyPurged, key, volume.KeyStateDestroyed))},
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, state: volume.KeyStateDestroyed, event: volume.KeyPurged}},
		{name: "other key disabled, own key rotated and enabled",
			answers: []feedAnswer{page("5", ev("4", volume.KeyDisabled, other, volume.KeyStateSuspended), ev("5", volume.KeyRotated, key, volume.KeyStateActive)),
				page("6", ev("6", volume.KeyEnabled, key, volume.KeyStateActive))},
			states: []volume.KeyStatus{active}, cursors: []string{"3", "5", "6"}},
		{name: "feed errors retried", answers: []feedAnswer{{err: unreachable}, {err: unreachable},
			page("4", ev("4", volume.KeyDisabled, key, volume.KeyStateSuspended))},
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, state: volume.KeyStateSuspended, event: volume.KeyDisabled}, cursors: []string{"3", "3", "3"}},
		{name: "feed errors never lock", answers: []feedAnswer{{err: unreachable}, {err: unreachable}, {err: unreachable}},
			states: []volume.KeyStatus{active}},
		{name: "state check errors never lock", states: []volume.KeyStatus{active}, stateErr: unreachable},
		{name: "suspended at start", states: []volume.KeyStatus{suspended}, want: &keyLock{keyID: key, state: volume.KeyStateSuspended, event: ""}},
		{name: "key gone", states: []volume.KeyStatus{active}, stateErr: fmt.Errorf("key k1: %w", crk.ErrKeyNotFound), want: &keyLock{keyID: key, state: "not found", event: ""}},
		{name: "resync checks the state", answers: []feedAnswer{{err: fmt.Errorf("kms: %w", volume.ErrResyncNeeded)}, page("9")},
			states: []volume.KeyStatus{active, suspended}, want: &keyLock{keyID: key, state: volume.KeyStateSuspended, event: ""}, cursors: []string{"3", ""}},
		{name: "resync follows from the head", answers: []feedAnswer{{err: fmt.Errorf("kms: %w", volume.ErrResyncNeeded)}, page("9"),
			page("10", ev("10", volume.KeyDisabled, key, volume.KeyStateSuspended))},
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, state: volume.KeyStateSuspended, event: volume.KeyDisabled}, cursors: []string{"3", "", "9"}},
		{name: "credentials refused by the feed", answers: []feedAnswer{{err: unreachable}, {err: refused}},
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, refused: refused}},
		{name: "credentials refused by the state check", states: []volume.KeyStatus{active}, stateErr: refused,
			want: &keyLock{keyID: key, refused: refused}},
		{name: "a refusal that lasts locks", answers: []feedAnswer{{err: refused}}, then: refused, refusedFor: 30 * time.Millisecond,
			states: []volume.KeyStatus{active}, want: &keyLock{keyID: key, refused: refused}},
		{name: "a refusal that passes never locks", answers: []feedAnswer{{err: refused}, {err: refused}}, refusedFor: 10 * time.Second,
			states: []volume.KeyStatus{active}},
		{name: "unreachable past the grace", states: []volume.KeyStatus{active}, stateErr: unreachable, then: unreachable,
			grace: 50 * time.Millisecond, want: &keyLock{keyID: key, offline: 50 * time.Millisecond, cause: unreachable}},
		// A grace of a second or two, checked every half grace: a loaded machine (the tests
		// run in parallel on two cores) must not stall a check past it. The test waits
		// graceWait graces: past the first, so the lease must have been renewed.
		{name: "feed unreachable, state checks answered: within the grace", states: []volume.KeyStatus{active}, then: unreachable,
			grace: renewGrace},
		{name: "feed answered, state checks unreachable: within the grace", states: []volume.KeyStatus{active}, stateErr: unreachable,
			grace: renewGrace},
		{name: "SIGUSR1 checks at once", states: []volume.KeyStatus{active, suspended}, checkNow: true, want: &keyLock{keyID: key, state: volume.KeyStateSuspended, event: ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			feed := &fakeFeed{answers: tc.answers, then: tc.then}
			var mu sync.Mutex
			checks := 0
			checkNow := make(chan struct{}, 1)
			w := &keyWatch{keyID: key, feed: feed, checkNow: checkNow, every: time.Hour, wait: time.Hour,
				retryMin: time.Millisecond, retryMax: 2 * time.Millisecond, grace: tc.grace, refusedFor: tc.refusedFor, log: slog.New(slog.DiscardHandler),
				state: func(ctx context.Context, id string) (volume.KeyStatus, error) {
					require.Equal(t, key, id)
					mu.Lock()
					defer mu.Unlock()
					st := tc.states[min(checks, len(tc.states)-1)]
					checks++
					if checks == 1 && tc.checkNow {
						checkNow <- struct{}{}
					}
					return st, tc.stateErr
				}}
			if tc.grace > 0 { // as attach does
				w.every, w.wait = tc.grace/2, tc.grace/2
			}
			// Without a lock the watch runs until the context ends: long enough for every
			// scripted answer and the retries.
			ctx, cancel := context.WithTimeout(context.Background(), max(300*time.Millisecond, graceWait*tc.grace/2))
			defer cancel()
			if tc.want != nil {
				ctx, cancel = context.WithTimeout(context.Background(), time.Minute) // hang guard
				defer cancel()
			}
			got := w.run(ctx, "3")
			assert.Equal(t, tc.want, got)
			feed.mu.Lock()
			defer feed.mu.Unlock()
			if len(tc.cursors) > 0 {
				require.GreaterOrEqual(t, len(feed.cursors), len(tc.cursors))
				assert.Equal(t, tc.cursors, feed.cursors[:len(tc.cursors)])
			}
		})
	}
}

// servedKMS is a running "crkvol kms serve" on loopback, with a static token.
type servedKMS struct {
	cmd    *exec.Cmd
	out    *tooltest.SyncBuffer
	url    string
	exited chan error
}

// serveKMS starts kms serve over the state directory of e (at e's service time) on listen
// (127.0.0.1:0 for any port).
func serveKMS(t *testing.T, e *lockoutEnv, listen, token string) *servedKMS {
	t.Helper()
	addrFile := filepath.Join(e.dir, "addr.txt")
	os.Remove(addrFile)
	s := &servedKMS{cmd: e.cmd("kms", "serve", "--listen", listen, "--addr-file", addrFile, "--static-token", token),
		out: &tooltest.SyncBuffer{}, exited: make(chan error, 1)}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	require.NoError(t, s.cmd.Start())
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() { s.stop(t) })
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(addrFile)
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			s.url = string(bytes.TrimSpace(b))
			return true
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "kms serve did not start: %s", s.out.String())
	return s
}

// stop ends kms serve with SIGTERM and waits for it.
func (s *servedKMS) stop(t *testing.T) {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		t.Errorf("kms serve did not stop on SIGTERM: %s", s.out.String())
	}
}

// TestAttachStopsWhenKeyDisabledRemote: in remote mode (--kms-url, kms serve), the attach
// process keeps serving while kms serve is down (and says so in its log); a disable made with
// plain HTTP through kms serve's API once it is back stops the attached volume (its attach
// process follows the service's lifecycle endpoint) within 5 s; a new attach is refused
// naming the state; after enable the volume attaches again and reads back what was written.
func TestAttachStopsWhenKeyDisabledRemote(t *testing.T) {
	if !tooltest.Long() {
		t.Skipf("a kms serve restart and a lockout cycle: set %s=1", tooltest.LongEnv)
	}
	t.Parallel()
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	server := &lockoutEnv{t: t, dir: t.TempDir(), now: t0}
	var insts []map[string]any
	require.NoError(t, json.Unmarshal([]byte(server.run("--json", "kms", "instance", "list")), &insts))
	inst, _ := insts[0]["id"].(string)
	require.NotEmpty(t, inst)
	const token = "lockout-token"
	srv := serveKMS(t, server, "127.0.0.1:0", token)
	listen := strings.TrimPrefix(srv.url, "http://")

	host := &lockoutEnv{t: t, dir: t.TempDir(), now: t0,
		extra: []string{"CRKVOL_KMS_URL=" + srv.url, "CRKVOL_KMS_INSTANCE=" + inst, "CRKVOL_KMS_TOKEN=" + token}}
	key := jsonField(t, host.run("--json", "key", "create", "lockout"), "id")
	host.run("volume", "create", "a.img", "--size", "4MiB", "--key", key)

	// While kms serve is down the attach process keeps serving (the feed's failures are
	// logged and retried); the disable comes once it is back.
	outage := func(a *attached, c *nbdConn) {
		srv.stop(t)
		require.Eventually(t, func() bool {
			return strings.Contains(a.stderr.String(), "lifecycle feed unavailable; still serving, retrying")
		}, time.Minute, 20*time.Millisecond, "%s", a.stderr.String())
		time.Sleep(2 * time.Second) // a few retries
		_, err := c.read(0, 4096)
		require.NoError(t, err, "still serving while the key service is out of reach")
		srv = serveKMS(t, server, listen, token)
	}
	failed, exited := lockoutCycle(t, host, key, outage,
		func() {
			req, err := http.NewRequest(http.MethodPost, srv.url+"/api/v2/keys/"+key+"/actions/disable", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Bluemix-Instance", inst)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusNoContent, resp.StatusCode, "%s", body)
		},
		func() {
			// The enable cool-down runs on the server's clock: restart it a minute on, on
			// the same address.
			srv.stop(t)
			server.now = server.now.Add(time.Minute)
			srv = serveKMS(t, server, listen, token)
			host.run("key", "enable", key)
		})
	assert.Less(t, failed, 5*time.Second, "requests fail within 5 s of the disable")
	assert.Less(t, exited, 5*time.Second, "the attach process exits within 5 s of the disable")
}

// stopped waits for the attach process to end (a generous hang guard) and checks that it
// exited 1 with its socket and record removed; it returns its stderr.
func (a *attached) stopped(t *testing.T, e *lockoutEnv, since time.Time) string {
	t.Helper()
	select {
	case <-a.exited:
	case <-time.After(time.Minute):
		t.Fatalf("the attach process still runs a minute on: %s", a.stderr.String())
	}
	t.Logf("the attach process exited %s after the trigger", a.at.Sub(since))
	var ee *exec.ExitError
	require.ErrorAs(t, a.err, &ee, "%s", a.stderr.String())
	assert.Equal(t, 1, ee.ExitCode(), "%s", a.stderr.String())
	assert.NoFileExists(t, a.sock, "the socket is removed")
	entries, err := os.ReadDir(filepath.Join(e.dir, "state", "attached"))
	require.NoError(t, err)
	assert.Empty(t, entries, "the attachment record is removed")
	return a.stderr.String()
}

// TestAttachStopsWhenCredentialsRefusedOrOffline: in remote mode, an attach process whose API
// key is revoked (kms apikey revoke on the server) stops serving once the key service has
// refused it for half the --offline-grace (10s here: 5s of refusals; SIGUSR1 asks for the
// first check now), saying that the service refused this host's credentials; and one attached
// with --offline-grace 10s stops once kms serve has been down that long, saying so (in the long
// run only: it takes the grace).
func TestAttachStopsWhenCredentialsRefusedOrOffline(t *testing.T) {
	if !tooltest.Long() {
		// Both halves wait out a refusal or a grace (10-20 s); TestKeyWatch covers the
		// logic in the plain run.
		t.Skip("a kms serve and two attaches waiting out their graces: set " + tooltest.LongEnv + "=1")
	}
	t.Parallel()
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	server := &lockoutEnv{t: t, dir: t.TempDir(), now: t0}
	var insts []map[string]any
	require.NoError(t, json.Unmarshal([]byte(server.run("--json", "kms", "instance", "list")), &insts))
	inst, _ := insts[0]["id"].(string)
	require.NotEmpty(t, inst)
	apikey := func() (key, id string) {
		out := server.run("--json", "kms", "apikey", "create")
		return jsonField(t, out, "apikey"), jsonField(t, out, "id")
	}
	k1, id1 := apikey()
	k2, _ := apikey()
	srv := serveKMS(t, server, "127.0.0.1:0", "unused-static-token")
	hostEnv := []string{"CRKVOL_KMS_URL=" + srv.url, "CRKVOL_KMS_INSTANCE=" + inst}
	host := &lockoutEnv{t: t, dir: t.TempDir(), now: t0, extra: append(hostEnv, "CRKVOL_KMS_APIKEY="+k1)}
	key := jsonField(t, host.run("--json", "key", "create", "creds"), "id")
	img := filepath.Join(host.dir, "a.img")
	host.run("volume", "create", "a.img", "--size", "4MiB", "--key", key)

	// The API key revoked while attached: the next call is refused.
	sock := filepath.Join(host.dir, "a.sock")
	a := host.attach("a.img", sock, "--offline-grace", "10s")
	c := dialNBD(t, sock)
	_, err := c.read(0, 4096)
	require.NoError(t, err)
	server.run("kms", "apikey", "revoke", id1)
	revoked := time.Now()
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGUSR1))
	stderr := a.stopped(t, host, revoked)
	assert.Contains(t, stderr, "crkvol: volume attach: the key service refused this host's credentials, so key "+key+
		" cannot be checked any more: stopped serving "+img+": ", stderr)
	assert.Contains(t, stderr, "crkvol: hint: give this host a valid API key", stderr)
	_, err = c.read(0, 4096)
	assert.Error(t, err, "no request is served after the lockout")

	// Another API key, --offline-grace 10s, and kms serve stopped.
	host.extra = append(hostEnv, "CRKVOL_KMS_APIKEY="+k2)
	a = host.attach("a.img", sock, "--offline-grace", "10s")
	srv.stop(t)
	down := time.Now()
	stderr = a.stopped(t, host, down)
	assert.Contains(t, stderr, "crkvol: volume attach: the key service could not be reached for 10s (--offline-grace), so key "+key+
		" cannot be checked any more: stopped serving "+img+": ", stderr)
	assert.Contains(t, stderr, "crkvol: hint: attach again once the key service can be reached; --offline-grace 0 keeps serving while it cannot\n", stderr)
}

// TestKeyWatchFeedNeverSpins: a lifecycle feed (over HTTP, a fake server) that answers at
// once although asked to wait, with nothing new, with a cursor that goes backwards or changes
// without events, with events behind the cursor, or with "resync needed" every time, is asked
// again no sooner than the watch's poll interval: the requests in a fixed run stay within
// what the interval allows (thousands without it). A cursor that does not move forward is
// not taken (the watch keeps asking from its own), and is logged once.
func TestKeyWatchFeedNeverSpins(t *testing.T) {
	t.Parallel()
	const key = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"
	const other = "1f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a12"
	event := func(cursor string) string {
		return `{"cursor":"` + cursor + `","time":"2026-06-01T12:00:00Z","type":"rotate","keyId":"` + other + `","state":"active","newVersion":"v"}`
	}
	for _, tc := range []struct {
		name   string
		answer func(cursor string) (status int, body string)
		// wantCursors: every request asks for this cursor ("" for any); logged: the warning
		// about the cursor is logged once.
		wantCursor string
		logged     bool
	}{
		{name: "nothing new at once", answer: func(c string) (int, string) { return 200, `{"events":null,"cursor":"` + c + `"}` }, wantCursor: "7"},
		{name: "cursor backwards", answer: func(string) (int, string) { return 200, `{"events":null,"cursor":"3"}` }, wantCursor: "7", logged: true},
		{name: "cursor forward without events", answer: func(string) (int, string) { return 200, `{"events":[],"cursor":"9"}` }, wantCursor: "7", logged: true},
		{name: "events behind the cursor", answer: func(string) (int, string) { return 200, `{"events":[` + event("2") + `],"cursor":"2"}` }, wantCursor: "7", logged: true},
		{name: "resync needed every time", answer: func(c string) (int, string) {
			if c == "" {
				return 200, `{"events":null,"cursor":"7"}`
			}
			return 410, `{"metadata":{"collectionType":"application/vnd.ibm.kms.error+json","collectionTotal":1},"resources":[{"errorMsg":"Gone","reasons":[{"code":"FEED_RESYNC_REQUIRED_ERR","message":"resync","status":410,"crkvolError":"resync_needed"}]}]}`
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			requests := 0
			var cursors []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != kpapi.LifecyclePath {
					http.NotFound(w, r)
					return
				}
				c := r.URL.Query().Get("cursor")
				mu.Lock()
				requests++
				cursors = append(cursors, c)
				mu.Unlock()
				status, body := tc.answer(c)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, body)
			}))
			t.Cleanup(srv.Close)
			remote, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "11111111-1111-4111-8111-111111111111", Token: "tok"})
			require.NoError(t, err)
			var logs tooltest.SyncBuffer
			const poll, run = 25 * time.Millisecond, 250 * time.Millisecond
			w := &keyWatch{keyID: key, feed: remote, checkNow: make(chan struct{}), every: time.Hour, wait: 25 * time.Second,
				retryMin: poll, retryMax: poll, poll: poll, log: slog.New(slog.NewTextHandler(&logs, nil)),
				state: func(context.Context, string) (volume.KeyStatus, error) {
					return volume.KeyStatus{State: volume.KeyStateActive}, nil
				}}
			ctx, cancel := context.WithTimeout(context.Background(), run)
			defer cancel()
			assert.Nil(t, w.run(ctx, "7"))
			if tc.wantCursor == "" {
				assert.Contains(t, logs.String(), "following from the head", "the feed's 410 is a resync")
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%d requests in %s", requests, run)
			assert.LessOrEqual(t, requests, 2*int(run/poll)+2, "requests of a feed that answers at once")
			assert.GreaterOrEqual(t, requests, 2)
			if tc.wantCursor != "" {
				for _, c := range cursors {
					require.Equal(t, tc.wantCursor, c, "the cursor asked for")
				}
			}
			n := strings.Count(logs.String(), "does not follow the one asked for")
			if tc.logged {
				assert.Equal(t, 1, n, "%s", logs.String())
			} else {
				assert.Zero(t, n, "%s", logs.String())
			}
		})
	}
}

// TestServeRefusedWhileAttachedEmbedded: kms serve refuses to start on a state directory
// while an attach process that follows its embedded key service serves a volume of it
// (naming the image and the process, with a hint); once it is detached, kms serve starts,
// and the live record of an attach through that server (--kms-url) does not keep a later kms
// serve from starting.
func TestServeRefusedWhileAttachedEmbedded(t *testing.T) {
	t.Parallel()
	e := &lockoutEnv{t: t, dir: t.TempDir(), now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	key := jsonField(t, e.run("--json", "key", "create", "serve"), "id")
	e.run("volume", "create", "a.img", "--size", "4MiB", "--key", key)
	img := filepath.Join(e.dir, "a.img")
	sock := filepath.Join(e.dir, "a.sock")
	a := e.attach("a.img", sock)
	serve := e.cmd("kms", "serve", "--listen", "127.0.0.1:0", "--static-token", "tok")
	guard := time.AfterFunc(time.Minute, func() { _ = serve.Process.Kill() }) // hang guard: a server that starts
	outb, err := serve.CombinedOutput()
	guard.Stop()
	out := string(outb)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "kms serve: %s", out)
	require.Equal(t, 1, ee.ExitCode(), "%s", out)
	assert.Contains(t, out, fmt.Sprintf("crkvol: kms serve: %s is attached by process %d with the embedded key service: its attach process follows the key by reading %s, which kms serve would hold\n",
		img, a.cmd.Process.Pid, filepath.Join(e.dir, "state", "crk.db")), out)
	assert.Contains(t, out, "crkvol: hint: detach it (crkvol volume detach "+img+"), start kms serve, then attach it again with --kms-url\n", out)
	select {
	case <-a.exited:
		t.Fatalf("the attach process ended: %s", a.stderr.String())
	default:
	}
	e.run("volume", "detach", "a.img")
	<-a.exited

	// Through kms serve, the attach process does not read crk.db: its record does not block.
	var insts []map[string]any
	require.NoError(t, json.Unmarshal([]byte(e.run("--json", "kms", "instance", "list")), &insts))
	inst, _ := insts[0]["id"].(string)
	srv := serveKMS(t, e, "127.0.0.1:0", "tok")
	e.extra = []string{"CRKVOL_KMS_URL=" + srv.url, "CRKVOL_KMS_INSTANCE=" + inst, "CRKVOL_KMS_TOKEN=tok"}
	e.attach("a.img", sock)
	srv.stop(t)
	e.extra = nil
	serveKMS(t, e, "127.0.0.1:0", "tok")
}

// TestAttachWaitsForHeldStore: with crk.db locked by another command, volume attach's first
// read of the lifecycle feed waits for it as long as other commands do (5 s): a lock held
// 2.5 s (longer than the feed's own 2 s) only delays the attach; in the long run, a lock held
// beyond the 5 s fails it with the hint other commands give.
func TestAttachWaitsForHeldStore(t *testing.T) {
	t.Parallel()
	e := &lockoutEnv{t: t, dir: t.TempDir(), now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	key := jsonField(t, e.run("--json", "key", "create", "held"), "id")
	e.run("volume", "create", "a.img", "--size", "4MiB", "--key", key)
	hold := func() (release func()) {
		f, err := os.OpenFile(filepath.Join(e.dir, "state", "crk.db"), os.O_RDWR, 0)
		require.NoError(t, err)
		require.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX)) // as a writer's bbolt does
		return func() { f.Close() }
	}
	release := hold()
	time.AfterFunc(2500*time.Millisecond, release)
	sock := filepath.Join(e.dir, "a.sock")
	a := e.attach("a.img", sock)
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGTERM))
	<-a.exited
	require.NoError(t, a.err, a.stderr.String())

	if !tooltest.Long() {
		t.Logf("the 5 s timeout: set %s=1", tooltest.LongEnv)
		return
	}
	release = hold()
	defer release()
	out := e.fail("volume", "attach", "a.img", "--listen", "unix:"+sock)
	assert.Contains(t, out, "crkvol: volume attach: reading the head of the key's lifecycle feed: the key store "+
		filepath.Join(e.dir, "state", "crk.db")+" is held by another crkvol process (kms serve?): timeout\n", out)
	assert.Contains(t, out, "crkvol: hint: if kms serve is running on this state directory, use it with --kms-url URL; otherwise try again once the other command has finished\n", out)
}

// TestKeyLockWords: a lockout reads the same whether the feed's event or a check of the
// key's state found it (whichever comes first is a race the user must not see).
func TestKeyLockWords(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		lock keyLock
		want string
	}{
		{keyLock{keyID: "k", state: volume.KeyStateSuspended, event: volume.KeyDisabled}, "key k is suspended (disabled): stopped serving v.img"},
		{keyLock{keyID: "k", state: volume.KeyStateSuspended}, "key k is suspended (disabled): stopped serving v.img"},
		{keyLock{keyID: "k", state: volume.KeyStateDestroyed, event: volume.KeyDeleted}, "key k is destroyed (deleted): stopped serving v.img"},
		{keyLock{keyID: "k", state: volume.KeyStateDestroyed}, "key k is destroyed (deleted): stopped serving v.img"},
		{keyLock{keyID: "k", state: volume.KeyStateDestroyed, event: volume.KeyPurged}, "key k is destroyed (purged): stopped serving v.img"},
		{keyLock{keyID: "k", state: volume.KeyStateDeactivated}, "key k is deactivated: stopped serving v.img"},
	} {
		assert.Equal(t, tc.want, tc.lock.err("v.img").Error())
	}
}
