package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// agentProc is a `crkvol agent` started by a test.
type agentProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

// startAgent starts `crkvol agent` in dir on the state directory state, the service clock
// at now.
func startAgent(t *testing.T, dir, state, now string, extra ...string) *agentProc {
	t.Helper()
	cmd := exec.Command("crkvol", append([]string{"agent"}, extra...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CRKVOL_STATE="+state, "CRKVOL_MASTER_KEY=", "CRKVOL_NOW="+now)
	p := &agentProc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	require.NoError(t, cmd.Start())
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
		t.Logf("agent %d log:\n%s", cmd.Process.Pid, p.stderr.String())
	})
	return p
}

// wait waits for the agent to exit (hang guard: a minute) and returns its exit status.
func (p *agentProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-p.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		require.NoError(t, err)
		return 0
	case <-time.After(time.Minute):
		t.Fatalf("agent %d did not exit", p.cmd.Process.Pid)
		return -1
	}
}

// agentStatusOf runs `crkvol --json agent status` and decodes its object.
func agentStatusOf(t *testing.T, dir, state, now string) (int, map[string]any, string) {
	t.Helper()
	code, out, errOut := runIn(t, dir, state, now, "--json", "agent", "status")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Logf("agent status --json: %v: %q (stderr %q)", err, out, errOut)
		return -1, nil, errOut
	}
	return code, m, errOut
}

// waitFor polls cond until it holds; deadline bounds the wait (a hang guard, or an
// acceptance bound in the long tests). It returns the time it took.
func waitFor(t *testing.T, what string, deadline time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > deadline {
			t.Fatalf("%s: not after %s", what, deadline)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d := time.Since(start)
	t.Logf("%s after %s", what, d.Round(time.Millisecond))
	return d
}

// onVersion reports whether every image is wrapped by the key's version.
func onVersion(images []string, version string) bool {
	for _, img := range images {
		info, err := volume.Describe(img)
		if err != nil || info.KeyVersion != version {
			return false
		}
	}
	return true
}

// latestVersion returns the key's latest version id.
func latestVersion(t *testing.T, dir, state, now, key string) string {
	t.Helper()
	code, out, errOut := runIn(t, dir, state, now, "--json", "key", "show", key)
	require.Zero(t, code, errOut)
	var k struct {
		KeyVersion struct {
			ID string `json:"id"`
		} `json:"keyVersion"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &k), out)
	require.NotEmpty(t, k.KeyVersion.ID, out)
	return k.KeyVersion.ID
}

// TestAgentEmbedded runs `crkvol agent` on an embedded state directory with a few volumes:
// it follows a rotation made by another process (every volume reaches the new version within
// 20 s), reports its status, refuses a second agent on the same directory, and stops with
// exit 0 on SIGTERM; `agent status` then says none runs (exit 1) and shows the saved cursor.
// The long run also kills the agent with SIGKILL, rotates while it is down, makes a policy
// rotation due, and checks that the restarted agent handles the missed event and runs the
// due rotation itself (every volume converges).
func TestAgentEmbedded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	t0 := "2026-06-01T12:00:00Z"
	code, out, errOut := runIn(t, dir, state, t0, "--json", "key", "create", "fleet")
	require.Zero(t, code, errOut)
	key := jsonField(t, out, "id")
	var images []string
	for i := range 3 {
		img := filepath.Join(dir, fmt.Sprintf("v%d.img", i))
		code, _, errOut := runIn(t, dir, state, t0, "volume", "create", img, "--size", "1MiB", "--key", key)
		require.Zero(t, code, errOut)
		images = append(images, img)
	}

	ag := startAgent(t, dir, state, t0, "--reconcile-every", "1h")
	var st map[string]any
	waitFor(t, "agent up and reconciled", time.Minute, func() bool {
		code, m, _ := agentStatusOf(t, dir, state, t0)
		st = m
		return code == 0 && m["reconciles"] != nil && m["reconciles"].(float64) >= 1
	})
	assert.Equal(t, true, st["running"])
	assert.Equal(t, float64(ag.cmd.Process.Pid), st["pid"])
	assert.Equal(t, "embedded", st["mode"])
	assert.Equal(t, "embedded", st["keyService"])
	assert.Equal(t, state, st["stateDir"])
	assert.NotEmpty(t, st["instance"])
	assert.Equal(t, float64(1), st["keys"])
	startCursor := st["cursor"].(string)

	// A rotation from another process: the agent handles its event, every volume is on the
	// new version.
	code, _, errOut = runIn(t, dir, state, t0, "key", "rotate", key)
	require.Zero(t, code, errOut)
	latest := latestVersion(t, dir, state, t0, key)
	waitFor(t, "every volume on the new version, the rotation handled", 20*time.Second, func() bool {
		code, m, _ := agentStatusOf(t, dir, state, t0)
		st = m
		return code == 0 && onVersion(images, latest) && m["events"].(float64) >= 1
	})
	assert.NotEqual(t, startCursor, st["cursor"])
	assert.Equal(t, float64(0), st["failedVolumes"])

	code, out, errOut = runIn(t, dir, state, t0, "agent", "status")
	require.Zero(t, code, errOut)
	assert.Contains(t, out, fmt.Sprintf("running (process %d)", ag.cmd.Process.Pid))
	assert.Contains(t, out, "cursor:")
	assert.Contains(t, out, "key service:     embedded")
	assert.Regexp(t, `lag:\s+\S+`, out)

	// One agent per state directory.
	code, _, errOut = runIn(t, dir, state, t0, "agent")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "another agent (process "+strconv.Itoa(ag.cmd.Process.Pid)+") runs on state directory "+state)

	if tooltest.Long() {
		// SIGKILL, then a rotation while it is down (past the hourly limit): the restarted
		// agent handles the missed event from its saved cursor.
		require.NoError(t, ag.cmd.Process.Signal(syscall.SIGKILL))
		ag.wait(t)
		t2h := "2026-06-01T14:00:00Z"
		code, _, errOut = runIn(t, dir, state, t2h, "key", "rotate", key)
		require.Zero(t, code, errOut)
		missed := latestVersion(t, dir, state, t2h, key)
		ag = startAgent(t, dir, state, t2h, "--reconcile-every", "1h")
		waitFor(t, "restarted agent: the missed rotation handled", 20*time.Second, func() bool {
			code, m, _ := agentStatusOf(t, dir, state, t2h)
			st = m
			return code == 0 && m["events"] != nil && m["events"].(float64) >= 1 && onVersion(images, missed)
		})
		assert.NotContains(t, ag.stderr.String(), "resync")

		// A policy rotation due when the agent starts: the agent runs it, with its rewraps.
		// A month later the feed's retention (30 days) has dropped the events after the
		// saved cursor: the agent resyncs and reconciles.
		code, _, errOut = runIn(t, dir, state, t2h, "key", "policy", key, "--rotation-months", "1")
		require.Zero(t, code, errOut)
		require.NoError(t, ag.cmd.Process.Signal(syscall.SIGTERM))
		require.Equal(t, 0, ag.wait(t))
		later := "2026-07-02T12:00:00Z"
		ag = startAgent(t, dir, state, later, "--reconcile-every", "1h")
		waitFor(t, "the agent ran the due policy rotation", 20*time.Second, func() bool {
			return strings.Contains(ag.stderr.String(), "rotation policy rotated key")
		})
		newest := latestVersion(t, dir, state, later, key)
		assert.NotEqual(t, missed, newest)
		waitFor(t, "every volume on the policy rotation's version", 20*time.Second, func() bool {
			code, m, _ := agentStatusOf(t, dir, state, later)
			st = m
			return code == 0 && onVersion(images, newest) && m["reconciles"].(float64) >= 1
		})
	}

	require.NoError(t, ag.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, ag.wait(t), "SIGTERM stops the agent cleanly")
	cursor := st["cursor"].(string)

	code, m, errOut := agentStatusOf(t, dir, state, t0)
	assert.Equal(t, 1, code)
	assert.Equal(t, false, m["running"])
	assert.Equal(t, cursor, m["cursor"])
	assert.Contains(t, errOut, "no agent runs on state directory")
	code, out, errOut = runIn(t, dir, state, t0, "agent", "status")
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "saved cursor:    "+cursor)
	assert.Contains(t, errOut, "crkvol: agent status: no agent runs on state directory "+state)
}
