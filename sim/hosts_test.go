package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// hostsScenario is a fleet spread over hosts, each with an agent, with every hosts fault:
// delivery delay, lost notifications, agent downtime, and key disables.
func hostsScenario(hosts, volumes, months int) Scenario {
	return Scenario{
		Seed: 5, Months: months, Keys: 4, Volumes: volumes, PolicyMonths: 1, ManualRotationsPerMonth: 1,
		AttachesPerMonth: 20, Hosts: hosts, DisablesPerMonth: 2,
		Faults: Faults{DeliveryDelay: Duration(300 * time.Millisecond), NotificationLoss: 0.1, AgentDowntimes: 2,
			FailRate: 0.02, Latency: Duration(2 * time.Millisecond)},
	}
}

// runHosts runs sc and logs its summary.
func runHosts(t *testing.T, sc Scenario, opts Options) *Report {
	t.Helper()
	opts.Dir = t.TempDir()
	start := time.Now()
	rep, err := Run(context.Background(), sc, opts)
	require.NoError(t, err)
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	t.Logf("%s\nwall time %s", sum.String(), time.Since(start))
	return rep
}

// TestHostsAgentsConvergeAndLockOut: a fleet on three hosts, whose rotations and disables
// reach the volumes only through the lifecycle feed (each host's agent, and the attach
// processes' own following of the feed), with delayed and lost notifications and agent
// downtime: every volume converges, every attached volume of a disabled key stops serving
// within the lockout bound, and the report has the times.
func TestHostsAgentsConvergeAndLockOut(t *testing.T) {
	t.Parallel()
	// 60 volumes over three months with CRKVOL_LONG_TESTS=1, 15 over two otherwise.
	rep := runHosts(t, hostsScenario(3, tooltest.Scale(60, 15), tooltest.Scale(3, 2)), Options{})
	require.NoError(t, rep.Err())
	require.NotNil(t, rep.Hosts)
	h := rep.Hosts
	assert.Equal(t, 3, h.Hosts)
	assert.Positive(t, rep.Rotations)
	assert.Len(t, h.Convergence, rep.Rotations, "one convergence entry per rotation")
	for _, c := range h.Convergence {
		assert.Equal(t, c.Volumes, c.Converged, "rotation of %s at %s", c.Key, c.At)
		assert.LessOrEqual(t, c.P50Ms, c.MaxMs)
	}
	assert.Positive(t, h.Disables)
	assert.Positive(t, h.Notifications)
	assert.Positive(t, h.Lost, "notifications were lost")
	assert.Positive(t, h.AgentDowntimes)
	locked := 0
	for _, l := range h.Lockouts {
		locked += l.LockedOut
		assert.Equal(t, l.Attached, l.LockedOut)
		assert.LessOrEqual(t, l.MaxMs, h.LockoutBoundMs)
	}
	assert.Positive(t, locked, "attached volumes were locked out")
	assert.Zero(t, h.LateIO)
	assert.Positive(t, h.IORefused, "I/O after a lockout was refused")
	// Every host acknowledged what it did, and at the end its acknowledgements confirm the
	// state of every key of its volumes.
	assert.Positive(t, h.Acks)
	assert.Positive(t, h.HostKeys)
	assert.Equal(t, h.HostKeys, h.Confirmed)
	// The hosts' managers are not subscribed to rotations: every rewrap came from an agent.
	for _, p := range rep.Passes {
		assert.Contains(t, []string{"agent", "reconcile", "final"}, p.Trigger)
	}
	b, err := json.Marshal(rep)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	hm := m["hosts"].(map[string]any)
	for _, f := range []string{"convergence", "lockouts", "lateIO", "lost", "notifications", "acks", "confirmed"} {
		assert.Contains(t, hm, f)
	}
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	assert.Contains(t, sum.String(), "Convergence ")
	assert.Contains(t, sum.String(), "Lockout ")
	assert.Contains(t, sum.String(), "Acks ")
}

// TestHostsBrokenLockoutFailsAudit: a host whose attach processes and agent never lock out
// keeps serving I/O after a disable: the audit fails and says so.
func TestHostsBrokenLockoutFailsAudit(t *testing.T) {
	t.Parallel()
	sc := hostsScenario(2, 16, 2)
	sc.ManualRotationsPerMonth, sc.Faults.AgentDowntimes, sc.DisablesPerMonth = 0, 0, 4
	rep := runHosts(t, sc, Options{skipLockout: func(host int) bool { return host == 1 }})
	err := rep.Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "after the lockout bound")
	assert.Positive(t, rep.Hosts.LateIO)
	var sum bytes.Buffer
	require.NoError(t, rep.WriteSummary(&sum))
	assert.Contains(t, sum.String(), "Audit FAILED")
	assert.Contains(t, sum.String(), "served I/O")
}

// TestHostsAcceptance is issue 19's acceptance run: ten hosts, 2000 volumes, 10% of
// notifications lost: a clean audit, with convergence and lockout times.
func TestHostsAcceptance(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set " + tooltest.LongEnv + "=1")
	}
	// The defaults of `crkvol sim run` but six months and fewer attaches (every rewrap and
	// attach is a real keyslot unlock and header write): within two minutes on two cores.
	sc := Scenario{Seed: 1, Months: 6, Keys: 10, Volumes: 2000, PolicyMonths: 3, Hosts: 10, AttachesPerMonth: 100,
		ManualRotationsPerMonth: 0.2, Faults: Faults{NotificationLoss: 0.1, AgentDowntimes: 3}}
	start := time.Now()
	rep := runHosts(t, sc, Options{})
	t.Logf("acceptance run: %s", time.Since(start))
	require.NoError(t, rep.Err())
	assert.Len(t, rep.Hosts.Convergence, rep.Rotations)
	assert.Positive(t, rep.Hosts.Lost)
	assert.NotEmpty(t, rep.Hosts.Lockouts)
	for _, l := range rep.Hosts.Lockouts {
		assert.LessOrEqual(t, l.MaxMs, float64(5000), "lockout within 5 s of the disable")
	}
}

// TestHostsScenarioChecks: hosts-only fields need hosts, and faults the hosts mode does not
// simulate are refused with it.
func TestHostsScenarioChecks(t *testing.T) {
	for name, sc := range map[string]Scenario{
		"loss without hosts":   {Months: 1, Keys: 1, Volumes: 1, Faults: Faults{NotificationLoss: 0.1}},
		"loss of 1":            {Months: 1, Keys: 1, Volumes: 1, Hosts: 2, Faults: Faults{NotificationLoss: 1}},
		"crashes with hosts":   {Months: 1, Keys: 1, Volumes: 1, Hosts: 2, Faults: Faults{CrashRate: 0.1}},
		"negative hosts":       {Months: 1, Keys: 1, Volumes: 1, Hosts: -1},
		"short disable":        {Months: 1, Keys: 1, Volumes: 1, Hosts: 1, DisableLength: Duration(time.Second)},
		"downtime no hosts":    {Months: 1, Keys: 1, Volumes: 1, Faults: Faults{AgentDowntimes: 1}},
		"negative delay":       {Months: 1, Keys: 1, Volumes: 1, Hosts: 1, Faults: Faults{DeliveryDelay: Duration(-time.Second)}},
		"creates with hosts":   {Months: 1, Keys: 1, Volumes: 1, Hosts: 1, CreatesPerMonth: 1},
		"corruption and hosts": {Months: 1, Keys: 1, Volumes: 1, Hosts: 1, Faults: Faults{CorruptData: 1}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Run(context.Background(), sc, Options{Dir: t.TempDir()})
			assert.ErrorIs(t, err, ErrScenario)
		})
	}
}

// TestHostsLockoutWithoutAgent: a disable while the host's agent is down still stops the
// attached volumes within the bound (their attach processes follow the feed themselves), and
// the rotations made meanwhile converge after the agent's restart.
func TestHostsLockoutWithoutAgent(t *testing.T) {
	t.Parallel()
	sc := hostsScenario(1, 8, 1)
	sc.Keys, sc.AttachedPerHost, sc.DisablesPerMonth, sc.PolicyMonths, sc.ManualRotationsPerMonth = 2, 2, 8, 0, 8
	sc.Faults.AgentDowntimes, sc.Faults.AgentDowntimeLength = 3, Duration(10*24*time.Hour)
	rep := runHosts(t, sc, Options{})
	require.NoError(t, rep.Err())
	whileDown := 0
	for _, l := range rep.Hosts.Lockouts {
		if l.AgentsDown > 0 && l.Attached > 0 {
			whileDown++
			assert.Equal(t, l.Attached, l.LockedOut)
			assert.LessOrEqual(t, l.MaxMs, rep.Hosts.LockoutBoundMs)
		}
	}
	assert.Positive(t, whileDown, "a disable came while the agent was down")
	slow := 0
	for _, c := range rep.Hosts.Convergence {
		assert.Equal(t, c.Volumes, c.Converged)
		if c.MaxMs > float64(time.Hour/time.Millisecond) {
			slow++ // made while the agent was down: converged at its restart
		}
	}
	assert.Positive(t, slow, "a rotation came while the agent was down")
}
