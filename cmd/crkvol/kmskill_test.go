package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/tooltest"
)

// lastID records the Correlation-Id of the last request a client sent: a kpAck names its
// request by it (keyprotect-go-client sends a new UUID with each call, the same one with
// each retry of it, and kms serve records it in the call's audit event).
type lastID struct {
	next http.RoundTripper
	mu   sync.Mutex
	id   string
}

func (l *lastID) RoundTrip(r *http.Request) (*http.Response, error) {
	l.mu.Lock()
	l.id = r.Header.Get("Correlation-Id")
	l.mu.Unlock()
	return l.next.RoundTrip(r)
}

func (l *lastID) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.id
}

// kpAck is an operation kms serve acknowledged (answered 2xx).
type kpAck struct {
	action, keyID, corrID string
	// ct and pt (base64) are a wrap's ciphertext and plaintext.
	ct, pt []byte
}

// serveProcess starts `crkvol kms serve` on the state directory of env in dir, writing its
// URL to addrFile, and returns the process, the URL, and a channel closed when it has ended.
func serveProcess(t *testing.T, dir string, env []string, addrFile, token string) (*exec.Cmd, string, <-chan struct{}) {
	t.Helper()
	serve := exec.Command("crkvol", "kms", "serve", "--listen", "127.0.0.1:0", "--addr-file", addrFile, "--static-token", token)
	serve.Dir = dir
	serve.Env = append(append(os.Environ(), "CRKVOL_MASTER_KEY="), env...)
	log := &tooltest.SyncBuffer{}
	serve.Stderr = log
	require.NoError(t, serve.Start())
	stopped := make(chan struct{})
	go func() { serve.Wait(); close(stopped) }()
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-stopped:
		case <-time.After(time.Minute):
			serve.Process.Kill()
		}
		if t.Failed() {
			t.Logf("kms serve log:\n%s", log.String())
		}
	})
	var url string
	waitFor(t, "kms serve listening", time.Minute, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, addrFile))
		url = strings.TrimSpace(string(b))
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	return serve, url, stopped
}

// TestKMSServeSIGKILL kills `crkvol kms serve` with SIGKILL while concurrent callers of the
// official client make wrap+unwrap pairs, each caller with its own key, connections and
// correlation ids, and checks that nothing acknowledged was lost: every operation answered
// 2xx has its audit event (matched by the request's correlation id, action and key), and,
// once the server runs again on the same state directory, every acknowledged wrap's
// ciphertext unwraps to its plaintext. A plain run uses 8 callers and kills after 100 pairs;
// CI (CRKVOL_LONG_TESTS=1) 32 callers and 1500 pairs.
func TestKMSServeSIGKILL(t *testing.T) {
	t.Parallel()
	callers, killAfter := tooltest.Scale(32, 8), int64(tooltest.Scale(1500, 100))
	const token = "sigkill-test-token"
	dir := t.TempDir()
	env := []string{"CRKVOL_STATE=" + filepath.Join(dir, "served")}
	code, out, errOut := runEnv(t, dir, env, "--json", "kms", "instance", "list")
	require.Zero(t, code, errOut)
	var insts []struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &insts), out)
	require.NotEmpty(t, insts)
	inst := insts[0].ID

	serve, url, stopped := serveProcess(t, dir, env, "addr1.txt", token)
	newClient := func(url string) (*kp.Client, *lastID) {
		tr := kp.DefaultTransport().(*http.Transport).Clone()
		tr.DisableKeepAlives = false
		tr.MaxIdleConnsPerHost = 2
		t.Cleanup(tr.CloseIdleConnections)
		ids := &lastID{next: tr}
		c, err := kp.New(kp.ClientConfig{BaseURL: url, Authorization: "Bearer " + token, InstanceID: inst, Verbose: kp.VerboseNone}, ids)
		require.NoError(t, err)
		return c, ids
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	acks := make([][]kpAck, callers)
	var (
		pairs atomic.Int64
		wg    sync.WaitGroup
	)
	for i := range callers {
		c, ids := newClient(url)
		k, err := c.CreateRootKey(ctx, fmt.Sprintf("sigkill-%d", i), nil)
		require.NoError(t, err)
		wg.Go(func() {
			for ctx.Err() == nil {
				raw := make([]byte, 32)
				rand.Read(raw)
				pt := []byte(base64.StdEncoding.EncodeToString(raw))
				ct, err := c.Wrap(ctx, k.ID, pt, nil)
				if err != nil {
					return // the server was killed
				}
				acks[i] = append(acks[i], kpAck{action: crk.ActionWrap, keyID: k.ID, corrID: ids.last(), ct: ct, pt: pt})
				got, err := c.Unwrap(ctx, k.ID, ct, nil)
				if err != nil {
					return
				}
				acks[i] = append(acks[i], kpAck{action: crk.ActionUnwrap, keyID: k.ID, corrID: ids.last()})
				if !bytes.Equal(got, pt) {
					t.Errorf("caller %d: unwrap gave %q, want %q", i, got, pt)
					return
				}
				pairs.Add(1)
			}
		})
	}
	waitFor(t, fmt.Sprintf("%d pairs acknowledged", killAfter), 2*time.Minute, func() bool { return pairs.Load() >= killAfter })
	require.NoError(t, serve.Process.Signal(syscall.SIGKILL))
	<-stopped
	cancel() // callers still retrying stop
	wg.Wait()
	var all []kpAck
	for _, a := range acks {
		all = append(all, a...)
	}
	t.Logf("%d callers, %d operations acknowledged before SIGKILL", callers, len(all))
	require.GreaterOrEqual(t, int64(len(all)), 2*killAfter)

	// Every acknowledged operation has its event: the store opens after the kill.
	code, out, errOut = runEnv(t, dir, env, "--json", "events", "--limit", "0")
	require.Zero(t, code, errOut)
	var evs []crk.Event
	require.NoError(t, json.Unmarshal([]byte(out), &evs))
	type evKey struct{ action, keyID, corrID string }
	recorded := map[evKey]int{}
	perKey := map[[2]string]int{} // key id and action: events
	for _, ev := range evs {
		if ev.Outcome == crk.OutcomeSuccess {
			recorded[evKey{ev.Action, ev.KeyID, ev.CorrelationID}]++
			perKey[[2]string{ev.KeyID, ev.Action}]++
		}
	}
	acked := map[[2]string]int{}
	missing := 0
	for _, a := range all {
		require.NotEmpty(t, a.corrID)
		acked[[2]string{a.keyID, a.action}]++
		if recorded[evKey{a.action, a.keyID, a.corrID}] == 0 {
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged %s of key %s (correlation id %s) has no event", a.action, a.keyID, a.corrID)
			}
		}
	}
	assert.Zero(t, missing, "acknowledged operations without their event")
	for k, n := range acked {
		// A call whose answer the kill cut off may have its event too (and a retried one
		// two): never fewer events than acknowledgements.
		assert.GreaterOrEqual(t, perKey[k], n, "events of %v", k)
	}

	// Every acknowledged wrap unwraps on the restarted server.
	_, url, _ = serveProcess(t, dir, env, "addr2.txt", token)
	for i := range callers { // each caller's wraps through a client of its own, concurrently
		c, _ := newClient(url)
		wg.Go(func() {
			for _, a := range acks[i] {
				if a.action != crk.ActionWrap {
					continue
				}
				got, err := c.Unwrap(context.Background(), a.keyID, a.ct, nil)
				if !assert.NoError(t, err, "wrap %s of key %s", a.corrID, a.keyID) || !assert.Equal(t, a.pt, got, "wrap %s of key %s", a.corrID, a.keyID) {
					return
				}
			}
		})
	}
	wg.Wait()
}
