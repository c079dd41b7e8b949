package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"crkvol/agent"
	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// testHost is a Host over a real in-process key service, registry and Manager; it records
// lockouts and unlocks (an attach process is the CLI's business) and the cursor in memory.
type testHost struct {
	mgr *volume.Manager
	reg *volume.Registry
	ks  *kms.Local

	mu        sync.Mutex
	cursor    string
	lockouts  []string // key/state
	unlocks   []string
	failNext  int // Rewrap calls that fail before acting, as an unreachable service would
	rewrapped int
	attached  int   // what Lockout answers as Stopped: the attach processes it told
	lockErr   error // what Lockout fails with
}

func (h *testHost) Keys(ctx context.Context) ([]string, error) {
	es, err := h.reg.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		if !slices.Contains(out, e.KeyID) {
			out = append(out, e.KeyID)
		}
	}
	return out, nil
}

func (h *testHost) KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	return h.ks.KeyState(ctx, keyID)
}

func (h *testHost) Rewrap(ctx context.Context, keyID string) (*volume.Report, error) {
	h.mu.Lock()
	if h.failNext > 0 {
		h.failNext--
		h.mu.Unlock()
		return nil, errors.New("key service unreachable")
	}
	h.mu.Unlock()
	rep, err := h.mgr.Sync(ctx, keyID)
	if err == nil {
		h.mu.Lock()
		h.rewrapped += rep.Rewrapped
		h.mu.Unlock()
	}
	return rep, err
}

func (h *testHost) Lockout(ctx context.Context, keyID, state string) (agent.LockoutResult, error) {
	es, err := h.reg.List()
	if err != nil {
		return agent.LockoutResult{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lockErr != nil {
		return agent.LockoutResult{}, h.lockErr
	}
	h.lockouts = append(h.lockouts, keyID+"/"+state)
	res := agent.LockoutResult{Stopped: h.attached}
	for _, e := range es {
		if e.KeyID == keyID {
			res.Volumes++
		}
	}
	return res, nil
}

func (h *testHost) Unlock(ctx context.Context, keyID string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unlocks = append(h.unlocks, keyID)
	return nil
}

func (h *testHost) LoadCursor() (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cursor, nil
}

func (h *testHost) SaveCursor(c string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cursor = c
	return nil
}

func (h *testHost) snapshot() (lockouts, unlocks []string, cursor string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.lockouts), slices.Clone(h.unlocks), h.cursor
}

type fixture struct {
	svc   *crk.Service
	clock *crk.ManualClock
	host  *testHost
	dir   string
	ctx   context.Context
	key   string
	other string
	vols  []string
}

func newFixture(t *testing.T, volumes int) *fixture {
	t.Helper()
	dir := t.TempDir()
	clock := crk.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	svc, err := crk.Open(filepath.Join(dir, "crk.db"), crk.Options{Clock: clock, NoSync: true})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
	require.NoError(t, err)
	t.Cleanup(func() { reg.Close() })
	ks := kms.NewLocal(svc)
	mgr := volume.NewManager(ks, reg, volume.Options{Now: clock.Now})
	ctx := context.Background()
	k, err := svc.CreateRootKey(ctx, "host-key")
	require.NoError(t, err)
	other, err := svc.CreateRootKey(ctx, "other-host-key")
	require.NoError(t, err)
	f := &fixture{svc: svc, clock: clock, dir: dir, ctx: ctx, key: k.ID, other: other.ID,
		host: &testHost{mgr: mgr, reg: reg, ks: ks}}
	for i := range volumes {
		p := filepath.Join(dir, fmt.Sprintf("v%d.img", i))
		_, err := mgr.Create(ctx, p, volume.CreateOptions{KeyID: k.ID, Size: 1 << 20, SectorSize: 512,
			MetadataSize: 16 << 10, KeyslotsSize: 256 << 10, AllowKeyDeletion: true})
		require.NoError(t, err)
		f.vols = append(f.vols, p)
	}
	// Another host's volume: registered with the other key, not in this host's registry.
	_, err = svc.Register(ctx, other.ID, "crn:v1:bluemix:public:is:us-south:a/crkvol::volume:r006-00000000-0000-4000-8000-0000000000aa", crk.RegisterOptions{})
	require.NoError(t, err)
	// Only the agent rewraps: no in-process rotation hook.
	mgr.Close()
	return f
}

// versions returns the key version of every volume's token.
func (f *fixture) versions(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, p := range f.vols {
		info, err := volume.Describe(p)
		require.NoError(t, err)
		out = append(out, info.KeyVersion)
	}
	return out
}

func (f *fixture) latest(t *testing.T) string {
	t.Helper()
	st, err := f.host.ks.KeyState(f.ctx, f.key)
	require.NoError(t, err)
	return st.LatestVersion
}

func (f *fixture) allOn(t *testing.T, v string) bool {
	for _, got := range f.versions(t) {
		if got != v {
			return false
		}
	}
	return true
}

// eventually polls cond every 10 ms, failing after a generous hang guard.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func start(t *testing.T, f *fixture, opts agent.Options) (*agent.Agent, func()) {
	t.Helper()
	opts.Feed, opts.Host = f.host.ks, f.host
	if opts.Wait == 0 {
		opts.Wait = 50 * time.Millisecond
	}
	if opts.Backoff == nil {
		opts.Backoff = func(int) time.Duration { return 10 * time.Millisecond }
	}
	a, err := agent.New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return a, func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("agent did not stop")
		}
	}
}

func TestAgentRespondsToEveryLifecycleEvent(t *testing.T) {
	f := newFixture(t, 3)
	a, stop := start(t, f, agent.Options{})
	defer stop()
	eventually(t, "the first reconciliation", func() bool { return a.Status().Reconciles == 1 })

	_, err := f.svc.RotateKey(f.ctx, f.key, nil)
	require.NoError(t, err)
	v2 := f.latest(t)
	eventually(t, "every volume on the new version", func() bool { return f.allOn(t, v2) })
	eventually(t, "every registration on the new version", func() bool {
		regs, err := f.svc.ListRegistrations(f.ctx, crk.RegistrationFilter{KeyID: f.key})
		require.NoError(t, err)
		for _, r := range regs {
			if r.KeyVersion.ID != v2 {
				return false
			}
		}
		return len(regs) == 3
	})

	_, err = f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	eventually(t, "a lockout", func() bool { l, _, _ := f.host.snapshot(); return len(l) == 1 })
	f.clock.Advance(time.Minute)
	_, err = f.svc.EnableKey(f.ctx, f.key)
	require.NoError(t, err)
	eventually(t, "an unlock", func() bool { _, u, _ := f.host.snapshot(); return len(u) == 1 })

	// The other host's key: events, no response here.
	_, err = f.svc.DisableKey(f.ctx, f.other)
	require.NoError(t, err)
	_, err = f.svc.DeleteKey(f.ctx, f.key, crk.DeleteOptions{Force: true})
	require.NoError(t, err)
	eventually(t, "the delete's lockout", func() bool { l, _, _ := f.host.snapshot(); return len(l) == 2 })
	lockouts, unlocks, cursor := f.host.snapshot()
	require.Equal(t, []string{f.key + "/suspended", f.key + "/destroyed"}, lockouts)
	require.Equal(t, []string{f.key}, unlocks)
	head, err := f.svc.Lifecycle(f.ctx, "", 0)
	require.NoError(t, err)
	eventually(t, "the cursor at the head", func() bool { _, _, c := f.host.snapshot(); return c == head.Cursor })
	_ = cursor
	st := a.Status()
	require.Equal(t, head.Cursor, st.Cursor)
	require.Equal(t, 5, st.Events)
	require.Equal(t, 2, st.Lockouts)
	require.Empty(t, st.FeedError)
}

func TestAgentCatchesUpAfterDowntimeAndRetriesAFailedHost(t *testing.T) {
	f := newFixture(t, 2)
	a, stop := start(t, f, agent.Options{})
	eventually(t, "the first reconciliation", func() bool { return a.Status().Reconciles == 1 })
	stop()
	_, _, saved := f.host.snapshot()
	require.NotEmpty(t, saved)

	// While the agent is down: a rotation. Its first rewrap attempt after the restart fails
	// before acting; the event is handled on a retry, not skipped.
	_, err := f.svc.RotateKey(f.ctx, f.key, nil)
	require.NoError(t, err)
	v2 := f.latest(t)
	require.False(t, f.allOn(t, v2))
	f.host.mu.Lock()
	f.host.failNext = 2 // the start's reconciliation, then the event's first attempt
	f.host.mu.Unlock()
	a, stop = start(t, f, agent.Options{})
	defer stop()
	eventually(t, "every volume on the new version", func() bool { return f.allOn(t, v2) })
	require.NotEmpty(t, a.Status().ReconcileError, "the failed reconciliation is reported")
}

func TestAgentResyncsFromTheHead(t *testing.T) {
	f := newFixture(t, 2)
	require.NoError(t, f.host.SaveCursor("999")) // ahead of the feed: another store's
	_, err := f.svc.RotateKey(f.ctx, f.key, nil)
	require.NoError(t, err)
	v2 := f.latest(t)
	a, stop := start(t, f, agent.Options{})
	defer stop()
	eventually(t, "every volume on the new version", func() bool { return f.allOn(t, v2) })
	head, err := f.svc.Lifecycle(f.ctx, "", 0)
	require.NoError(t, err)
	eventually(t, "the cursor at the head", func() bool { _, _, c := f.host.snapshot(); return c == head.Cursor })
	require.GreaterOrEqual(t, a.Status().Reconciles, 1)
}

func TestReconcileLocksOutAKeyOutOfUse(t *testing.T) {
	f := newFixture(t, 1)
	_, err := f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	a, err := agent.New(agent.Options{Feed: f.host.ks, Host: f.host})
	require.NoError(t, err)
	require.NoError(t, a.Reconcile(f.ctx))
	lockouts, _, _ := f.host.snapshot()
	require.Equal(t, []string{f.key + "/suspended"}, lockouts)
}

func TestAgentRunsDuePolicyRotationsWhenAsked(t *testing.T) {
	f := newFixture(t, 2)
	_, err := f.svc.SetRotationPolicy(f.ctx, f.key, 1, true)
	require.NoError(t, err)
	f.clock.Advance(32 * 24 * time.Hour)
	calls := 0
	var mu sync.Mutex
	_, stop := start(t, f, agent.Options{RunDue: func(ctx context.Context) (time.Time, bool, error) {
		if _, err := f.svc.RunDue(ctx); err != nil {
			return time.Time{}, false, err
		}
		// Counted once the due work is done: the first call rotates (the policy is overdue).
		mu.Lock()
		calls++
		mu.Unlock()
		return f.svc.NextDue(ctx)
	}})
	defer stop()
	eventually(t, "the policy rotation and its rewraps", func() bool {
		mu.Lock()
		ran := calls > 0
		mu.Unlock()
		return ran && f.allOn(t, f.latest(t)) && f.versions(t)[0] != ""
	})
	page, err := f.svc.Lifecycle(f.ctx, "0", 0)
	require.NoError(t, err)
	require.Len(t, page.Events, 1)
	require.True(t, page.Events[0].Policy)
}

func TestNewRequiresFeedAndHost(t *testing.T) {
	_, err := agent.New(agent.Options{})
	require.Error(t, err)
}

// A page that failed is retried: its events count once, when it is handled.
func TestApplyCountsEventsOnlyWhenHandled(t *testing.T) {
	f := newFixture(t, 1)
	a, err := agent.New(agent.Options{Feed: f.host.ks, Host: f.host})
	require.NoError(t, err)
	page := []volume.KeyEvent{{Cursor: "1", Type: volume.KeyDisabled, KeyID: f.key, State: volume.KeyStateSuspended},
		{Cursor: "2", Type: volume.KeyRotated, KeyID: f.other, State: volume.KeyStateActive}}
	f.host.lockErr = errors.New("attach records unreadable")
	for range 3 {
		require.Error(t, a.Apply(f.ctx, page))
	}
	require.Zero(t, a.Status().Events)
	f.host.lockErr = nil
	require.NoError(t, a.Apply(f.ctx, page))
	require.Equal(t, 2, a.Status().Events)
}

// A key that stays out of use is locked out at every reconciliation; only the first lockout
// (or one that told attach processes to stop) is news: counted and logged as a warning.
func TestLockoutIsNewsOnlyOnce(t *testing.T) {
	f := newFixture(t, 1)
	_, err := f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	var log bytes.Buffer
	a, err := agent.New(agent.Options{Feed: f.host.ks, Host: f.host, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, a.Reconcile(f.ctx))
	}
	require.Equal(t, 1, a.Status().Lockouts)
	require.Equal(t, 1, strings.Count(log.String(), "level=WARN"), log.String())

	// An attach process told to stop is news again.
	f.host.attached = 1
	require.NoError(t, a.Reconcile(f.ctx))
	require.Equal(t, 2, a.Status().Lockouts)
	f.host.attached = 0
	// Usable again, then out of use again: news.
	f.clock.Advance(time.Minute)
	_, err = f.svc.EnableKey(f.ctx, f.key)
	require.NoError(t, err)
	require.NoError(t, a.Reconcile(f.ctx))
	f.clock.Advance(time.Minute)
	_, err = f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	require.NoError(t, a.Reconcile(f.ctx))
	require.NoError(t, a.Reconcile(f.ctx))
	require.Equal(t, 3, a.Status().Lockouts)
	require.Equal(t, 3, strings.Count(log.String(), "level=WARN"), log.String())
}
