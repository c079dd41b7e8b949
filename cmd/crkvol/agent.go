package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"crkvol/agent"
	"crkvol/crk"
	"crkvol/internal/fsutil"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// The agent keeps its files in <state>/agent/: the lock that makes it the one agent of the
// state directory (holding its process id), the saved feed cursor and the status socket.
const (
	agentDirName    = "agent"
	agentLockName   = "lock"
	agentCursorName = "cursor"
	agentSockName   = "agent.sock"
)

func (a *app) agentCommand() *cobra.Command {
	var reconcileEvery, wait time.Duration
	var logFormat, host string
	cmd := &cobra.Command{Use: "agent", Short: "Follow the key service's lifecycle events for this host's volumes, in the foreground",
		Long: `agent is the long-running process of a storage host. It follows the lifecycle feed of the key
service (the embedded one of the state directory, or the --kms-url service) for the root keys
of the volumes registered in the state directory and of the images in its catalog, and
responds to each event:
  rotate, sync             rewraps the host's volumes of the key, and the WDEKs of its
                           catalog images, to its latest version;
  disable, delete, purge   sends SIGUSR1 to every attach process of this state directory
                           serving a volume of the key, which makes it check its key at once
                           and stop serving;
  enable, restore          logs it (the key service itself lets the volumes attach again) and
                           rewraps what lagged meanwhile.
After each lockout, unlock and rewrap pass it acknowledges to the key service what it did,
under the host name --host (default the machine's host name), so that the service shows
which hosts confirmed a lockout; a failed acknowledgement is logged and made again at the next
reconciliation, and never delays a lockout.
It records the cursor of the last event it handled in <state>/agent/cursor, so that a restarted
agent handles every event it missed. At start, when the feed asks for a resync, and every
--reconcile-every, it compares every key of the host's volumes and images with its state and latest
version, and fixes what lags. With the embedded key service it also runs the policy
rotations that come due on the service clock (--now), with their rewraps.

It never holds the key store or the volume registry open between actions: other crkvol
commands run on the host meanwhile. One agent runs per state directory. It logs to stderr
(--log-format text or json), serves its status on the unix socket <state>/agent/agent.sock
(see crkvol agent status), and stops at a clean point on SIGINT or SIGTERM.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			if reconcileEvery <= 0 {
				return usagef("--reconcile-every %s: want a positive duration", reconcileEvery)
			}
			if wait <= 0 {
				return usagef("--wait %s: want a positive duration", wait)
			}
			if a.asJSON && !cmd.Flags().Changed("log-format") {
				logFormat = "json"
			}
			if logFormat != "text" && logFormat != "json" {
				return usagef("--log-format %q: want text or json", logFormat)
			}
			if !cmd.Flags().Changed("host") {
				name, err := os.Hostname()
				if err != nil {
					return usagef("the machine's host name: %v; give one with --host", err)
				}
				host = name
			}
			if err := crk.CheckHostName(host); err != nil {
				why := strings.TrimPrefix(err.Error(), crk.ErrInvalidArgument.Error()+": ")
				if !cmd.Flags().Changed("host") {
					return usagef("the machine's host name cannot name this host: %s; give one with --host", why)
				}
				return usagef("--host: %s", why)
			}
			return a.runAgent(cmd.Context(), agentRun{reconcileEvery: reconcileEvery, wait: wait, logFormat: logFormat, host: host})
		}}
	cmd.Flags().DurationVar(&reconcileEvery, "reconcile-every", 10*time.Minute, "time between reconciliations of every key of the host's volumes")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long one poll of the lifecycle feed waits for an event")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "log format on stderr: text or json (json with --json)")
	cmd.Flags().StringVar(&host, "host", "", "the name the agent acknowledges its lockouts, unlocks and rewraps under (default the machine's host name)")

	status := &cobra.Command{Use: "status", Short: "Show the running agent's cursor, lag and last reconciliation", Args: args(cobra.NoArgs),
		Long: `status asks the agent of the state directory for its status over its socket
<state>/agent/agent.sock: the feed cursor up to which it handled every event, the events
handled and the responses (rewrap passes over a key's volumes, for events and reconciliations
alike; lockouts that were new; unlocks), the lag of the last event (from the event to the end
of its handling), the last poll of the feed (while the feed fails: its error and how long it
has not answered), the last reconciliation, the host name it acknowledges under and the
acknowledgements it made to the key service (recorded, failed, the last failure). When no agent runs it says
so, shows the cursor the last agent saved, and exits 1.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runAgentStatus(cmd.Context())
		}}
	cmd.AddCommand(status)
	return cmd
}

// agentRun is what `crkvol agent` was asked for.
type agentRun struct {
	reconcileEvery, wait time.Duration
	logFormat, host      string
}

// runAgent runs the agent of the state directory until ctx ends.
func (a *app) runAgent(ctx context.Context, run agentRun) error {
	reconcileEvery, wait, logFormat := run.reconcileEvery, run.wait, run.logFormat
	dir, agentDir, err := a.agentDirs(true)
	if err != nil {
		return err
	}
	unlock, err := lockAgent(agentDir, dir)
	if err != nil {
		return err
	}
	defer unlock()
	var handler slog.Handler = slog.NewTextHandler(a.stderr, nil)
	if logFormat == "json" {
		handler = slog.NewJSONHandler(a.stderr, nil)
	}
	log := slog.New(handler)
	clock, err := a.clock()
	if err != nil {
		return err
	}
	a.background = true
	h := &cliHost{a: a, dir: dir, agentDir: agentDir, now: clock.Now, log: log, host: run.host}

	// The status socket first: from the moment the lock is held, agent status gets an answer
	// (a starting agent's, until the agent runs).
	type runningAgent struct {
		ag       *agent.Agent
		view     RunningAgent
		instance string
	}
	var running atomic.Pointer[runningAgent]
	stopStatus, err := serveAgentStatus(filepath.Join(agentDir, agentSockName), func() agentStatusView {
		if r := running.Load(); r != nil {
			return runningView(dir, r.instance, r.view, r.ag.Status())
		}
		return runningView(dir, "", RunningAgent{PID: os.Getpid(), Starting: true, Host: run.host}, agent.Status{})
	}, log)
	if err != nil {
		return err
	}
	defer stopStatus()

	// One open to learn the key service's instance and, with --kms-url, to make the client
	// that follows the feed; everything else opens and closes per action.
	if err := a.open(ctx); err != nil {
		return err
	}
	var feed volume.KeyFeed
	var mode, service, instance string
	if a.remote != nil {
		feed, mode, service = a.remote, "remote", a.remoteURL()
		instance = a.kmsInst
		if instance == "" {
			instance = a.getenv("CRKVOL_KMS_INSTANCE")
		}
	} else {
		feed = &kms.StoreFeed{Path: filepath.Join(dir, "crk.db")}
		mode, service, instance = "embedded", "embedded", a.svc.Instance()
	}
	a.close()

	opts := agent.Options{Feed: feed, Host: h, Wait: wait, ReconcileEvery: reconcileEvery, Now: clock.Now, Logger: log,
		Acker: h, HostName: run.host}
	if mode == "embedded" {
		opts.RunDue = h.runDue
	}
	ag, err := agent.New(opts)
	if err != nil {
		return err
	}
	h.instance = instance
	running.Store(&runningAgent{ag: ag, view: RunningAgent{PID: os.Getpid(), Mode: mode, KeyService: service, Host: run.host}, instance: instance})
	log.Info("agent: started", "pid", os.Getpid(), "state", dir, "mode", mode, "key_service", service,
		"instance", instance, "host", run.host, "reconcile_every", reconcileEvery.String(), "wait", wait.String())
	if err := ag.Run(ctx); err != nil {
		return err
	}
	log.Info("agent: stopped", "cursor", ag.Status().Cursor)
	return nil
}

// agentDirs returns the absolute state directory and its agent directory, made if create.
func (a *app) agentDirs(create bool) (dir, agentDir string, err error) {
	dir, err = a.stateDirectory()
	if err != nil {
		return "", "", err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return "", "", err
	}
	if create {
		if agentDir, err = privateSubdir(dir, agentDirName); err != nil {
			return "", "", err
		}
		return dir, agentDir, nil
	}
	agentDir = filepath.Join(dir, agentDirName)
	if err := fsutil.CheckPrivate(agentDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("state directory: %w", err)
	}
	return dir, agentDir, nil
}

// lockAgent takes the agent lock of the state directory dir (an exclusive flock on
// <state>/agent/lock, released when the process ends, however it ends) and writes this
// process's id into it. A lock held already is an error naming the agent that holds it.
func lockAgent(agentDir, dir string) (unlock func(), err error) {
	path := filepath.Join(agentDir, agentLockName)
	// Never through a link: the file is truncated and written.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, withHint(fmt.Errorf("another agent (process %s) runs on state directory %s", lockHolder(path), dir),
				"one agent runs per state directory; see crkvol agent status, or stop that one first")
		}
		return nil, fmt.Errorf("agent lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("agent lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// lockHolder returns the process id written in the agent lock file, or "unknown".
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
		return strconv.Itoa(pid)
	}
	return "unknown"
}

// agentLocked reports whether an agent holds the lock of agentDir.
func agentLocked(agentDir string) bool {
	f, err := os.Open(filepath.Join(agentDir, agentLockName))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	return false
}

// cliHost is the agent's host over a state directory: each action opens the key service, the
// registry and the volume manager and closes them after, so that every other crkvol command
// on the host can use them between actions.
type cliHost struct {
	a        *app
	dir      string
	agentDir string
	instance string // the key service instance: a cursor of another instance is not used
	now      func() time.Time
	log      *slog.Logger
	host     string // the name it acknowledges under
}

// with runs fn with the app open (without its due rotations: the agent runs those through
// runDue), and closes it after.
func (h *cliHost) with(ctx context.Context, fn func() error) error {
	if err := h.a.open(ctx); err != nil {
		return err
	}
	defer func() {
		h.a.close()
		h.a.reports = nil
	}()
	return fn()
}

// keyService is the open app's key service.
func (h *cliHost) keyService() volume.KeyService {
	if h.a.svc != nil {
		return kms.NewLocal(h.a.svc)
	}
	return h.a.remote
}

// AckKeyEvent implements volume.KeyAcker for the agent: the acknowledgement goes to the
// state directory's key service (opened for the call, as for every action) or the
// --kms-url service.
func (h *cliHost) AckKeyEvent(ctx context.Context, ka volume.KeyAck) error {
	return h.with(ctx, func() error {
		if h.a.svc != nil {
			return kms.NewLocal(h.a.svc).AckKeyEvent(ctx, ka)
		}
		return h.a.remote.AckKeyEvent(ctx, ka)
	})
}

// Keys implements agent.Host: the distinct key ids of the registry's volumes and of the
// image catalog's images (a rotation of a key only images use rewraps their WDEKs).
func (h *cliHost) Keys(ctx context.Context) ([]string, error) {
	var keys []string
	err := h.with(ctx, func() error {
		es, err := h.a.reg.List()
		if err != nil {
			return err
		}
		for _, e := range es {
			if !slices.Contains(keys, e.KeyID) {
				keys = append(keys, e.KeyID)
			}
		}
		imgs, err := h.a.reg.Images()
		if err != nil {
			return err
		}
		for _, e := range imgs {
			if !slices.Contains(keys, e.KeyID) {
				keys = append(keys, e.KeyID)
			}
		}
		return nil
	})
	slices.Sort(keys)
	return keys, err
}

// KeyState implements agent.Host.
func (h *cliHost) KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	var st volume.KeyStatus
	err := h.with(ctx, func() (err error) {
		st, err = h.keyService().KeyState(ctx, keyID)
		return err
	})
	return st, err
}

// Rewrap implements agent.Host with the Manager's Sync. A pass stopped by the end of ctx is
// an error, so that the agent does not count its event handled.
func (h *cliHost) Rewrap(ctx context.Context, keyID string) (*volume.Report, error) {
	var rep *volume.Report
	err := h.with(ctx, func() (err error) {
		defer h.a.passProcs()() // a pass is flush-bound (see flushProcs)
		rep, err = h.a.mgr.Sync(ctx, keyID)
		return err
	})
	if err == nil && ctx.Err() != nil {
		return nil, fmt.Errorf("rewrap of the volumes of key %s stopped: %w", keyID, ctx.Err())
	}
	return rep, err
}

// Lockout implements agent.Host: every live attach process of this state directory serving a
// volume of keyID gets SIGUSR1, which tells it to check its key's state at once (and to stop
// serving when the key is out of use). The volume's key is read from its image's header.
// Every registered volume of keyID is locked out: one not attached cannot attach while the
// key is out of use (the key service refuses its unwrap), and an attach process that saw the
// key's state first has stopped by itself; Stopped counts the processes signalled. Images
// counts the catalog's images of keyID, which no volume can be created from meanwhile.
func (h *cliHost) Lockout(ctx context.Context, keyID, state string) (agent.LockoutResult, error) {
	var res agent.LockoutResult
	err := h.with(ctx, func() error {
		es, err := h.a.reg.List()
		if err != nil {
			return err
		}
		for _, e := range es {
			if e.KeyID == keyID {
				res.Volumes++
			}
		}
		imgs, err := h.a.reg.Images()
		if err != nil {
			return err
		}
		for _, e := range imgs {
			if e.KeyID == keyID {
				res.Images++
			}
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("listing the registered volumes and images of key %s: %w", keyID, err)
	}
	recs, err := filepath.Glob(filepath.Join(h.dir, "attached", "*.json"))
	if err != nil {
		return res, err
	}
	n := 0
	var errs []error
	for _, path := range recs {
		rec := readRecord(path)
		if rec == nil || !alive(rec) {
			continue
		}
		info, err := volume.Describe(rec.Image)
		if err != nil {
			// Its key is unknown (the image moved, or cannot be read): not a reason to fail
			// the lockout of the key's other volumes. It is told to check its own key all
			// the same, which costs one key check if it serves another key's volume.
			h.log.Warn("agent: cannot read the image of an attach process; telling it to check its key anyway",
				"key", keyID, "pid", rec.PID, "image", rec.Image, "err", err)
			if err := syscall.Kill(rec.PID, syscall.SIGUSR1); err != nil && !errors.Is(err, syscall.ESRCH) {
				h.log.Warn("agent: signalling an attach process failed", "pid", rec.PID, "image", rec.Image, "err", err)
			}
			continue
		}
		if info.KeyID != keyID {
			continue
		}
		if err := syscall.Kill(rec.PID, syscall.SIGUSR1); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				continue // it ended meanwhile
			}
			errs = append(errs, fmt.Errorf("signalling attach process %d of %s: %w", rec.PID, rec.Image, err))
			continue
		}
		h.log.Info("agent: told an attach process to check its key", "key", keyID, "state", state, "pid", rec.PID, "image", rec.Image)
		n++
	}
	res.Stopped = n
	return res, errors.Join(errs...)
}

// Unlock implements agent.Host. There is nothing to do on the host: the key service itself
// lets the key's volumes attach again once the key is usable.
func (h *cliHost) Unlock(ctx context.Context, keyID string) error {
	h.log.Debug("agent: nothing to do on this host to unlock a key: the key service allows its attaches again", "key", keyID)
	return nil
}

// savedCursor is the content of <state>/agent/cursor.
type savedCursor struct {
	Cursor   string   `json:"cursor"`
	Instance string   `json:"instance"`
	Saved    jsonTime `json:"saved,omitzero"`
}

// readSavedCursor reads the cursor file of agentDir; ok is false when there is none.
func readSavedCursor(agentDir string) (c savedCursor, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(agentDir, agentCursorName))
	if errors.Is(err, os.ErrNotExist) {
		return savedCursor{}, false, nil
	}
	if err != nil {
		return savedCursor{}, false, err
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Cursor == "" {
		return savedCursor{}, false, fmt.Errorf("%s: not a saved cursor", filepath.Join(agentDir, agentCursorName))
	}
	return c, true, nil
}

// LoadCursor implements agent.Host. A cursor of another key service instance, or a file that
// cannot be read, is not used: the agent starts from the feed's head and reconciles.
func (h *cliHost) LoadCursor() (string, error) {
	c, ok, err := readSavedCursor(h.agentDir)
	switch {
	case err != nil:
		h.log.Warn("agent: the saved cursor cannot be used; starting from the feed's head, after a reconciliation", "err", err)
		return "", nil
	case !ok:
		return "", nil
	case c.Instance != h.instance:
		h.log.Warn("agent: the saved cursor is of another key service instance; starting from the feed's head, after a reconciliation",
			"saved_instance", c.Instance, "instance", h.instance)
		return "", nil
	}
	return c.Cursor, nil
}

// SaveCursor implements agent.Host: the cursor and the instance, written atomically (a
// temporary file, synced, renamed, the directory synced), mode 0600.
func (h *cliHost) SaveCursor(cursor string) error {
	b, err := json.Marshal(savedCursor{Cursor: cursor, Instance: h.instance, Saved: jsonTime{h.now()}})
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(h.agentDir, agentCursorName), append(b, '\n'))
}

// runDue runs the embedded key service's due policy rotations (and expiries) on the service
// clock, their rewraps with them, and returns when the next is due (agent.Options.RunDue).
func (h *cliHost) runDue(ctx context.Context) (next time.Time, ok bool, err error) {
	err = h.with(ctx, func() error {
		restore := h.a.passProcs() // a due rotation rewraps the key's volumes
		res, err := h.a.svc.RunDue(ctx)
		restore()
		if err != nil {
			return fmt.Errorf("running due rotations: %w", err)
		}
		for _, id := range res.Rotated {
			h.log.Info("agent: rotation policy rotated key", "key", id)
		}
		for _, id := range res.Expired {
			h.log.Info("agent: key expired", "key", id)
		}
		for id, err := range res.Failed {
			h.log.Warn("agent: a due policy rotation failed", "key", id, "err", err)
		}
		for _, r := range h.a.reports {
			if len(r.Failed) > 0 {
				h.log.Warn("agent: some volumes were not rewrapped after the policy rotation; the next reconciliation retries them",
					"key", r.KeyID, "version", r.NewVersion, "failed", len(r.Failed), "err", r.Err())
			} else if r.Rewrapped > 0 {
				h.log.Info("agent: volumes rewrapped after the policy rotation", "key", r.KeyID, "version", r.NewVersion, "rewrapped", r.Rewrapped)
			}
		}
		next, ok, err = h.a.svc.NextDue(ctx)
		return err
	})
	return next, ok, err
}

// agentStatusView is what `agent status` shows: the running agent's status, or, when none
// runs, the cursor the last one saved.
type agentStatusView struct {
	Running  bool   `json:"running"`
	StateDir string `json:"stateDir"`
	// Cursor is the feed cursor up to which every event was handled (saved, when no agent
	// runs; absent if none was saved); Instance the key service instance it belongs to.
	Cursor   string `json:"cursor,omitempty"`
	Instance string `json:"instance,omitempty"`
	// CursorSaved is when the saved cursor was written (service clock), when no agent runs.
	CursorSaved   jsonTime `json:"cursorSaved,omitzero"`
	*RunningAgent `json:",omitempty"`
}

// RunningAgent is the part of the status only a running agent has.
type RunningAgent struct {
	PID int `json:"pid"`
	// Starting is true until the agent has opened the key service and follows its feed.
	Starting bool `json:"starting,omitempty"`
	// Mode is embedded or remote; KeyService the --kms-url, or "embedded".
	Mode       string `json:"mode"`
	KeyService string `json:"keyService"`
	// Host is the name the agent acknowledges under (--host).
	Host    string   `json:"host"`
	Started jsonTime `json:"started,omitzero"`
	Keys    int      `json:"keys"`
	Events  int      `json:"events"`
	// RewrapPasses counts the rewrap passes over a key's volumes, for events and
	// reconciliations alike.
	RewrapPasses int `json:"rewrapPasses"`
	Lockouts     int `json:"lockouts"`
	Unlocks      int `json:"unlocks"`
	// LastEvent is the service time of the last event handled; Lag how long after it the
	// agent finished handling it, in words and in seconds.
	LastEvent  jsonTime `json:"lastEvent,omitzero"`
	Lag        string   `json:"lag,omitempty"`
	LagSeconds float64  `json:"lagSeconds"`
	LastPoll   jsonTime `json:"lastPoll,omitzero"`
	FeedError  string   `json:"feedError,omitempty"`
	// FeedSilence is, while FeedError is set, how long ago the feed last answered (or the
	// agent started), in words and in seconds.
	FeedSilence        string   `json:"feedSilence,omitempty"`
	FeedSilenceSeconds float64  `json:"feedSilenceSeconds,omitempty"`
	LastReconcile      jsonTime `json:"lastReconcile,omitzero"`
	NextReconcile      jsonTime `json:"nextReconcile,omitzero"`
	Reconciles         int      `json:"reconciles"`
	ReconcileError     string   `json:"reconcileError,omitempty"`
	FailedVolumes      int      `json:"failedVolumes"`
	// Acks counts the acknowledgements the key service recorded, AckFailures those that
	// failed or were refused; AckError is the last failure, until an acknowledgement is
	// recorded.
	Acks        int    `json:"acks"`
	AckFailures int    `json:"ackFailures"`
	AckError    string `json:"ackError,omitempty"`
}

// runningView is a running agent's status view.
func runningView(dir, instance string, base RunningAgent, st agent.Status) agentStatusView {
	r := base
	r.Started, r.Keys, r.Events, r.RewrapPasses, r.Lockouts, r.Unlocks = jsonTime{st.Started}, st.Keys, st.Events, st.RewrapPasses, st.Lockouts, st.Unlocks
	r.LastEvent, r.LastPoll, r.FeedError = jsonTime{st.LastEvent}, jsonTime{st.LastPoll}, st.FeedError
	if st.FeedError != "" && st.FeedSilence > 0 {
		r.FeedSilence, r.FeedSilenceSeconds = humanLag(st.FeedSilence), st.FeedSilence.Seconds()
	}
	r.LastReconcile, r.NextReconcile, r.Reconciles, r.ReconcileError = jsonTime{st.LastReconcile}, jsonTime{st.NextReconcile}, st.Reconciles, st.ReconcileError
	r.FailedVolumes = st.FailedVolumes
	r.Acks, r.AckFailures, r.AckError = st.Acks, st.AckFailures, st.AckError
	if !st.LastEvent.IsZero() {
		r.Lag, r.LagSeconds = humanLag(st.Lag), st.Lag.Seconds()
	}
	return agentStatusView{Running: true, StateDir: dir, Cursor: st.Cursor, Instance: instance, RunningAgent: &r}
}

// humanLag shows a lag in a unit a person reads at a glance: milliseconds under a second,
// tenths of a second under a minute, whole seconds above.
func humanLag(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// serveAgentStatus serves the status as JSON over HTTP (GET /status) on the unix socket at
// path, mode 0600 in a 0700 directory: only the owner connects. The agent lock is held, so a
// socket file found there is a dead agent's and is replaced.
func serveAgentStatus(path string, status func() agentStatusView, log *slog.Logger) (stop func(), err error) {
	if len(path) > 107 {
		return nil, fmt.Errorf("status socket %s is %d bytes, more than the 107 the kernel allows; use a shorter state directory path", path, len(path))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing the stale status socket: %w", err)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() { _ = srv.Serve(l) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.Remove(path)
	}, nil
}

// errNoAgent is the failure of `agent status` when no agent runs.
var errNoAgent = errors.New("no agent runs")

// runAgentStatus prints the running agent's status, or the saved cursor when none runs.
func (a *app) runAgentStatus(ctx context.Context) error {
	dir, agentDir, err := a.agentDirs(false)
	if err != nil {
		return err
	}
	view, err := queryAgent(ctx, filepath.Join(agentDir, agentSockName))
	if err == nil {
		view.StateDir = dir
		if a.asJSON {
			return a.emit(view)
		}
		printAgentStatus(a.stdout, view)
		return nil
	}
	if agentLocked(agentDir) {
		return fmt.Errorf("an agent (process %s) runs on state directory %s, but its status socket does not answer: %w",
			lockHolder(filepath.Join(agentDir, agentLockName)), dir, err)
	}
	view = agentStatusView{StateDir: dir}
	c, ok, cerr := readSavedCursor(agentDir)
	if ok {
		view.Cursor, view.Instance, view.CursorSaved = c.Cursor, c.Instance, c.Saved
	}
	if a.asJSON {
		if err := a.emit(view); err != nil {
			return err
		}
	} else {
		printAgentStatus(a.stdout, view)
	}
	if cerr != nil {
		return fmt.Errorf("%w on state directory %s; its saved cursor: %w", errNoAgent, dir, cerr)
	}
	return withHint(fmt.Errorf("%w on state directory %s", errNoAgent, dir),
		"start one with crkvol agent (it runs in the foreground; see crkvol agent --help)")
}

// queryAgent asks the agent listening on the socket at path for its status.
func queryAgent(ctx context.Context, path string) (agentStatusView, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/status", nil)
	if err != nil {
		return agentStatusView{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return agentStatusView{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return agentStatusView{}, fmt.Errorf("status socket answered %s", resp.Status)
	}
	var v agentStatusView
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil {
		return agentStatusView{}, fmt.Errorf("status socket: %w", err)
	}
	if !v.Running || v.RunningAgent == nil {
		return agentStatusView{}, errors.New("status socket: not an agent's status")
	}
	return v, nil
}

// printAgentStatus prints the status as aligned lines.
func printAgentStatus(w io.Writer, v agentStatusView) {
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-16s %s\n", label+":", fmt.Sprintf(format, args...))
	}
	r := v.RunningAgent
	if r == nil {
		line("agent", "not running")
		line("state directory", "%s", v.StateDir)
		if v.Cursor == "" {
			line("saved cursor", "none")
			return
		}
		saved := ""
		if !v.CursorSaved.IsZero() {
			saved = ", saved " + rfc3339(v.CursorSaved.Time)
		}
		line("saved cursor", "%s (instance %s%s)", v.Cursor, v.Instance, saved)
		return
	}
	if r.Starting {
		line("agent", "running (process %d), starting", r.PID)
		line("state directory", "%s", v.StateDir)
		line("host", "%s", r.Host) // known from the start: its status socket may answer first
		return
	}
	line("agent", "running (process %d)", r.PID)
	line("state directory", "%s", v.StateDir)
	line("key service", "%s (instance %s)", r.KeyService, v.Instance)
	line("host", "%s", r.Host)
	line("cursor", "%s", v.Cursor)
	line("started", "%s", rfc3339(r.Started.Time))
	line("keys", "%d", r.Keys)
	line("events", "%d handled; %d rewrap passes, %d lockouts, %d unlocks", r.Events, r.RewrapPasses, r.Lockouts, r.Unlocks)
	if r.LastEvent.IsZero() {
		line("last event", "none yet")
	} else {
		line("last event", "%s", rfc3339(r.LastEvent.Time))
		line("lag", "%s", r.Lag)
	}
	if !r.LastPoll.IsZero() {
		line("last poll", "%s", rfc3339(r.LastPoll.Time))
	}
	if r.FeedError != "" {
		if r.FeedSilence != "" {
			line("feed error", "%s (no answer for %s)", r.FeedError, r.FeedSilence)
		} else {
			line("feed error", "%s", r.FeedError)
		}
	}
	if r.LastReconcile.IsZero() {
		line("last reconcile", "none yet")
	} else {
		line("last reconcile", "%s (%d so far; next %s)", rfc3339(r.LastReconcile.Time), r.Reconciles, rfc3339(r.NextReconcile.Time))
	}
	if r.ReconcileError != "" {
		line("reconcile error", "%s", r.ReconcileError)
	}
	line("failed volumes", "%d", r.FailedVolumes)
	line("acks", "%d recorded, %d failed", r.Acks, r.AckFailures)
	if r.AckError != "" {
		line("ack error", "%s", r.AckError)
	}
}
