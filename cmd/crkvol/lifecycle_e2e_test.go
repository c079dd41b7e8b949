package main

// The acceptance tests of issue 19 that need real processes together: one `crkvol kms serve`,
// three storage hosts (state directories) each running `crkvol agent --kms-url` against it,
// 50 volumes per host, one attached on each host, and key lifecycle events made with plain
// HTTP requests of the Key Protect API (never crkvol nor kms.Remote).

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// e2eStaticToken is the bearer token kms serve accepts for every instance in these tests.
const e2eStaticToken = "lifecycle-e2e-token"

// e2eEnv is the environment of a crkvol child: this process's, without any CRKVOL_ variable
// (a developer's CRKVOL_KMS_URL or CRKVOL_NOW must not leak in), plus extra.
func e2eEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CRKVOL_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// kmsProc is one `crkvol kms serve` on a loopback address, restartable on the same address
// with a later service clock.
type kmsProc struct {
	t        *testing.T
	bin      string
	state    string
	store    string // --store (CRKVOL_STORE): "" for the state directory's bbolt stores
	listen   string // 127.0.0.1:0 until the first start, then the address it got
	url      string
	instance string

	cmd     *exec.Cmd
	stderr  *tooltest.SyncBuffer
	exited  chan error
	clockAt time.Time // the service time at wallAt
	wallAt  time.Time
}

// newKMS prepares a server state directory and reads its default instance id.
func newKMS(t *testing.T, bin, dir string) *kmsProc { return newKMSOn(t, bin, dir, "", nil) }

// newKMSOn is newKMS for a server on store (--store; "" for the state directory's). A
// further replica of a PostgreSQL store gets the master key file of keyFrom, another
// replica, as an operator copies it.
func newKMSOn(t *testing.T, bin, dir, store string, keyFrom *kmsProc) *kmsProc {
	k := &kmsProc{t: t, bin: bin, state: filepath.Join(dir, "kms-state"), store: store, listen: "127.0.0.1:0"}
	if keyFrom != nil {
		key, err := os.ReadFile(keyFrom.masterKeyFile())
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(k.state, 0o700))
		require.NoError(t, os.WriteFile(k.masterKeyFile(), key, 0o600))
	}
	cmd := exec.Command(bin, "--json", "kms", "instance", "list")
	cmd.Env = k.env()
	out, err := cmd.Output()
	require.NoError(t, err, "kms instance list: %s", out)
	var list []struct {
		ID      string `json:"id"`
		Default bool   `json:"default"`
	}
	require.NoError(t, json.Unmarshal(out, &list), "%s", out)
	if len(list) == 0 && store != "" {
		// A new database lists no instance: the first command that writes to it (here an
		// API key, as an operator makes one) makes the default instance.
		cmd := exec.Command(bin, "--json", "kms", "apikey", "create")
		cmd.Env = k.env()
		out, err := cmd.Output()
		require.NoError(t, err, "kms apikey create: %s", out)
		var made struct {
			Instance string `json:"instance"`
		}
		require.NoError(t, json.Unmarshal(out, &made), "%s", out)
		list = append(list, struct {
			ID      string `json:"id"`
			Default bool   `json:"default"`
		}{made.Instance, true})
	}
	require.NotEmpty(t, list)
	require.True(t, list[0].Default)
	k.instance = list[0].ID
	t.Cleanup(func() {
		k.kill()
		if t.Failed() && k.stderr != nil { // the server's own account of its failures
			for line := range strings.Lines(k.stderr.String()) {
				if strings.Contains(line, "level=ERROR") {
					t.Logf("%s: %s", k.state, strings.TrimSpace(line))
				}
			}
		}
	})
	return k
}

// env is the environment of the server's commands.
func (k *kmsProc) env() []string {
	return e2eEnv("CRKVOL_STATE="+k.state, "CRKVOL_MASTER_KEY=", "CRKVOL_STORE="+k.store)
}

// masterKeyFile is the master key file of the server's state directory.
func (k *kmsProc) masterKeyFile() string { return filepath.Join(k.state, "crk.db.masterkey") }

// now is the service clock: the --now of the last start advanced by the wall time since.
func (k *kmsProc) now() time.Time { return k.clockAt.Add(time.Since(k.wallAt)) }

// start runs kms serve with its clock starting at now and waits until it listens.
func (k *kmsProc) start(now time.Time) {
	t := k.t
	t.Helper()
	addrFile := filepath.Join(k.state, "..", "kms-addr.txt")
	cmd := exec.Command(k.bin, "kms", "serve", "--listen", k.listen, "--addr-file", addrFile, "--force",
		"--static-token", e2eStaticToken, "--now", now.UTC().Format(time.RFC3339Nano))
	cmd.Env = k.env()
	k.stderr = &tooltest.SyncBuffer{}
	cmd.Stderr = k.stderr
	require.NoError(t, cmd.Start())
	k.cmd, k.exited = cmd, make(chan error, 1)
	k.clockAt, k.wallAt = now, time.Now()
	go func() { k.exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			url := strings.TrimSpace(string(b))
			if k.url != "" {
				require.Equal(t, k.url, url, "the server came back on its address")
			}
			k.url = url
			k.listen = strings.TrimPrefix(url, "http://")
			return
		}
		select {
		case err := <-k.exited:
			t.Fatalf("kms serve exited: %v: %s", err, k.stderr)
		default:
		}
		require.True(t, time.Now().Before(deadline), "kms serve did not listen within 30 s: %s", k.stderr)
		time.Sleep(10 * time.Millisecond)
	}
}

// stop stops the server with SIGTERM and waits for it.
func (k *kmsProc) stop() {
	k.t.Helper()
	require.NoError(k.t, k.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-k.exited:
		require.NoError(k.t, err, "kms serve: %s", k.stderr)
	case <-time.After(60 * time.Second):
		k.t.Fatalf("kms serve did not stop within 60 s of SIGTERM: %s", k.stderr)
	}
	k.cmd = nil
}

// restart stops the server and starts it again with its clock skip ahead of where it was.
func (k *kmsProc) restart(skip time.Duration) {
	k.t.Helper()
	next := k.now().Add(skip)
	k.stop()
	k.start(next)
}

func (k *kmsProc) kill() {
	if k.cmd != nil {
		_ = k.cmd.Process.Kill()
		<-k.exited
		k.cmd = nil
	}
}

// api makes one Key Protect API request with plain net/http and returns the status and body.
func (k *kmsProc) api(method, path string, body any) (int, []byte) {
	k.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(k.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, k.url+"/api/v2/"+path, rd)
	require.NoError(k.t, err)
	req.Header.Set("authorization", "Bearer "+e2eStaticToken)
	req.Header.Set("bluemix-instance", k.instance)
	req.Header.Set("accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(k.t, err, "%s %s", method, path)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(k.t, err)
	return resp.StatusCode, out
}

// mustAPI is api requiring the status want.
func (k *kmsProc) mustAPI(want int, method, path string, body any) []byte {
	k.t.Helper()
	got, out := k.api(method, path, body)
	require.Equal(k.t, want, got, "%s %s: %s", method, path, out)
	return out
}

// e2eFeedEvent is one event of the lifecycle feed as the wire carries it.
type e2eFeedEvent struct {
	Cursor string `json:"cursor"`
	Type   string `json:"type"`
	KeyID  string `json:"keyId"`
	Policy bool   `json:"policy"`
}

// feed reads the lifecycle feed (GET /api/crkvol/v1/lifecycle) after cursor without waiting,
// with plain net/http: every event and the cursor to resume from.
func (k *kmsProc) feed(cursor string) ([]e2eFeedEvent, string) {
	k.t.Helper()
	var all []e2eFeedEvent
	for {
		req, err := http.NewRequest("GET", k.url+"/api/crkvol/v1/lifecycle?wait=0&cursor="+cursor, nil)
		require.NoError(k.t, err)
		req.Header.Set("authorization", "Bearer "+e2eStaticToken)
		req.Header.Set("bluemix-instance", k.instance)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(k.t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(k.t, err)
		require.Equal(k.t, http.StatusOK, resp.StatusCode, "lifecycle feed: %s", body)
		var page struct {
			Events []e2eFeedEvent `json:"events"`
			Cursor string         `json:"cursor"`
		}
		require.NoError(k.t, json.Unmarshal(body, &page), "%s", body)
		all = append(all, page.Events...)
		if len(page.Events) == 0 || page.Cursor == cursor {
			return all, page.Cursor
		}
		cursor = page.Cursor
	}
}

// createRootKey creates a generated root key and returns its id.
func (k *kmsProc) createRootKey(name string) string {
	out := k.mustAPI(http.StatusCreated, "POST", "keys", map[string]any{
		"metadata":  map[string]any{"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
		"resources": []any{map[string]any{"name": name, "type": "application/vnd.ibm.kms.key+json", "extractable": false}},
	})
	var r struct {
		Resources []struct {
			ID string `json:"id"`
		} `json:"resources"`
	}
	require.NoError(k.t, json.Unmarshal(out, &r), "%s", out)
	require.Len(k.t, r.Resources, 1)
	return r.Resources[0].ID
}

// keyAction posts POST /keys/{id}/actions/{action} (rotate, disable, enable) and requires 204.
func (k *kmsProc) keyAction(id, action string) {
	k.t.Helper()
	k.mustAPI(http.StatusNoContent, "POST", "keys/"+id+"/actions/"+action, nil)
}

// setRotationPolicy sets a rotation policy of months months.
func (k *kmsProc) setRotationPolicy(id string, months int) {
	k.t.Helper()
	k.mustAPI(http.StatusOK, "PUT", "keys/"+id+"/policies?policy=rotation", map[string]any{
		"metadata":  map[string]any{"collectionType": "application/vnd.ibm.kms.policy+json", "collectionTotal": 1},
		"resources": []any{map[string]any{"type": "application/vnd.ibm.kms.policy+json", "rotation": map[string]any{"interval_month": months}}},
	})
}

// keyMeta returns a key's latest version id and state (the API's integer).
func (k *kmsProc) keyMeta(id string) (string, int) {
	k.t.Helper()
	out := k.mustAPI(http.StatusOK, "GET", "keys/"+id+"/metadata", nil)
	var r struct {
		Resources []struct {
			State      int `json:"state"`
			KeyVersion struct {
				ID string `json:"id"`
			} `json:"keyVersion"`
		} `json:"resources"`
	}
	require.NoError(k.t, json.Unmarshal(out, &r), "%s", out)
	require.Len(k.t, r.Resources, 1)
	return r.Resources[0].KeyVersion.ID, r.Resources[0].State
}

// e2eAck is a host's acknowledgement as GET /api/crkvol/v1/acks gives it.
type e2eAck struct {
	Host   string    `json:"host"`
	Type   string    `json:"type"`
	State  string    `json:"state"`
	Cursor string    `json:"cursor"`
	Time   time.Time `json:"time"`
}

// acks reads the hosts' acknowledgements of key id (GET /api/crkvol/v1/acks) with plain
// net/http, by host name.
func (k *kmsProc) acks(id string) map[string]e2eAck {
	k.t.Helper()
	req, err := http.NewRequest("GET", k.url+"/api/crkvol/v1/acks?keyId="+id, nil)
	require.NoError(k.t, err)
	req.Header.Set("authorization", "Bearer "+e2eStaticToken)
	req.Header.Set("bluemix-instance", k.instance)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(k.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(k.t, err)
	require.Equal(k.t, http.StatusOK, resp.StatusCode, "acks: %s", body)
	var r struct {
		Acks []e2eAck `json:"acks"`
	}
	require.NoError(k.t, json.Unmarshal(body, &r), "%s", body)
	out := map[string]e2eAck{}
	for _, a := range r.Acks {
		out[a.Host] = a
	}
	return out
}

// e2eHost is one storage host: a state directory using the server, its volumes, its agent and
// its attach process.
type e2eHost struct {
	t     *testing.T
	name  string
	bin   string
	dir   string
	kms   *kmsProc
	vols  []string // image paths
	agent *bgProc
}

func newHost(t *testing.T, bin, dir, name string, k *kmsProc) *e2eHost {
	h := &e2eHost{t: t, name: name, bin: bin, dir: filepath.Join(dir, name), kms: k}
	require.NoError(t, os.MkdirAll(h.dir, 0o700))
	return h
}

func (h *e2eHost) env() []string {
	return e2eEnv("CRKVOL_STATE="+filepath.Join(h.dir, "state"), "CRKVOL_MASTER_KEY=",
		"CRKVOL_KMS_URL="+h.kms.url, "CRKVOL_KMS_INSTANCE="+h.kms.instance, "CRKVOL_KMS_TOKEN="+e2eStaticToken)
}

func (h *e2eHost) command(args ...string) *exec.Cmd {
	cmd := exec.Command(h.bin, args...)
	cmd.Dir = h.dir
	cmd.Env = h.env()
	return cmd
}

// run runs a crkvol command on the host and returns its stdout, stderr and error.
func (h *e2eHost) run(args ...string) (string, string, error) {
	cmd := h.command(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// mustRun is run requiring success.
func (h *e2eHost) mustRun(args ...string) string {
	h.t.Helper()
	out, errs, err := h.run(args...)
	require.NoError(h.t, err, "%s: crkvol %s: %s", h.name, strings.Join(args, " "), errs)
	return out
}

// createVolumes creates n volumes of the key (the smallest size, 1 MiB).
func (h *e2eHost) createVolumes(n int, key string) error {
	for i := range n {
		img := filepath.Join(h.dir, fmt.Sprintf("v%02d.img", i))
		if _, errs, err := h.run("volume", "create", img, "--size", "1MiB", "--key", key); err != nil {
			return fmt.Errorf("%s: volume create %s: %w: %s", h.name, img, err, errs)
		}
		h.vols = append(h.vols, img)
	}
	return nil
}

// versions returns the key version of every volume's token (read from the image headers).
func (h *e2eHost) versions() ([]string, error) {
	vs := make([]string, len(h.vols))
	for i, p := range h.vols {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := volume.DescribeContext(ctx, p)
		cancel()
		if err != nil {
			return nil, err
		}
		vs[i] = info.KeyVersion
	}
	return vs, nil
}

// registryVersions returns the key version of every volume the registry records
// (`crkvol --json volume list`), by path.
func (h *e2eHost) registryVersions() map[string]string {
	h.t.Helper()
	var list []struct {
		Path       string `json:"path"`
		KeyVersion string `json:"keyVersion"`
	}
	out := h.mustRun("--json", "volume", "list")
	require.NoError(h.t, json.Unmarshal([]byte(out), &list), "%s", out)
	m := make(map[string]string, len(list))
	for _, v := range list {
		m[v.Path] = v.KeyVersion
	}
	return m
}

// bgProc is a crkvol process running in the background.
type bgProc struct {
	cmd    *exec.Cmd
	stderr *tooltest.SyncBuffer
	exited chan struct{}
	err    error
}

func (h *e2eHost) background(args ...string) *bgProc {
	h.t.Helper()
	p := &bgProc{cmd: h.command(args...), stderr: &tooltest.SyncBuffer{}, exited: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	require.NoError(h.t, p.cmd.Start())
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	h.t.Cleanup(func() { p.kill() })
	return p
}

func (p *bgProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *bgProc) done() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// exitCode waits up to d for the process to exit and returns its exit code (-1 if killed by
// a signal).
func (p *bgProc) exitCode(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("process still running after %v: %s", d, p.stderr)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, p.err)
	return 0
}

// tryAttach starts `crkvol volume attach IMG --listen unix:SOCK` in the background and
// returns it once it serves NBD, or the error it exited with (its stderr included).
func (h *e2eHost) tryAttach(img, sock string) (*bgProc, error) {
	h.t.Helper()
	_ = os.Remove(sock)
	p := h.background("volume", "attach", img, "--listen", "unix:"+sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return p, nil
		}
		if p.done() {
			return nil, fmt.Errorf("%s: volume attach %s: %w: %s", h.name, img, p.err, p.stderr)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: volume attach %s did not serve within 30 s: %s", h.name, img, p.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// attach is tryAttach requiring success.
func (h *e2eHost) attach(img, sock string) *bgProc {
	h.t.Helper()
	p, err := h.tryAttach(img, sock)
	require.NoError(h.t, err)
	return p
}

// e2eNBD is a minimal NBD client (fixed newstyle handshake, NBD_OPT_EXPORT_NAME, simple
// replies) that returns every failure as an error, so a test can tell a failed read or a
// closed connection from success.
type e2eNBD struct {
	nc     net.Conn
	size   uint64
	cookie uint64
}

const (
	nbdMagicInit     = 0x4e42444d41474943 // "NBDMAGIC"
	nbdMagicOpt      = 0x49484156454f5054 // "IHAVEOPT"
	nbdMagicRequest  = 0x25609513
	nbdMagicSimple   = 0x67446698
	nbdOptExportName = 1
	nbdCmdRead       = 0
	nbdCmdWrite      = 1
	nbdCmdFlush      = 3
)

// e2eDialNBD connects to a unix socket and enters transmission with the default export.
func e2eDialNBD(sock string) (*e2eNBD, error) {
	nc, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &e2eNBD{nc: nc}
	if err := c.handshake(); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *e2eNBD) handshake() error {
	_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.nc.SetDeadline(time.Time{})
	var hello [18]byte
	if _, err := io.ReadFull(c.nc, hello[:]); err != nil {
		return fmt.Errorf("nbd greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagicInit || binary.BigEndian.Uint64(hello[8:]) != nbdMagicOpt {
		return errors.New("nbd greeting: bad magic")
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	b = binary.BigEndian.AppendUint64(b, nbdMagicOpt)
	b = binary.BigEndian.AppendUint32(b, nbdOptExportName)
	b = binary.BigEndian.AppendUint32(b, 0) // the default export
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("nbd export name: %w", err)
	}
	var r [10]byte
	if _, err := io.ReadFull(c.nc, r[:]); err != nil {
		return fmt.Errorf("nbd export reply: %w", err)
	}
	c.size = binary.BigEndian.Uint64(r[0:])
	return nil
}

// do sends one request and reads its simple reply header; a non-zero NBD error is an error.
func (c *e2eNBD) do(typ uint16, off uint64, length uint32, payload []byte) error {
	c.cookie++
	b := binary.BigEndian.AppendUint32(nil, nbdMagicRequest)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, c.cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(append(b, payload...)); err != nil {
		return fmt.Errorf("nbd request: %w", err)
	}
	var h [16]byte
	if _, err := io.ReadFull(c.nc, h[:]); err != nil {
		return fmt.Errorf("nbd reply: %w", err)
	}
	if binary.BigEndian.Uint32(h[0:]) != nbdMagicSimple || binary.BigEndian.Uint64(h[8:]) != c.cookie {
		return errors.New("nbd reply: bad magic or cookie")
	}
	if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
		return fmt.Errorf("nbd reply: error %d", e)
	}
	return nil
}

func (c *e2eNBD) read(off uint64, n int) ([]byte, error) {
	if err := c.do(nbdCmdRead, off, uint32(n), nil); err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(c.nc, buf); err != nil {
		return nil, fmt.Errorf("nbd read data: %w", err)
	}
	return buf, nil
}

func (c *e2eNBD) write(off uint64, p []byte) error { return c.do(nbdCmdWrite, off, uint32(len(p)), p) }
func (c *e2eNBD) flush() error                     { return c.do(nbdCmdFlush, 0, 0, nil) }
func (c *e2eNBD) Close() error                     { return c.nc.Close() }

// readAll reads the whole export through a new connection.
func e2eReadAllNBD(sock string) ([]byte, error) {
	c, err := e2eDialNBD(sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []byte
	for off := uint64(0); off < c.size; off += 64 << 10 {
		n := min(64<<10, int(c.size-off))
		b, err := c.read(off, n)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// countOn returns how many of the hosts' volumes are on version v, and how many there are.
func countOn(hosts []*e2eHost, v string) (int, int, error) {
	on, total := 0, 0
	for _, h := range hosts {
		vs, err := h.versions()
		if err != nil {
			return 0, 0, err
		}
		for _, x := range vs {
			total++
			if x == v {
				on++
			}
		}
	}
	return on, total, nil
}

// waitConverged polls the image headers until every volume of the hosts is on version v, or
// fails after deadline; it returns the time it took.
func waitConverged(t *testing.T, hosts []*e2eHost, v string, deadline time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		on, total, err := countOn(hosts, v)
		if err == nil && on == total {
			return time.Since(start)
		}
		if time.Since(start) > deadline {
			t.Fatalf("after %v: %d of %d volumes on version %s (err %v)%s", deadline, on, total, v, err, agentsState(hosts))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startAgent starts `crkvol agent --kms-url URL` on the host.
func (h *e2eHost) startAgent() {
	h.t.Helper()
	h.agent = h.background("agent", "--kms-url", h.kms.url, "--host", h.name)
}

// mtimes returns the modification time of every volume image of the host.
func (h *e2eHost) mtimes() []time.Time {
	ts := make([]time.Time, len(h.vols))
	for i, p := range h.vols {
		if fi, err := os.Stat(p); err == nil {
			ts[i] = fi.ModTime()
		}
	}
	return ts
}

// changedSince counts the images whose modification time differs from before.
func (h *e2eHost) changedSince(before []time.Time) int {
	n := 0
	for i, m := range h.mtimes() {
		if !m.Equal(before[i]) {
			n++
		}
	}
	return n
}

// TestLifecycleE2E runs issue 19's multi-host acceptance with real processes: one kms serve,
// three hosts of 50 volumes each running crkvol agent against it, one volume attached per host.
// Events are made with plain HTTP requests of the Key Protect API. In order:
//  1. a rotation reaches every volume on every host within 10 s; a policy rotation fired by
//     the server clock after a server restart (agents running) reaches every one too;
//  2. a disable stops reads on every attached volume within 5 s, refuses new attaches naming
//     the key state, and after an enable the volumes attach again and read back what was
//     written before;
//  3. an agent killed with SIGKILL in the middle of its rewrap pass, and the events made while
//     it was down (a rotation, a disable and an enable), are all applied after it restarts.
//
// Measured times are logged. Long test: CRKVOL_LONG_TESTS=1.
func TestLifecycleE2E(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	bin, err := exec.LookPath("crkvol")
	require.NoError(t, err, "testscript puts crkvol in PATH")
	testStart := time.Now()
	dir := t.TempDir()
	const perHost = 50

	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	srv := newKMS(t, bin, dir)
	srv.start(t0)
	key := srv.createRootKey("fleet-key")
	v1, _ := srv.keyMeta(key)

	hosts := make([]*e2eHost, 3)
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i := range hosts {
		hosts[i] = newHost(t, bin, dir, fmt.Sprintf("host%d", i), srv)
		wg.Go(func() { errs[i] = hosts[i].createVolumes(perHost, key) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	on, total, err := countOn(hosts, v1)
	require.NoError(t, err)
	require.Equal(t, 3*perHost, total)
	require.Equal(t, total, on)
	var want []string // the events the test makes, in order, as the feed should list them
	// The feed is read as the test goes, before the server clock jumps a month ahead: the
	// feed's retention (30 days) then deletes the older events, as it should.
	var fed []e2eFeedEvent
	_, cursor := srv.feed("")
	readFeed := func() {
		ev, next := srv.feed(cursor)
		fed, cursor = append(fed, ev...), next
	}
	// The steps share the fleet and run in order; the helpers fail the whole test.
	step := func(name string, f func()) {
		t.Logf("step: %s", name)
		start := time.Now()
		f()
		t.Logf("step done in %v: %s", time.Since(start).Round(time.Millisecond), name)
	}
	t.Logf("setup: kms serve and %d volumes on 3 hosts in %v", total, time.Since(testStart).Round(time.Millisecond))

	// One volume attached per host, with a known pattern written through NBD.
	socks := make([]string, len(hosts))
	attached := make([]*bgProc, len(hosts))
	patterns := make([][]byte, len(hosts))
	conns := make([]*e2eNBD, len(hosts))
	for i, h := range hosts {
		socks[i] = filepath.Join(h.dir, "v00.sock")
		attached[i] = h.attach(h.vols[0], socks[i])
		c, err := e2eDialNBD(socks[i])
		require.NoError(t, err)
		patterns[i] = randBytes(int(c.size), uint64(100+i))
		require.NoError(t, c.write(0, patterns[i]))
		require.NoError(t, c.flush())
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	for _, h := range hosts {
		h.startAgent()
	}

	step("rotation over HTTP reaches every volume within 10 s", func() {
		srv.keyAction(key, "rotate")
		want = append(want, "rotate policy=false")
		readFeed()
		v2, _ := srv.keyMeta(key)
		require.NotEqual(t, v1, v2)
		took := waitConverged(t, hosts, v2, 10*time.Second)
		t.Logf("manual rotation: %d of %d volumes on the new version after %v", total, total, took.Round(time.Millisecond))
	})

	step("policy rotation fired by the restarted server's clock reaches every volume", func() {
		before, _ := srv.keyMeta(key)
		srv.setRotationPolicy(key, 1)
		// The agents keep running while the server is down; it comes back 32 days later on its
		// clock, with the policy rotation due.
		srv.restart(32 * 24 * time.Hour)
		restarted := time.Now()
		var v3 string
		for v3 = before; v3 == before; v3, _ = srv.keyMeta(key) {
			require.Less(t, time.Since(restarted), 30*time.Second, "the server did not run the due policy rotation")
			time.Sleep(20 * time.Millisecond)
		}
		rotated := time.Since(restarted)
		want = append(want, "rotate policy=true")
		took := waitConverged(t, hosts, v3, 10*time.Second)
		on, total, err := countOn(hosts, v3)
		require.NoError(t, err)
		require.Equal(t, total, on)
		t.Logf("policy rotation: run %v after the restart; %d of %d volumes on it %v later", rotated.Round(time.Millisecond), on, total, took.Round(time.Millisecond))
		for _, h := range hosts {
			reg := h.registryVersions()
			for _, p := range h.vols {
				require.Equal(t, v3, reg[p], "%s: the registry record of %s", h.name, p)
			}
		}
	})

	step("disable stops reads within 5 s, refuses attaches, enable lets them back", func() {
		for i, c := range conns {
			got, err := c.read(0, len(patterns[i]))
			require.NoError(t, err, "%s: a read before the disable", hosts[i].name)
			require.True(t, bytes.Equal(patterns[i], got), "%s: the pattern reads back before the disable", hosts[i].name)
		}
		srv.keyAction(key, "disable")
		disabled := time.Now()
		want = append(want, "disable policy=false")
		// Every host's open connection keeps reading until a read fails or the connection
		// closes.
		stopped := make([]time.Duration, len(hosts))
		lastErr := make([]error, len(hosts))
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Go(func() {
				for time.Since(disabled) < 5*time.Second {
					if _, err := c.read(0, 4096); err != nil {
						stopped[i], lastErr[i] = time.Since(disabled), err
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		for i, h := range hosts {
			require.NotZero(t, stopped[i], "%s: reads still succeed 5 s after the disable (attach: %s)", h.name, attached[i].stderr)
			require.LessOrEqual(t, stopped[i], 5*time.Second, "%s: reads failed only %v after the disable", h.name, stopped[i])
			t.Logf("%s: reads fail %v after the disable (%v)", h.name, stopped[i].Round(time.Millisecond), lastErr[i])
		}
		for i, h := range hosts {
			code := attached[i].exitCode(t, 30*time.Second)
			require.Equal(t, 1, code, "%s: the locked-out attach process exits 1: %s", h.name, attached[i].stderr)
			t.Logf("%s: attach exited %d: %s", h.name, code, strings.TrimSpace(attached[i].stderr.String()))
			_, err := e2eReadAllNBD(socks[i])
			require.Error(t, err, "%s: a new NBD connection reads nothing", h.name)
			conns[i].Close()
		}
		// A new attach is refused, naming the key's state.
		for i, h := range hosts {
			p, err := h.tryAttach(h.vols[0], socks[i])
			if p != nil {
				p.kill()
			}
			require.Error(t, err, "%s: attach while the key is disabled", h.name)
			require.Regexp(t, `(?i)\b(suspended|disabled)\b`, err.Error(), "%s: the refusal names the key state", h.name)
			t.Logf("%s: attach refused: %v", h.name, err)
		}
		// Every host's agent has confirmed the lockout to the service: its latest
		// acknowledgement says suspended, for the disable's feed event.
		deadline := time.Now().Add(20 * time.Second)
		for _, h := range hosts {
			for {
				a := srv.acks(key)[h.name]
				if a.State == "suspended" && a.Type == "disable" && a.Cursor != "" {
					break
				}
				require.True(t, time.Now().Before(deadline), "%s: no acknowledgement of the lockout (latest %+v)", h.name, a)
				time.Sleep(50 * time.Millisecond)
			}
		}
		// Enable after the 30 s cool-down: the server comes back two hours later on its clock
		// (also past the hourly rotation limit for what follows).
		srv.restart(2 * time.Hour)
		srv.keyAction(key, "enable")
		enabled := time.Now()
		want = append(want, "enable policy=false")
		for i, h := range hosts {
			// The host may need a moment to learn of the enable.
			p, err := h.tryAttach(h.vols[0], socks[i])
			for err != nil {
				require.Less(t, time.Since(enabled), 10*time.Second, "%s: attach after the enable: %v", h.name, err)
				time.Sleep(100 * time.Millisecond)
				p, err = h.tryAttach(h.vols[0], socks[i])
			}
			attached[i] = p
			got, err := e2eReadAllNBD(socks[i])
			require.NoError(t, err, "%s: reading after re-attach", h.name)
			require.True(t, bytes.Equal(patterns[i], got), "%s: the bytes written before the disable read back exactly", h.name)
			t.Logf("%s: re-attached %v after the enable; %d bytes read back as written", h.name, time.Since(enabled).Round(time.Millisecond), len(got))
		}
	})

	step("agent killed mid-rewrap and events while it is down are applied after restart", func() {
		h0 := hosts[0]
		// Catch the pass in the middle: right after the rotation, poll the images'
		// modification times (a stat each, cheap next to a rewrap) and kill the agent as soon
		// as one of its 50 headers was rewritten. Should a kill still land after the whole
		// pass, the agent is restarted and the next hour's rotation tried, up to 3 times.
		var mid string
		for attempt := 1; ; attempt++ {
			before := h0.mtimes()
			srv.keyAction(key, "rotate")
			want = append(want, "rotate policy=false")
			mid, _ = srv.keyMeta(key)
			start := time.Now()
			changed := 0
			for changed = h0.changedSince(before); changed == 0; changed = h0.changedSince(before) {
				require.Less(t, time.Since(start), 10*time.Second, "%s: the agent rewrapped nothing after the rotation:%s", h0.name, agentsState(hosts[:1]))
				time.Sleep(time.Millisecond)
			}
			require.NoError(t, h0.agent.cmd.Process.Signal(syscall.SIGKILL))
			<-h0.agent.exited
			onMid, total, err := countOn(hosts[:1], mid)
			require.NoError(t, err)
			t.Logf("attempt %d: %s: agent killed %v after the rotation, %d headers rewritten then; %d of %d volumes on the new version", attempt, h0.name,
				time.Since(start).Round(time.Millisecond), changed, onMid, total)
			var which []string
			for i, m := range h0.mtimes() {
				if !m.Equal(before[i]) {
					which = append(which, filepath.Base(h0.vols[i]))
				}
			}
			t.Logf("rewritten when the agent was killed: %v", which)
			if onMid > 0 && onMid < total {
				break
			}
			require.Less(t, attempt, 3, "the kill never landed inside the rewrap pass")
			h0.startAgent()
			waitConverged(t, hosts, mid, 10*time.Second)
			srv.restart(2 * time.Hour) // past the hourly rotation limit
		}
		// The other hosts converge meanwhile.
		waitConverged(t, hosts[1:], mid, 10*time.Second)

		// While the agent is down: another rotation (an hour later on the server clock), a
		// disable, and an enable (after the 30 s cool-down), across two server restarts.
		srv.restart(2 * time.Hour)
		srv.keyAction(key, "rotate")
		latest, _ := srv.keyMeta(key)
		want = append(want, "rotate policy=false")
		require.NotEqual(t, mid, latest)
		waitConverged(t, hosts[1:], latest, 10*time.Second)
		srv.keyAction(key, "disable")
		for i := range hosts {
			attached[i].exitCode(t, 30*time.Second)
		}
		srv.restart(time.Minute)
		srv.keyAction(key, "enable")
		want = append(want, "disable policy=false", "enable policy=false")

		on, total, err := countOn(hosts[:1], latest)
		require.NoError(t, err)
		t.Logf("%s: %d of %d volumes on the latest version before the agent restarts", h0.name, on, total)
		require.Less(t, on, total)
		h0.startAgent()
		took := waitConverged(t, hosts, latest, 30*time.Second)
		on, total, err = countOn(hosts, latest)
		require.NoError(t, err)
		require.Equal(t, total, on)
		t.Logf("after the agent restart: %d of %d volumes on the latest version in %v", on, total, took.Round(time.Millisecond))
		for _, h := range hosts {
			reg := h.registryVersions()
			for _, p := range h.vols {
				require.Equal(t, latest, reg[p], "%s: the registry record of %s", h.name, p)
			}
		}
		// The disable and enable it missed leave the host's volume attachable, its data intact.
		p := h0.attach(h0.vols[0], socks[0])
		got, err := e2eReadAllNBD(socks[0])
		require.NoError(t, err)
		require.True(t, bytes.Equal(patterns[0], got), "%s: the data reads back after the missed disable and enable", h0.name)
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
		require.Equal(t, 0, p.exitCode(t, 30*time.Second))
	})

	step("the feed kept every event across the server restarts", func() {
		readFeed()
		var got []string
		for _, e := range fed {
			if e.KeyID == key {
				got = append(got, fmt.Sprintf("%s policy=%v", e.Type, e.Policy))
			}
		}
		require.Equal(t, want, got, "the key's events in the feed after the setup, in order")
	})
	for _, h := range hosts {
		out := h.mustRun("--json", "agent", "status")
		t.Logf("%s: agent status: %s", h.name, strings.Join(strings.Fields(out), " "))
		// Hosts share the key: no agent counts another host's volumes as its failures.
		var st struct {
			FailedVolumes *int `json:"failedVolumes"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &st))
		require.NotNil(t, st.FailedVolumes, "agent status has failedVolumes")
		require.Zero(t, *st.FailedVolumes, "%s: agent status reports failed volumes", h.name)
	}
	t.Logf("total %v", time.Since(testStart).Round(time.Millisecond))
}

// agentsState describes the hosts' agents for a failure message: running or how they
// exited, and the end of their stderr.
func agentsState(hosts []*e2eHost) string {
	var b strings.Builder
	for _, h := range hosts {
		if h.agent == nil {
			continue
		}
		state := "running"
		if h.agent.done() {
			state = fmt.Sprintf("exited: %v", h.agent.err)
		}
		log := h.agent.stderr.String()
		if len(log) > 2000 {
			log = "..." + log[len(log)-2000:]
		}
		fmt.Fprintf(&b, "\n%s agent %s; stderr:\n%s", h.name, state, log)
	}
	return b.String()
}
