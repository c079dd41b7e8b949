package agent_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"crkvol/agent"
	"crkvol/crk"
	"crkvol/volume"
)

// ackRecorder is a volume.KeyAcker that records what it is asked and passes it on to next,
// unless it was told to fail.
type ackRecorder struct {
	next volume.KeyAcker

	mu    sync.Mutex
	fail  int   // calls that fail with err before passing on
	err   error // what they fail with
	calls []volume.KeyAck
}

func (r *ackRecorder) AckKeyEvent(ctx context.Context, a volume.KeyAck) error {
	r.mu.Lock()
	r.calls = append(r.calls, a)
	if r.fail > 0 {
		r.fail--
		r.mu.Unlock()
		return r.err
	}
	r.mu.Unlock()
	return r.next.AckKeyEvent(ctx, a)
}

func (r *ackRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// hostAck returns host's acknowledgement of key as the key service keeps it, if any.
func (f *fixture) hostAck(t *testing.T, key, host string) (crk.HostAck, bool) {
	t.Helper()
	acks, err := f.svc.HostAcks(f.ctx, key)
	require.NoError(t, err)
	i := slices.IndexFunc(acks, func(a crk.HostAck) bool { return a.Host == host })
	if i < 0 {
		return crk.HostAck{}, false
	}
	return acks[i], true
}

// TestAgentAcknowledges: the agent acknowledges its first reconciliation (the volumes on the
// key's version), a disable with the suspended state, every volume of the key on the host
// (locked out whether an attach process was told to stop or had stopped by itself) and the
// attach processes it told to stop, and an enable with the active state, each event's with
// its feed cursor.
func TestAgentAcknowledges(t *testing.T) {
	f := newFixture(t, 2)
	f.host.attached = 0 // the attach processes saw the disable first and stopped by themselves
	a, stop := start(t, f, agent.Options{Acker: f.host.ks, HostName: "host-a.example"})
	defer stop()
	v1 := f.latest(t)
	eventually(t, "the reconciliation's acknowledgement", func() bool {
		ack, ok := f.hostAck(t, f.key, "host-a.example")
		return ok && ack.State == "active" && ack.Version == v1
	})
	ack, _ := f.hostAck(t, f.key, "host-a.example")
	require.Equal(t, crk.LifecycleSync, ack.Type)
	require.Equal(t, 2, ack.Volumes)
	require.Empty(t, ack.Cursor, "a reconciliation's")
	_, ok := f.hostAck(t, f.other, "host-a.example")
	require.False(t, ok, "no acknowledgement of another host's key")

	_, err := f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	page, err := f.svc.Lifecycle(f.ctx, "0", 0)
	require.NoError(t, err)
	disable := page.Events[len(page.Events)-1]
	eventually(t, "the disable's acknowledgement", func() bool {
		ack, _ := f.hostAck(t, f.key, "host-a.example")
		return ack.State == "suspended"
	})
	ack, _ = f.hostAck(t, f.key, "host-a.example")
	require.NotEmpty(t, ack.Reporter)
	require.Equal(t, crk.HostAck{Host: "host-a.example", KeyID: f.key, Type: crk.LifecycleDisable, State: "suspended",
		Volumes: 2, Stopped: 0, Cursor: disable.Cursor, Reporter: ack.Reporter, Time: ack.Time}, ack,
		"both volumes are locked out though no attach process was told to stop")
	meta, err := f.svc.GetKeyMetadata(f.ctx, f.key)
	require.NoError(t, err)
	require.False(t, ack.Time.Before(meta.LastStateChange), "the acknowledgement confirms the lockout")

	f.host.mu.Lock()
	f.host.attached = 0
	f.host.mu.Unlock()
	f.clock.Advance(time.Minute)
	_, err = f.svc.EnableKey(f.ctx, f.key)
	require.NoError(t, err)
	eventually(t, "the enable's acknowledgement", func() bool {
		ack, _ := f.hostAck(t, f.key, "host-a.example")
		return ack.State == "active" && ack.Type == crk.LifecycleEnable
	})
	ack, _ = f.hostAck(t, f.key, "host-a.example")
	require.Equal(t, v1, ack.Version)
	require.Equal(t, 2, ack.Volumes, "the volumes of the rewrap pass after the unlock")
	require.NotEmpty(t, ack.Cursor)
	st := a.Status()
	require.Equal(t, 3, st.Acks)
	require.Empty(t, st.AckError)
}

// TestAckFailureNeverBlocksLockout: an acknowledgement that fails leaves the lockout done and
// is made again at the next reconciliation; one made, a reconciliation with nothing new makes
// none; one refused is not made again until the key changes.
func TestAckFailureNeverBlocksLockout(t *testing.T) {
	f := newFixture(t, 1)
	rec := &ackRecorder{next: f.host.ks, fail: 1, err: fmt.Errorf("key service unreachable: %w", context.DeadlineExceeded)}
	a, err := agent.New(agent.Options{Feed: f.host.ks, Host: f.host, Acker: rec, HostName: "h1"})
	require.NoError(t, err)
	_, err = f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	page, err := f.svc.Lifecycle(f.ctx, "0", 0)
	require.NoError(t, err)
	require.NoError(t, a.Apply(f.ctx, []volume.KeyEvent{{Cursor: page.Events[0].Cursor, Type: volume.KeyDisabled,
		KeyID: f.key, State: volume.KeyStateSuspended}}), "a failed acknowledgement does not fail the page")
	lockouts, _, _ := f.host.snapshot()
	require.Equal(t, []string{f.key + "/suspended"}, lockouts)
	st := a.Status()
	require.Equal(t, 1, st.AckFailures)
	require.Contains(t, st.AckError, "unreachable")
	_, ok := f.hostAck(t, f.key, "h1")
	require.False(t, ok)

	require.NoError(t, a.Reconcile(f.ctx))
	ack, ok := f.hostAck(t, f.key, "h1")
	require.True(t, ok, "made again at the reconciliation")
	require.Equal(t, "suspended", ack.State)
	require.Equal(t, crk.LifecycleDisable, ack.Type)
	require.Empty(t, a.Status().AckError)
	n := rec.count()
	require.NoError(t, a.Reconcile(f.ctx))
	require.Equal(t, n, rec.count(), "nothing new: no acknowledgement")

	// Refused: settled until the key changes.
	rec.mu.Lock()
	rec.fail, rec.err = 5, fmt.Errorf("refused: %w", volume.ErrKeyRefused)
	rec.mu.Unlock()
	f.clock.Advance(time.Minute)
	_, err = f.svc.EnableKey(f.ctx, f.key)
	require.NoError(t, err)
	require.NoError(t, a.Reconcile(f.ctx))
	require.Equal(t, n+1, rec.count())
	require.NoError(t, a.Reconcile(f.ctx))
	require.Equal(t, n+1, rec.count(), "a refusal is not made again")
	require.Equal(t, 2, a.Status().AckFailures)
}

func TestNewRequiresHostNameWithAcker(t *testing.T) {
	f := newFixture(t, 0)
	_, err := agent.New(agent.Options{Feed: f.host.ks, Host: f.host, Acker: f.host.ks})
	require.Error(t, err)
	require.Contains(t, err.Error(), "host name")
	_, err = agent.New(agent.Options{Feed: f.host.ks, Host: f.host})
	require.NoError(t, err, "no acknowledgements, no host name needed")
}

// TestAckCountsStopped: a lockout's acknowledgement counts the host's volumes of the key and,
// apart, the attach processes the agent told to stop; a reconciliation that finds a different
// number of volumes acknowledges again.
func TestAckCountsStopped(t *testing.T) {
	f := newFixture(t, 2)
	f.host.attached = 1
	a, err := agent.New(agent.Options{Feed: f.host.ks, Host: f.host, Acker: f.host.ks, HostName: "h1"})
	require.NoError(t, err)
	_, err = f.svc.DisableKey(f.ctx, f.key)
	require.NoError(t, err)
	page, err := f.svc.Lifecycle(f.ctx, "0", 0)
	require.NoError(t, err)
	require.NoError(t, a.Apply(f.ctx, []volume.KeyEvent{{Cursor: page.Events[0].Cursor, Type: volume.KeyDisabled,
		KeyID: f.key, State: volume.KeyStateSuspended}}))
	ack, ok := f.hostAck(t, f.key, "h1")
	require.True(t, ok)
	require.Equal(t, 2, ack.Volumes)
	require.Equal(t, 1, ack.Stopped)

	f.host.mu.Lock()
	f.host.attached = 0
	f.host.mu.Unlock()
	require.NoError(t, a.Reconcile(f.ctx))
	ack, _ = f.hostAck(t, f.key, "h1")
	require.Equal(t, 1, ack.Stopped, "nothing changed: no new acknowledgement")
	es, err := f.host.reg.List()
	require.NoError(t, err)
	require.NoError(t, f.host.reg.Delete(es[1].CRN)) // the volume left the host
	require.NoError(t, a.Reconcile(f.ctx))
	ack, _ = f.hostAck(t, f.key, "h1")
	require.Equal(t, 1, ack.Volumes, "one volume fewer: acknowledged again")
	require.Equal(t, 0, ack.Stopped)
	require.Empty(t, ack.Cursor, "a reconciliation's")
}
