package main

// The acceptance tests of issue 20 that need real processes: `crkvol kms serve --store
// postgres://…` replicas on one PostgreSQL database (internal/pgtest), driven by the official
// Key Protect client (and plain HTTP for what it lacks: registrations), with replicas killed
// and restarted and the database restarted under load. All are long tests (CI runs them).

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// haCluster is n kms serve replicas on one PostgreSQL database, sharing one virtual service
// time (each replica's --now is the shared clock's reading when it starts).
type haCluster struct {
	t        *testing.T
	pg       *pgtest.Cluster
	url      string // the database
	reps     []*kmsProc
	base     time.Time // the service time at baseWall
	baseWall time.Time
	instance string
	token    string // a bearer token from an API key, valid on every replica
}

// newHACluster starts n replicas on a fresh database of a PostgreSQL server of the test's
// own, the service clock starting at t0.
func newHACluster(t *testing.T, n int, t0 time.Time) *haCluster {
	t.Helper()
	bin, err := exec.LookPath("crkvol")
	require.NoError(t, err, "testscript puts crkvol in PATH")
	pg := pgtest.New(t)
	c := &haCluster{t: t, pg: pg, url: pg.NewDatabase(t), base: t0, baseWall: time.Now()}
	dir := t.TempDir()
	// The first replica makes the master key file; the others get a copy.
	for i := range n {
		var keyFrom *kmsProc
		if i > 0 {
			keyFrom = c.reps[0]
		}
		r := newKMSOn(t, bin, filepath.Join(dir, fmt.Sprintf("replica%d", i)), c.url, keyFrom)
		r.start(c.now())
		c.reps = append(c.reps, r)
		require.Equal(t, c.reps[0].instance, r.instance, "every replica has the same default instance")
	}
	c.instance = c.reps[0].instance
	// An API key made with the CLI on the database, exchanged at one replica: the token is
	// in the database, so every replica accepts it.
	cmd := exec.Command(bin, "--json", "kms", "apikey", "create", "--instance", c.instance)
	cmd.Env = c.reps[0].env()
	out, err := cmd.Output()
	require.NoError(t, err, "kms apikey create: %s", out)
	var key struct {
		APIKey string `json:"apikey"`
	}
	require.NoError(t, json.Unmarshal(out, &key))
	resp, err := http.PostForm(c.reps[1%n].url+"/identity/token", url.Values{
		"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {key.APIKey}})
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tok))
	c.token = tok.AccessToken
	return c
}

// now is the shared service clock.
func (c *haCluster) now() time.Time { return c.base.Add(time.Since(c.baseWall)) }

// restart stops replica i with SIGTERM and starts it again on the shared clock.
func (c *haCluster) restart(i int) {
	c.reps[i].stop()
	c.reps[i].start(c.now())
}

// conn opens a connection to the database for the test's own checks.
func (c *haCluster) conn(ctx context.Context) *pgx.Conn {
	c.t.Helper()
	conn, err := pgx.Connect(ctx, c.url)
	require.NoError(c.t, err)
	c.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// schedulerHolder returns the index of the replica holding a live scheduler lease, or -1.
func (c *haCluster) schedulerHolder(ctx context.Context) int {
	c.t.Helper()
	conn, err := pgx.Connect(ctx, c.url)
	if err != nil {
		return -1
	}
	defer conn.Close(ctx)
	var holder string
	err = conn.QueryRow(ctx, `SELECT holder FROM crkvol_leases WHERE name = 'scheduler' AND expires > now()`).Scan(&holder)
	if err != nil {
		return -1
	}
	for i, r := range c.reps {
		if r.cmd != nil && strings.HasSuffix(holder, "/"+strings.TrimPrefix(r.url, "http://")) {
			return i
		}
	}
	return -1
}

// failover is a client's transport: requests go to the replica the client prefers, or, when
// it cannot be reached (the dial failed, so the request was never sent), to the next one, as
// a load balancer in front of the replicas would. It counts the attempts the official
// client makes (it retries by itself on connection errors and 5xx).
type failover struct {
	hosts    []string // host:port of each replica
	pref     int
	base     *http.Transport
	attempts atomic.Int64
}

// newFailover returns the transport of a client of replica pref.
func newFailover(c *haCluster, pref int) *failover {
	f := &failover{pref: pref, base: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}}
	for _, r := range c.reps {
		f.hosts = append(f.hosts, strings.TrimPrefix(r.url, "http://"))
	}
	return f
}

func (f *failover) RoundTrip(req *http.Request) (*http.Response, error) {
	f.attempts.Add(1)
	var err error
	for i := range f.hosts {
		r := req.Clone(req.Context())
		r.URL.Host = f.hosts[(f.pref+i)%len(f.hosts)]
		r.Host = r.URL.Host
		if i > 0 && req.GetBody != nil {
			if r.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		var resp *http.Response
		resp, err = f.base.RoundTrip(r)
		var op *net.OpError
		if err == nil || !errors.As(err, &op) || op.Op != "dial" {
			return resp, err
		}
	}
	return nil, err
}

// haLoad is what the workers of TestHAReplicasUnderLoad were told, and what they saw.
type haLoad struct {
	mu        sync.Mutex
	keys      []string             // acknowledged creates
	rotated   map[string]int       // key → acknowledged rotations
	lost      map[string]int       // key → rotation attempts whose outcome is unknown
	wrapped   []haWrap             // acknowledged wraps
	regs      map[[2]string]*haReg // (key, crn) → last acknowledged state
	ops       map[string]int       // acknowledged operations by type
	outcomes  map[string]int       // refusals and errors by kind
	unwrapBad []string             // acknowledged unwraps that gave the wrong plaintext
	failures  map[string]error     // an example of each error kind
}

type haWrap struct{ key, dek, ct string }

// haReg is a registration's last acknowledged state; uncertain after a request whose outcome
// is unknown, until an acknowledged one settles it.
type haReg struct {
	present, uncertain bool
	description        string
}

func (l *haLoad) count(kind string, err error) {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		kind += "(end of run)"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.outcomes[kind]++
	if _, ok := l.failures[kind]; !ok && err != nil {
		l.failures[kind] = err
	}
}

func (l *haLoad) ack(op string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops[op]++
}

// classify names the outcome of a failed client call: "refused-<reason>" for a 4xx refusal
// (the server answered and did nothing), "5xx-<status>" or "transport" otherwise (outcome
// unknown).
func classify(err error) (kind string, refused bool) {
	var kerr *kp.Error
	if errors.As(err, &kerr) {
		reason := ""
		if len(kerr.Reasons) > 0 {
			reason = kerr.Reasons[0].Code
		}
		if kerr.StatusCode >= 400 && kerr.StatusCode < 500 {
			return fmt.Sprintf("refused-%d-%s", kerr.StatusCode, reason), true
		}
		return fmt.Sprintf("%d-%s", kerr.StatusCode, reason), false
	}
	return "transport", false
}

// TestHAReplicasUnderLoad: three replicas on one database, 32 workers of the official client
// doing create/rotate/wrap/unwrap/registrations for 30 s, one replica killed with SIGKILL and
// another restarted during the run; afterwards every acknowledged operation is present, through
// a surviving replica and in the database.
func TestHAReplicasUnderLoad(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	testStart := time.Now()
	// Every rotation falls in the service hour from 12:00: after a key's first rotation, the
	// others are refused as too soon.
	c := newHACluster(t, 3, time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	t.Logf("setup: 3 replicas in %v", time.Since(testStart).Round(time.Millisecond))
	const workers = 32
	run := 30 * time.Second
	l := &haLoad{rotated: map[string]int{}, lost: map[string]int{}, regs: map[[2]string]*haReg{},
		ops: map[string]int{}, outcomes: map[string]int{}, failures: map[string]error{}}
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		f := newFailover(c, w%len(c.reps))
		client := haClientOn(t, c, f)
		wg.Go(func() { haWorker(ctx, c, l, w, f, client) })
	}
	// The disruptions: replica 0 killed after 10 s (not started again), replica 1 restarted
	// with SIGTERM after 18 s. Replica 2 survives for the checks.
	time.Sleep(10 * time.Second)
	t.Logf("SIGKILL replica 0 at %v", time.Since(testStart).Round(time.Millisecond))
	c.reps[0].kill()
	time.Sleep(8 * time.Second)
	restartAt := time.Now()
	c.restart(1)
	t.Logf("replica 1 restarted (SIGTERM + start) in %v", time.Since(restartAt).Round(time.Millisecond))
	wg.Wait()
	// Requests the workers gave up on at the end of the run may still be running in the
	// servers: a graceful restart of the survivors waits for them, so that what the checks
	// read through the API and in the database no longer changes.
	c.restart(1)
	c.restart(2)
	t.Logf("load: %d workers for %v: acknowledged %v; refusals and errors %v", workers, run, l.ops, l.outcomes)
	for kind, err := range l.failures {
		t.Logf("example of %s: %v", kind, err)
	}
	require.NotZero(t, l.ops["create"])
	require.NotZero(t, l.ops["rotate"])
	require.NotZero(t, l.ops["wrap"])
	require.NotZero(t, l.ops["unwrap"])
	require.NotZero(t, l.ops["register"])
	assert.Empty(t, l.unwrapBad, "unwraps that gave another plaintext")
	for kind, n := range l.outcomes {
		assert.False(t, strings.HasSuffix(kind, "-unexpected"), "%d × %s: a registration refused although its state was known", n, kind)
	}

	// Through the surviving replica 2, with a client of its own.
	checkStart := time.Now()
	cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer ccancel()
	client := haClient(t, c, 2)
	conn := c.conn(cctx)
	dbVersions := map[string]int{}
	rows, err := conn.Query(cctx, `SELECT id, json_array_length(record->'versions') FROM crk_keys WHERE instance = $1`, c.instance)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		dbVersions[id] = n
	}
	require.NoError(t, rows.Err())
	var lostRotations atomic.Int64
	parallel(l.keys, func(id string) {
		k, err := client.GetKey(cctx, id)
		if !assert.NoError(t, err, "acknowledged key %s", id) {
			return
		}
		assert.Equal(t, 1, k.State, "key %s is active", id)
		vs, err := client.ListKeyVersions(cctx, id, nil)
		if !assert.NoError(t, err) {
			return
		}
		n := len(vs.KeyVersion)
		assert.Contains(t, dbVersions, id, "acknowledged key %s is in crk_keys", id)
		assert.Equal(t, n, dbVersions[id], "versions of %s through the API and in crk_keys", id)
		// versions = 1 + acknowledged rotations + rotations whose response was lost (at
		// most the attempts of unknown outcome).
		l.mu.Lock()
		rotated, lost := l.rotated[id], l.lost[id]
		l.mu.Unlock()
		assert.GreaterOrEqual(t, n-1, rotated, "key %s: versions %d, acknowledged rotations %d", id, n, rotated)
		assert.LessOrEqual(t, n-1, rotated+lost, "key %s: versions %d, acknowledged rotations %d, of unknown outcome %d", id, n, rotated, lost)
		lostRotations.Add(int64(n - 1 - rotated))
		// At most one rotation per service hour: version creation dates an hour apart after
		// the first (the key's creation).
		var dates []time.Time
		for _, v := range vs.KeyVersion {
			if assert.NotNil(t, v.CreationDate) {
				dates = append(dates, *v.CreationDate)
			}
		}
		slices.SortFunc(dates, time.Time.Compare)
		for i := 2; i < len(dates); i++ {
			assert.GreaterOrEqual(t, dates[i].Sub(dates[i-1]), time.Hour, "key %s rotated twice within an hour: %v", id, dates)
		}
	})
	t.Logf("checked %d acknowledged keys; %d acknowledged rotations, %d more rotations whose response was lost (allowed: %d attempts of unknown outcome)",
		len(l.keys), l.ops["rotate"], lostRotations.Load(), sum(l.lost))
	parallel(l.wrapped, func(w haWrap) {
		pt, err := client.Unwrap(cctx, w.key, []byte(w.ct), nil)
		if assert.NoError(t, err, "acknowledged wrap under %s", w.key) {
			assert.Equal(t, w.dek, string(pt))
		}
	})
	t.Logf("every one of %d acknowledged wraps unwraps", len(l.wrapped))
	// Registrations: the last acknowledged state of each CRN, in crk_registrations and
	// through the API.
	inDB := map[[2]string]string{}
	rows, err = conn.Query(cctx, `SELECT key_id, crn, record->>'description' FROM crk_registrations WHERE instance = $1`, c.instance)
	require.NoError(t, err)
	for rows.Next() {
		var k, crn string
		var desc *string
		require.NoError(t, rows.Scan(&k, &crn, &desc))
		inDB[[2]string{k, crn}] = deref(desc)
	}
	require.NoError(t, rows.Err())
	checked, uncertain := 0, 0
	for kc, r := range l.regs {
		if r.uncertain {
			uncertain++
			continue
		}
		checked++
		desc, ok := inDB[kc]
		assert.Equal(t, r.present, ok, "registration %v present", kc)
		if ok && r.present {
			assert.Equal(t, r.description, desc, "registration %v description", kc)
		}
		regs, err := client.ListRegistrations(cctx, kc[0], "")
		require.NoError(t, err)
		found := false
		for _, g := range regs.Registrations {
			found = found || g.ResourceCrn == kc[1]
		}
		assert.Equal(t, r.present, found, "registration %v listed by the API", kc)
	}
	t.Logf("registrations: %d CRNs checked against their last acknowledged state, %d left uncertain by a lost response", checked, uncertain)
	t.Logf("checks in %v; test in %v", time.Since(checkStart).Round(time.Millisecond), time.Since(testStart).Round(time.Millisecond))
}

// parallel calls fn on every item, eight at a time.
func parallel[T any](items []T, fn func(T)) {
	var wg sync.WaitGroup
	next := make(chan T)
	for range 8 {
		wg.Go(func() {
			for it := range next {
				fn(it)
			}
		})
	}
	for _, it := range items {
		next <- it
	}
	close(next)
	wg.Wait()
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// haClient is an official client for replica pref (failing over to the others), with the
// cluster's token.
func haClient(t *testing.T, c *haCluster, pref int) *kp.Client {
	t.Helper()
	f := newFailover(c, pref)
	return haClientOn(t, c, f)
}

// haClientOn is an official client on the transport f, with the cluster's token.
func haClientOn(t *testing.T, c *haCluster, f *failover) *kp.Client {
	t.Helper()
	cl, err := kp.New(kp.ClientConfig{BaseURL: c.reps[f.pref].url, Authorization: "Bearer " + c.token,
		InstanceID: c.instance, Verbose: kp.VerboseNone, Timeout: 20}, f)
	require.NoError(t, err)
	return cl
}

// haWorker runs random operations with client, whose transport is f (replica w mod 3, another
// when it cannot be reached), until ctx ends. Keys to rotate and wrap under are any
// acknowledged key; registrations go on the worker's own keys, and each CRN belongs to one
// worker, so its last acknowledged state is well defined.
func haWorker(ctx context.Context, c *haCluster, l *haLoad, w int, f *failover, client *kp.Client) {
	raw := &http.Client{Transport: f, Timeout: 20 * time.Second}
	rng := rand.New(rand.NewPCG(uint64(w), 20))
	var mine []string // this worker's acknowledged keys
	var myWraps []haWrap
	anyKey := func() string {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.keys) == 0 {
			return ""
		}
		return l.keys[rng.IntN(len(l.keys))]
	}
	for i := 0; ctx.Err() == nil; i++ {
		before := f.attempts.Load()
		op := rng.IntN(100)
		switch {
		case op < 8 || len(mine) == 0:
			k, err := client.CreateRootKey(ctx, fmt.Sprintf("ha-%d-%d", w, i), nil)
			if err != nil {
				kind, _ := classify(err)
				l.count("create:"+kind, err)
				continue
			}
			mine = append(mine, k.ID)
			l.mu.Lock()
			l.keys = append(l.keys, k.ID)
			l.mu.Unlock()
			l.ack("create")
		case op < 25:
			id := anyKey()
			err := client.Rotate(ctx, id, "")
			retried := int(f.attempts.Load() - before - 1)
			kind, refused := "", false
			if err != nil {
				kind, refused = classify(err)
			}
			l.mu.Lock()
			// An attempt before the last one may have rotated the key, its response lost;
			// and so may the last one if it did not end in a refusal.
			l.lost[id] += retried
			if err == nil {
				l.rotated[id]++
			} else if !refused {
				l.lost[id]++
			}
			l.mu.Unlock()
			if err != nil {
				l.count("rotate:"+kind, err)
				continue
			}
			l.ack("rotate")
		case op < 55:
			id := anyKey()
			dek := fmt.Sprintf("dek-%02d-%06d-%s", w, i, strings.Repeat("x", 16))
			ct, err := client.Wrap(ctx, id, []byte(base64.StdEncoding.EncodeToString([]byte(dek))), nil)
			if err != nil {
				kind, _ := classify(err)
				l.count("wrap:"+kind, err)
				continue
			}
			wr := haWrap{key: id, dek: base64.StdEncoding.EncodeToString([]byte(dek)), ct: string(ct)}
			myWraps = append(myWraps, wr)
			l.mu.Lock()
			l.wrapped = append(l.wrapped, wr)
			l.mu.Unlock()
			l.ack("wrap")
		case op < 80:
			if len(myWraps) == 0 {
				continue
			}
			wr := myWraps[rng.IntN(len(myWraps))]
			pt, err := client.Unwrap(ctx, wr.key, []byte(wr.ct), nil)
			if err != nil {
				kind, _ := classify(err)
				l.count("unwrap:"+kind, err)
				continue
			}
			if string(pt) != wr.dek {
				l.mu.Lock()
				l.unwrapBad = append(l.unwrapBad, wr.key)
				l.mu.Unlock()
			}
			l.ack("unwrap")
		default:
			haRegistration(ctx, c, l, raw, mine[rng.IntN(len(mine))], fmt.Sprintf("crn:v1:local:public:is:local:a/crkvol::volume:w%d-%d", w, rng.IntN(4)), rng, i)
		}
	}
}

// haRegistration creates, updates or deletes a registration with plain HTTP (the official
// client only lists them), following the CRN's last acknowledged state.
func haRegistration(ctx context.Context, c *haCluster, l *haLoad, raw *http.Client, key, crn string, rng *rand.Rand, i int) {
	kc := [2]string{key, crn}
	l.mu.Lock()
	r := l.regs[kc]
	if r == nil {
		r = &haReg{}
		l.regs[kc] = r
	}
	state := *r
	l.mu.Unlock()
	desc := fmt.Sprintf("d%d", i)
	var method, op string
	var body string
	switch {
	case !state.present || (state.uncertain && rng.IntN(2) == 0):
		method, op, body = http.MethodPost, "register", fmt.Sprintf(`{"preventKeyDeletion":false,"description":%q}`, desc)
	case rng.IntN(2) == 0:
		method, op, body = http.MethodPatch, "update-registration", fmt.Sprintf(`{"description":%q}`, desc)
	default:
		method, op = http.MethodDelete, "delete-registration"
	}
	u := c.reps[0].url + "/api/v2/keys/" + key + "/registrations/" + url.PathEscape(crn)
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	if err != nil {
		l.count(op+":request", err)
		return
	}
	req.Header.Set("authorization", "Bearer "+c.token)
	req.Header.Set("bluemix-instance", c.instance)
	req.Header.Set("content-type", "application/json")
	resp, err := raw.Do(req)
	status := 0
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case status >= 200 && status < 300:
		l.ops[op]++
		r.uncertain = false
		r.present = method != http.MethodDelete
		if method != http.MethodDelete {
			r.description = desc
		}
	case status >= 400 && status < 500:
		// Refused: nothing changed. Expected only while the state is uncertain (a create
		// of a registration that exists, an update or a delete of one that does not).
		kind := fmt.Sprintf("%s:refused-%d", op, status)
		if !state.uncertain {
			kind += "-unexpected"
		}
		l.outcomes[kind]++
	default:
		kind := fmt.Sprintf("%s:%d", op, status)
		if err != nil {
			kind = op + ":transport"
			if ctx.Err() != nil {
				kind += "(end of run)"
			}
			if _, ok := l.failures[kind]; !ok {
				l.failures[kind] = err
			}
		}
		l.outcomes[kind]++
		r.uncertain = true
	}
}

// TestHAPolicyRotationOnce: rotation policies that come due fire exactly once across three
// replicas, with the replica holding the scheduler lease killed (SIGKILL) 1.5 s before the
// due time: a surviving replica takes the lease over and rotates each due key once, within
// 15 s after the due time.
func TestHAPolicyRotationOnce(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	testStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newHACluster(t, 3, time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	const keys = 6
	var ids []string
	var lastDue, firstDue time.Time
	client := haClient(t, c, 0)
	for i := range keys {
		id := c.reps[i%3].createRootKey(fmt.Sprintf("policy-%d", i))
		c.reps[(i+1)%3].setRotationPolicy(id, 1)
		k, err := client.GetKey(ctx, id)
		require.NoError(t, err)
		// The API gives creation dates in whole seconds: the key is due within a second
		// after this.
		due := k.CreationDate.AddDate(0, 1, 0)
		if lastDue.IsZero() || due.Add(time.Second).After(lastDue) {
			lastDue = due.Add(time.Second)
		}
		if firstDue.IsZero() || due.Before(firstDue) {
			firstDue = due
		}
		ids = append(ids, id)
	}
	// Every replica stopped and started again with the shared clock 12 s before the last
	// due time (a month later): the policies come due ~12 s into this phase.
	for _, r := range c.reps {
		r.stop()
	}
	c.base, c.baseWall = lastDue.Add(-12*time.Second), time.Now()
	for _, r := range c.reps {
		r.start(c.now())
	}
	t.Logf("setup: %d keys with a 1-month policy, due from %s to %s; replicas restarted at %s (%v)",
		keys, firstDue.Format(time.RFC3339Nano), lastDue.Format(time.RFC3339Nano), c.now().Format(time.RFC3339Nano), time.Since(testStart).Round(time.Millisecond))
	for _, id := range ids {
		v, _ := c.reps[0].keyMeta(id)
		vs, err := client.ListKeyVersions(ctx, id, nil)
		require.NoError(t, err)
		require.Len(t, vs.KeyVersion, 1, "key %s (latest %s) not rotated before its due time", id, v)
	}
	// The feed's head before the rotations, read through one replica, continued through
	// another at the end.
	_, cursor := c.reps[2].feed("")
	// Kill the scheduler 1.5 s before the first due time.
	killAt := firstDue.Add(-1500 * time.Millisecond)
	holder := -1
	for c.now().Before(killAt) {
		if h := c.schedulerHolder(ctx); h >= 0 {
			holder = h
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.GreaterOrEqual(t, holder, 0, "a replica holds the scheduler lease")
	require.Equal(t, holder, c.schedulerHolder(ctx), "the scheduler holder did not change before the kill")
	c.reps[holder].kill()
	t.Logf("SIGKILL of replica %d, the scheduler, at service time %s (%s before the first due time)",
		holder, c.now().Format(time.RFC3339Nano), firstDue.Sub(c.now()).Round(time.Millisecond))
	survivor := (holder + 1) % 3
	client = haClient(t, c, survivor)
	// Wait for every key's policy rotation; the deadline, 15 s after the last due time, is
	// the acceptance criterion.
	deadline := lastDue.Add(15 * time.Second)
	var rotatedAt time.Time
	for {
		done := 0
		for _, id := range ids {
			vs, err := client.ListKeyVersions(ctx, id, nil)
			require.NoError(t, err)
			require.LessOrEqual(t, len(vs.KeyVersion), 2, "key %s rotated more than once", id)
			if len(vs.KeyVersion) == 2 {
				done++
			}
		}
		if done == keys {
			rotatedAt = c.now()
			break
		}
		require.True(t, c.now().Before(deadline), "%d of %d keys rotated by their policy within 15 s after the due time", done, keys)
		time.Sleep(200 * time.Millisecond)
	}
	newHolder := c.schedulerHolder(ctx)
	t.Logf("every due key rotated %s after the last due time, %s after the kill; scheduler now replica %d",
		rotatedAt.Sub(lastDue).Round(time.Millisecond), rotatedAt.Sub(killAt).Round(time.Millisecond), newHolder)
	assert.NotEqual(t, holder, newHolder)
	// Still exactly once a few seconds later, on every count: versions, the audit events and
	// the lifecycle feed (one rotation with policy=true per key).
	time.Sleep(3 * time.Second)
	conn := c.conn(ctx)
	for _, id := range ids {
		vs, err := client.ListKeyVersions(ctx, id, nil)
		require.NoError(t, err)
		assert.Len(t, vs.KeyVersion, 2, "key %s", id)
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT json_array_length(record->'versions') FROM crk_keys WHERE instance = $1 AND id = $2`, c.instance, id).Scan(&n))
		assert.Equal(t, 2, n, "versions of %s in crk_keys", id)
	}
	events, _ := c.reps[survivor].feed(cursor)
	policyRotations := map[string]int{}
	for _, e := range events {
		if e.Type == "rotate" {
			assert.True(t, e.Policy, "rotation of %s by the policy", e.KeyID)
			policyRotations[e.KeyID]++
		}
	}
	for _, id := range ids {
		assert.Equal(t, 1, policyRotations[id], "policy rotations of %s in the lifecycle feed", id)
	}
	// The rotations were logged by the surviving scheduler(s), each key once.
	logged := map[string]int{}
	for i, r := range c.reps {
		if i == holder {
			continue
		}
		r.stop()
		for _, line := range strings.Split(r.stderr.String(), "\n") {
			if strings.Contains(line, "rotation policy rotated a key") {
				for _, id := range ids {
					if strings.Contains(line, id) {
						logged[id]++
					}
				}
			}
		}
	}
	for _, id := range ids {
		assert.Equal(t, 1, logged[id], "log lines of the policy rotation of %s on the survivors", id)
	}
	t.Logf("test in %v", time.Since(testStart).Round(time.Millisecond))
}

// haStatus is the outcome of one request of TestHADatabaseRestart's load.
type haStatus struct {
	replica    int
	start, end time.Time
	status     int // 0: no response
	err        error
	body       string // of a failure, its start
}

// TestHADatabaseRestart: PostgreSQL restarted under load (a fast restart, then an outage
// longer than the replicas' retry window): the replicas recover without a restart of their
// own. Requests during the outage wait or fail with 503 (never 500), and succeed again
// afterwards on every replica; a lifecycle feed long poll made before the outage is woken by
// a rotation after it (the replica's LISTEN reconnected); the scheduler resumes (a key
// expiring after the outage is expired by it).
func TestHADatabaseRestart(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	testStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := newHACluster(t, 3, time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	client := haClient(t, c, 1)
	k, err := client.CreateRootKey(ctx, "restart-load", nil)
	require.NoError(t, err)
	key := k.ID

	// The feed's long polls, on replica 0, from its head: every event with the wall time
	// it arrived.
	type fedEvent struct {
		e2eFeedEvent
		at time.Time
	}
	var (
		feedMu sync.Mutex
		fed    []fedEvent
		polls  = map[string]int{} // outcomes of the long polls
	)
	_, cursor := c.reps[0].feed("")
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	wg.Go(func() {
		hc := &http.Client{Timeout: 90 * time.Second}
		for loadCtx.Err() == nil {
			req, _ := http.NewRequestWithContext(loadCtx, "GET", c.reps[0].url+"/api/crkvol/v1/lifecycle?wait=60s&cursor="+cursor, nil)
			req.Header.Set("authorization", "Bearer "+c.token)
			req.Header.Set("bluemix-instance", c.instance)
			resp, err := hc.Do(req)
			if err != nil {
				feedMu.Lock()
				polls["transport"]++
				feedMu.Unlock()
				time.Sleep(200 * time.Millisecond)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var page struct {
				Events []e2eFeedEvent `json:"events"`
				Cursor string         `json:"cursor"`
			}
			feedMu.Lock()
			polls[fmt.Sprint(resp.StatusCode)]++
			if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &page) == nil {
				for _, e := range page.Events {
					fed = append(fed, fedEvent{e, time.Now()})
				}
				cursor = page.Cursor
			}
			feedMu.Unlock()
			if resp.StatusCode != http.StatusOK {
				time.Sleep(200 * time.Millisecond)
			}
		}
	})

	// The load: 8 workers wrapping with plain HTTP (the official client would retry 5xx by
	// itself), worker w on replica w mod 3.
	var (
		loadMu  sync.Mutex
		results []haStatus
	)
	for w := range 8 {
		wg.Go(func() {
			hc := &http.Client{Timeout: 90 * time.Second}
			r := w % 3
			body := `{"plaintext":"` + base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("dek-of-worker-%02d-0123456789abcdef", w))) + `"}`
			for loadCtx.Err() == nil {
				req, _ := http.NewRequestWithContext(loadCtx, "POST", c.reps[r].url+"/api/v2/keys/"+key+"/actions/wrap", strings.NewReader(body))
				req.Header.Set("authorization", "Bearer "+c.token)
				req.Header.Set("bluemix-instance", c.instance)
				req.Header.Set("content-type", "application/json")
				s := haStatus{replica: r, start: time.Now()}
				resp, err := hc.Do(req)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					s.status = resp.StatusCode
					if s.status != http.StatusOK {
						s.body = string(b[:min(len(b), 300)])
					}
				}
				s.end, s.err = time.Now(), err
				if loadCtx.Err() != nil {
					return // cut by the end of the load
				}
				loadMu.Lock()
				results = append(results, s)
				loadMu.Unlock()
				if s.status != http.StatusOK {
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	// phase counts the statuses of the requests started (or, with ended, answered) from
	// from to to.
	phase := func(from, to time.Time, ended bool) map[int]int {
		loadMu.Lock()
		defer loadMu.Unlock()
		n := map[int]int{}
		for _, s := range results {
			at := s.start
			if ended {
				at = s.end
			}
			if !at.Before(from) && at.Before(to) {
				n[s.status]++
			}
		}
		return n
	}

	// A fast restart (open connections cut).
	time.Sleep(3 * time.Second)
	restartFrom := time.Now()
	c.pg.Restart(t)
	restartTo := time.Now()
	t.Logf("PostgreSQL restarted in %v", restartTo.Sub(restartFrom).Round(time.Millisecond))
	time.Sleep(4 * time.Second)
	t.Logf("requests answered before the restart: %v; during it and in the 4 s after: %v",
		phase(testStart, restartFrom, true), phase(restartFrom, time.Now(), true))

	// An outage longer than the replicas' retry window (pgdb.DefaultRetryFor, 30 s).
	stopFrom := time.Now()
	c.pg.Stop()
	const outage = 35 * time.Second
	time.Sleep(outage)
	c.pg.StartAgain(t)
	back := time.Now()
	t.Logf("PostgreSQL stopped for %v", back.Sub(stopFrom).Round(time.Millisecond))

	// Every replica serves again: the first success of each after the database is back.
	recovered := map[int]time.Duration{}
	for len(recovered) < 3 {
		require.True(t, time.Since(back) < 15*time.Second, "replicas serving again 15 s after the database came back: %v", recovered)
		loadMu.Lock()
		for _, s := range results {
			if s.status == http.StatusOK && s.end.After(back) {
				if _, ok := recovered[s.replica]; !ok {
					recovered[s.replica] = s.end.Sub(back)
				}
			}
		}
		loadMu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("first success after the database came back, by replica: %v", recovered)

	// The long poll on replica 0, made before the outage or re-made during it, sees a
	// rotation made through replica 1 after it.
	rotated := time.Now()
	require.NoError(t, client.Rotate(ctx, key, ""))
	var woken time.Duration
	for woken == 0 {
		require.True(t, time.Since(rotated) < 15*time.Second, "the long poll saw the rotation within 15 s")
		feedMu.Lock()
		for _, e := range fed {
			if e.KeyID == key && e.Type == "rotate" && e.at.After(rotated) {
				woken = e.at.Sub(rotated)
			}
		}
		feedMu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the feed long poll on replica 0 got the rotation %v after it", woken.Round(time.Millisecond))

	// The scheduler: a key expiring 3 s (service time) from now is expired by it.
	exp := c.now().Add(3 * time.Second).Truncate(time.Second).Add(time.Second)
	ek, err := client.CreateRootKey(ctx, "restart-expiring", &exp)
	require.NoError(t, err)
	conn := c.conn(ctx)
	for {
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM crk_events WHERE instance = $1 AND key_id = $2 AND action = 'kms.secrets.expire'`, c.instance, ek.ID).Scan(&n))
		if n > 0 {
			require.Equal(t, 1, n, "expiry events")
			break
		}
		require.True(t, c.now().Before(exp.Add(15*time.Second)), "the scheduler expired the key within 15 s of its expiration")
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the scheduler (replica %d) expired a key %v after its expiration", c.schedulerHolder(ctx), c.now().Sub(exp).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	stopLoad()
	wg.Wait()

	// A request waits for the database through the replica's retry window (30 s), then
	// fails: those answered during the outage are the ones that waited it out.
	during, after := phase(stopFrom, back, true), phase(back.Add(5*time.Second), time.Now(), false)
	t.Logf("requests answered during the outage: %v; started from 5 s after it: %v; long polls: %v", during, after, polls)
	loadMu.Lock()
	defer loadMu.Unlock()
	failed := 0
	for _, s := range results {
		switch {
		case s.status == http.StatusOK:
		case s.status == http.StatusServiceUnavailable:
			failed++
		default:
			t.Errorf("replica %d: a request started %v after the test began, answered in %v: status %d, %v %s", s.replica, s.start.Sub(testStart).Round(time.Millisecond), s.end.Sub(s.start).Round(time.Millisecond), s.status, s.err, s.body)
		}
	}
	assert.NotZero(t, during[http.StatusServiceUnavailable], "requests failing with 503 during an outage longer than the retry window")
	assert.Equal(t, map[int]int{http.StatusOK: after[http.StatusOK]}, after, "requests from 5 s after the outage")
	for _, r := range c.reps {
		require.NotNil(t, r.cmd, "no replica was restarted")
		select {
		case err := <-r.exited:
			t.Fatalf("a replica exited: %v: %s", err, r.stderr)
		default:
		}
	}
	t.Logf("%d requests, %d failed with 503; test in %v", len(results), failed, time.Since(testStart).Round(time.Millisecond))
}
