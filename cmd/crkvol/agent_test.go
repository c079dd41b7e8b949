package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/agent"
	"crkvol/crk"
	"crkvol/internal/tooltest"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// agentProc is a `crkvol agent` started by a test.
type agentProc struct {
	cmd    *exec.Cmd
	stderr *tooltest.SyncBuffer
	done   chan error
}

// startAgent starts `crkvol agent` in dir on the state directory state, the service clock
// at now.
func startAgent(t *testing.T, dir, state, now string, extra ...string) *agentProc {
	t.Helper()
	cmd := exec.Command("crkvol", append([]string{"agent"}, extra...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CRKVOL_STATE="+state, "CRKVOL_MASTER_KEY=", "CRKVOL_NOW="+now)
	p := &agentProc{cmd: cmd, stderr: &tooltest.SyncBuffer{}, done: make(chan error, 1)}
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

	ag := startAgent(t, dir, state, t0, "--reconcile-every", "1h", "--host", "store-1")
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
		// The counters move before the cursor of their page is saved: wait for both.
		return code == 0 && onVersion(images, latest) && m["events"].(float64) >= 1 && m["cursor"] != startCursor
	})
	assert.Equal(t, float64(0), st["failedVolumes"])
	waitFor(t, "the rotation's rewrap acknowledged", 20*time.Second, func() bool {
		code, m, _ := agentStatusOf(t, dir, state, t0)
		st = m
		return code == 0 && m["acks"].(float64) >= 2
	})
	assert.Equal(t, "store-1", st["host"])
	assert.Equal(t, float64(0), st["ackFailures"])

	code, out, errOut = runIn(t, dir, state, t0, "agent", "status")
	require.Zero(t, code, errOut)
	assert.Contains(t, out, fmt.Sprintf("running (process %d)", ag.cmd.Process.Pid))
	assert.Contains(t, out, "cursor:")
	assert.Contains(t, out, "key service:     embedded")
	assert.Regexp(t, `lag:\s+\S+`, out)
	// The README's sample is this output, wording and layout, with other values.
	assert.Equal(t, maskStatus(readmeAgentStatus(t)), maskStatus(strings.Split(strings.TrimRight(out, "\n"), "\n")),
		"README's agent status sample differs from the command's output")

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

	// A disable: the attached volume of the key stops serving, whether the agent told its
	// attach process to check its key (SIGUSR1) or the process's own watch of the feed saw
	// the disable first and stopped by itself (then the agent finds no process to tell); the
	// agent acknowledges the lockout of the key's three volumes either way. An enable is
	// logged.
	attach := exec.Command("crkvol", "volume", "attach", images[0])
	attach.Dir = dir
	attach.Env = append(os.Environ(), "CRKVOL_STATE="+state, "CRKVOL_MASTER_KEY=", "CRKVOL_NOW="+t0)
	attachErr := &tooltest.SyncBuffer{}
	attach.Stderr = attachErr
	require.NoError(t, attach.Start())
	attached := make(chan struct{})
	var attachWait error
	go func() { attachWait = attach.Wait(); close(attached) }()
	t.Cleanup(func() { attach.Process.Kill(); <-attached })
	waitFor(t, "volume attached", time.Minute, func() bool {
		recs, _ := filepath.Glob(filepath.Join(state, "attached", "*.json"))
		return len(recs) == 1
	})
	code, _, errOut = runIn(t, dir, state, t0, "key", "disable", key)
	require.Zero(t, code, errOut)
	select {
	case <-attached:
	case <-time.After(20 * time.Second):
		t.Fatalf("the attach process still serves 20 s after the disable: %s", attachErr.String())
	}
	var ee *exec.ExitError
	if assert.ErrorAs(t, attachWait, &ee, attachErr.String()) {
		assert.Equal(t, 1, ee.ExitCode(), attachErr.String())
	}
	assert.Contains(t, attachErr.String(), "key "+key+" is suspended (disabled): stopped serving "+images[0])
	lockedOut := "agent: key out of use; its volumes stop serving"
	waitFor(t, "the agent's lockout of the key", 20*time.Second, func() bool {
		return strings.Contains(ag.stderr.String(), lockedOut)
	})
	agentLog := ag.stderr.String()
	lockLine := agentLog[strings.Index(agentLog, lockedOut):]
	lockLine, _, _ = strings.Cut(lockLine, "\n")
	assert.Contains(t, lockLine, "key="+key+" state=suspended volumes=3 ")
	// Who saw the disable first decides only whether the agent had a process to tell.
	stopped := "0"
	if strings.Contains(agentLog, "told an attach process to check its key") {
		assert.Contains(t, agentLog, fmt.Sprintf("pid=%d", attach.Process.Pid))
		stopped = "1"
	}
	assert.Contains(t, lockLine, "stopped="+stopped+" ")
	code, _, errOut = runIn(t, dir, state, "2026-06-01T12:01:00Z", "key", "enable", key) // 30 s after the disable
	require.Zero(t, code, errOut)
	// The feed's head, to wait for the agent's cursor: its counters move before the cursor
	// of the page they belong to is saved.
	code, out, errOut = runIn(t, dir, state, t0, "--json", "key", "feed")
	require.Zero(t, code, errOut)
	head := jsonField(t, out, "cursor")
	waitFor(t, "the enable handled", 20*time.Second, func() bool {
		code, m, _ := agentStatusOf(t, dir, state, t0)
		st = m
		return code == 0 && m["unlocks"].(float64) >= 1 && m["lockouts"].(float64) >= 1 && m["cursor"] == head
	})
	// The host acknowledged the disable's lockout and the enable, as audit events of the key
	// (acknowledgements are made before the page's cursor is saved).
	code, out, errOut = runIn(t, dir, state, t0, "events", "--key", key, "--action", "kms.secrets.eventack")
	require.Zero(t, code, errOut)
	assert.Contains(t, out, "acknowledged disable: state suspended, 3 volume(s), "+stopped+" attach process(es) stopped")
	assert.Contains(t, out, "acknowledged enable: state active")

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

// runEnv runs the crkvol under test in dir with env added to the environment; it returns
// the exit status, stdout and stderr.
func runEnv(t *testing.T, dir string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command("crkvol", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CRKVOL_MASTER_KEY="), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	}
	require.NoError(t, err)
	return 0, out.String(), errb.String()
}

// TestAgentRemote (long): `crkvol agent --kms-url` against kms serve follows a rotation made
// with plain HTTP (no crkvol involved, so nothing else rewraps): every volume of the host is
// on the new version within 10 s, and the service has the host's acknowledgement of it; its
// status names the service; SIGTERM stops it with exit 0.
func TestAgentRemote(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("a kms serve and an agent: CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	dir := t.TempDir()
	url, inst := startKMSServe(t, dir, nil, "agent-token")

	state := filepath.Join(dir, "host")
	host := []string{"CRKVOL_STATE=" + state, "CRKVOL_KMS_URL=" + url, "CRKVOL_KMS_INSTANCE=" + inst, "CRKVOL_KMS_TOKEN=agent-token"}
	code, out, errOut := runEnv(t, dir, host, "--json", "key", "create", "fleet")
	require.Zero(t, code, errOut)
	key := jsonField(t, out, "id")
	var images []string
	for i := range 3 {
		img := filepath.Join(dir, fmt.Sprintf("r%d.img", i))
		code, _, errOut := runEnv(t, dir, host, "volume", "create", img, "--size", "1MiB", "--key", key)
		require.Zero(t, code, errOut)
		images = append(images, img)
	}

	cmd := exec.Command("crkvol", "agent", "--wait", "5s", "--host", "remote-1")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CRKVOL_MASTER_KEY="), host...)
	ag := &agentProc{cmd: cmd, stderr: &tooltest.SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = ag.stderr
	require.NoError(t, cmd.Start())
	go func() { ag.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-ag.done
		}
		t.Logf("agent log:\n%s", ag.stderr.String())
	})
	status := func() map[string]any {
		code, out, _ := runEnv(t, dir, host, "--json", "agent", "status")
		var m map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &m) != nil {
			return nil
		}
		return m
	}
	waitFor(t, "agent up and reconciled", time.Minute, func() bool {
		m := status()
		return m != nil && m["reconciles"] != nil && m["reconciles"].(float64) >= 1
	})

	// A rotation with plain HTTP.
	req, err := http.NewRequest(http.MethodPost, url+"/api/v2/keys/"+key+"/actions/rotate", strings.NewReader("{}"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer agent-token")
	req.Header.Set("Bluemix-Instance", inst)
	req.Header.Set("Content-Type", "application/vnd.ibm.kms.key_action+json")
	rotated := time.Now()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Less(t, resp.StatusCode, 300, resp.Status)
	code, out, errOut = runEnv(t, dir, host, "--json", "key", "show", key)
	require.Zero(t, code, errOut)
	var k struct {
		KeyVersion struct {
			ID string `json:"id"`
		} `json:"keyVersion"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &k), out)
	waitFor(t, "every volume on the version of the HTTP rotation", 10*time.Second, func() bool { return onVersion(images, k.KeyVersion.ID) })
	took := time.Since(rotated)
	t.Logf("every volume on the new version %s after the HTTP rotation", took.Round(time.Millisecond))
	assert.Less(t, took, 10*time.Second)

	m := status()
	require.NotNil(t, m)
	assert.Equal(t, "remote", m["mode"])
	assert.Equal(t, url, m["keyService"])
	assert.Equal(t, inst, m["instance"])
	assert.GreaterOrEqual(t, m["events"].(float64), float64(1))
	assert.Contains(t, ag.stderr.String(), "volumes rewrapped", "the agent, and nothing else, rewrapped them")

	// The agent acknowledged the rewrap to the service: its acknowledgement, read with plain
	// HTTP, names the new version and the host's three volumes.
	type acks struct {
		Acks []struct {
			Host, Type, State, Version, Cursor, Reporter string
			Volumes, Stopped                             int
		} `json:"acks"`
	}
	var got acks
	waitFor(t, "the rotation's acknowledgement", 10*time.Second, func() bool {
		req, err := http.NewRequest(http.MethodGet, url+"/api/crkvol/v1/acks?keyId="+key, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer agent-token")
		req.Header.Set("Bluemix-Instance", inst)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		got = acks{}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
		return len(got.Acks) == 1 && got.Acks[0].Version == k.KeyVersion.ID && got.Acks[0].Cursor != ""
	})
	assert.Equal(t, "remote-1", got.Acks[0].Host)
	assert.Equal(t, "rotate", got.Acks[0].Type)
	assert.Equal(t, "active", got.Acks[0].State)
	assert.Equal(t, 3, got.Acks[0].Volumes)
	assert.Zero(t, got.Acks[0].Stopped, "a rewrap stops nothing")
	assert.True(t, strings.HasPrefix(got.Acks[0].Reporter, "kpapi:"), "reported with the agent's token: %q", got.Acks[0].Reporter)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, ag.wait(t))
}

// readmeAgentStatus returns the `crkvol agent status` sample of the README (the indented
// block after the sentence that introduces it).
func readmeAgentStatus(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(b), "`crkvol agent status` asks the running agent")
	require.True(t, ok, "the README introduces the agent status sample")
	var out []string
	started := false
	for _, l := range strings.Split(after, "\n") {
		if strings.HasPrefix(l, "    ") {
			started = true
			out = append(out, strings.TrimPrefix(l, "    "))
			continue
		}
		if started {
			break
		}
	}
	require.NotEmpty(t, out)
	return out
}

// maskStatus replaces what changes from run to run in `agent status` text (times, UUIDs,
// durations, counts, the state directory) by placeholders, keeping labels and wording.
func maskStatus(lines []string) []string {
	repl := []struct{ re, with string }{
		{`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`, "TIME"},
		{`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`, "UUID"},
		{`\b\d+(\.\d+)?(ns|µs|ms|s|m|h)\b`, "DUR"},
		{`\d+`, "N"},
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		if label, _, ok := strings.Cut(l, ":"); ok && label == "state directory" {
			l = "state directory: DIR"
		}
		for _, r := range repl {
			l = regexp.MustCompile(r.re).ReplaceAllString(l, r.with)
		}
		out[i] = strings.Join(strings.Fields(l), " ")
	}
	return out
}

// An attach record whose image cannot be read (moved, deleted) does not fail the lockout of
// a key: its process is told to check its own key all the same, and the lockout goes on. The
// lockout covers every registered volume of the key, attached or not (Volumes), apart from
// the attach processes told to stop (Stopped).
func TestAgentLockoutGoesPastAnUnreadableImage(t *testing.T) {
	dir := t.TempDir()
	const key = "0b8a8e3e-6c43-4a4c-9d31-6a0b5d0c8f11"
	reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
	require.NoError(t, err)
	for i, k := range []string{key, key, "1c8a8e3e-6c43-4a4c-9d31-6a0b5d0c8f12"} {
		require.NoError(t, reg.Put(volume.Entry{CRN: fmt.Sprintf("crn:v1:local:public:is:local:a/crkvol::volume:v%d", i), KeyID: k,
			Path: filepath.Join(dir, fmt.Sprintf("v%d.img", i))}))
	}
	require.NoError(t, reg.Close())
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "attached"), 0o700))
	child := exec.Command("sleep", "30")
	require.NoError(t, child.Start())
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	defer child.Process.Kill()
	start, err := processStart(child.Process.Pid)
	require.NoError(t, err)
	rec, err := json.Marshal(attachment{PID: child.Process.Pid, StartTime: start, Image: filepath.Join(dir, "moved.img")})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "attached", "moved.json"), rec, 0o600))

	var log tooltest.SyncBuffer
	a := &app{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }, stateDir: dir}
	h := &cliHost{a: a, dir: dir, log: slog.New(slog.NewTextHandler(&log, nil))}
	res, err := h.Lockout(t.Context(), key, "suspended")
	require.NoError(t, err)
	assert.Zero(t, res.Stopped, "not counted: its key is unknown")
	assert.Equal(t, 2, res.Volumes, "the key's two registered volumes are locked out, though none is attached")
	assert.Contains(t, log.String(), "moved.img")
	select { // SIGUSR1 ends sleep
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the attach process was not told to check its key")
	}
}

// The text status names what its counters count and, while the feed fails, how long it has
// been silent.
func TestPrintAgentStatusFeedFailing(t *testing.T) {
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	v := runningView("/srv/crkvol", "inst", RunningAgent{PID: 7, Mode: "embedded", KeyService: "embedded"}, agent.Status{
		Started: t0, Events: 2, RewrapPasses: 3, LastPoll: t0, FeedError: "connection refused", FeedSilence: 95 * time.Second})
	var out strings.Builder
	printAgentStatus(&out, v)
	assert.Contains(t, out.String(), "events:          2 handled; 3 rewrap passes, 0 lockouts, 0 unlocks\n")
	assert.Contains(t, out.String(), "feed error:      connection refused (no answer for 1m35s)\n")
	assert.Equal(t, 95.0, v.FeedSilenceSeconds)
	assert.Equal(t, 3, v.RewrapPasses)
}

// A starting agent (its status socket answers before it has opened the key service) already
// names its host.
func TestPrintAgentStatusStarting(t *testing.T) {
	v := runningView("/srv/crkvol", "", RunningAgent{PID: 7, Starting: true, Host: "web-1.example"}, agent.Status{})
	var out strings.Builder
	printAgentStatus(&out, v)
	assert.Equal(t, "agent:           running (process 7), starting\nstate directory: /srv/crkvol\nhost:            web-1.example\n", out.String())
}

// recordingFeed answers from a real feed and records what it was asked.
type recordingFeed struct {
	feed  volume.KeyFeed
	asked []string
}

func (f *recordingFeed) KeyEvents(ctx context.Context, cursor string, wait time.Duration) (volume.KeyEventPage, error) {
	f.asked = append(f.asked, fmt.Sprintf("%q %s", cursor, wait))
	return f.feed.KeyEvents(ctx, cursor, wait)
}

// feedStore makes a key store whose feed has a rotation by hand, a policy rotation and a
// disable of a key with a registration.
func feedStore(t *testing.T) (path string, svc *crk.Service, key string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "crk.db")
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	svc, err := crk.Open(path, crk.Options{Clock: clock, NoSync: true, FeedRetention: crk.FeedRetention{MaxAge: -1}})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	ctx := context.Background()
	k, err := svc.CreateRootKey(ctx, "fed")
	require.NoError(t, err)
	_, err = svc.Register(ctx, k.ID, "crn:v1:bluemix:public:is:us-south:a/crkvol::volume:r006-00000000-0000-4000-8000-0000000000bb", crk.RegisterOptions{})
	require.NoError(t, err)
	clock.Advance(2 * time.Hour)
	_, err = svc.RotateKey(crk.WithInitiator(ctx, "alice"), k.ID, nil)
	require.NoError(t, err)
	_, err = svc.SetRotationPolicy(ctx, k.ID, 1, true)
	require.NoError(t, err)
	clock.Advance(32 * 24 * time.Hour)
	_, err = svc.RunDue(ctx)
	require.NoError(t, err)
	_, err = svc.DisableKey(ctx, k.ID)
	require.NoError(t, err)
	return path, svc, k.ID
}

// key feed --json prints each event as the HTTP lifecycle feed answers it (times to the
// second, as every time the CLI prints).
func TestKeyFeedJSONIsTheHTTPForm(t *testing.T) {
	path, svc, _ := feedStore(t)
	want, err := svc.Lifecycle(context.Background(), "0", 100)
	require.NoError(t, err)
	require.Len(t, want.Events, 3)
	for i := range want.Events { // the CLI prints times to the second
		want.Events[i].Time = want.Events[i].Time.Truncate(time.Second)
	}
	httpForm, err := json.Marshal(want)
	require.NoError(t, err)
	for _, side := range []struct {
		name string
		feed volume.KeyFeed
	}{{"local", kms.NewLocal(svc)}, {"store", &kms.StoreFeed{Path: path}}} {
		t.Run(side.name, func(t *testing.T) {
			if side.name == "store" {
				require.NoError(t, svc.Close()) // the store feed reads what no process holds
			}
			var out bytes.Buffer
			a := &app{stdout: &out, stderr: io.Discard, asJSON: true}
			require.NoError(t, a.showFeed(context.Background(), side.feed, "0", 0, false))
			assert.JSONEq(t, string(httpForm), out.String())
		})
	}
}

// key feed --wait without --cursor waits for the next event after the head.
func TestKeyFeedWaitFromTheHead(t *testing.T) {
	_, svc, _ := feedStore(t)
	head, err := svc.Lifecycle(context.Background(), "", 0)
	require.NoError(t, err)
	feed := &recordingFeed{feed: kms.NewLocal(svc)}
	var out, errOut bytes.Buffer
	a := &app{stdout: &out, stderr: &errOut}
	require.NoError(t, a.showFeed(context.Background(), feed, "", 50*time.Millisecond, false))
	assert.Equal(t, []string{`"" 0s`, fmt.Sprintf("%q 50ms", head.Cursor)}, feed.asked)
	assert.Equal(t, "resume with --cursor "+head.Cursor+"\n", errOut.String())
}
