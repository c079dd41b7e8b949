package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"golang.org/x/sys/unix"

	"crkvol/crk"
	"crkvol/crk/kpapi"
)

// KMSOptions tune RunKMS.
type KMSOptions struct {
	// Quick measures shorter windows and fewer rounds (about 8 s in all instead of 35 s).
	Quick bool
	// Dir holds the key store (a bbolt file, fsync on every commit, as kms serve runs); a
	// new temporary directory under os.TempDir if empty. Everything created is removed.
	Dir string
	// Callers are the numbers of concurrent callers measured; 1, 8 and 32 if empty. 1 is
	// always measured: it is every ratio's reference.
	Callers []int
	// Progress, if set, receives a line as each measurement starts.
	Progress func(string)
}

// Transports of the KMS section.
const (
	// KMSInProcess calls crk.Service directly.
	KMSInProcess = "in-process"
	// KMSHTTP calls a Key Protect API server (crk/kpapi) on loopback with the official
	// client, keyprotect-go-client.
	KMSHTTP = "http"
)

// KMSResult is one measured case of RunKMS.
type KMSResult struct {
	// Transport is KMSInProcess or KMSHTTP.
	Transport string `json:"transport"`
	// Callers is the number of concurrent callers, each with its own root key (and, over
	// HTTP, its own client, token and keep-alive connections).
	Callers int `json:"callers"`
	// PairsPerSec is the best rate of wrap+unwrap pairs over the rounds.
	PairsPerSec float64 `json:"pairsPerSec"`
	// Pairs is how many pairs all the rounds made.
	Pairs int64 `json:"pairs"`
	// CommitsPerPair and FlushesPerPair are the store's commits and flushes (crk.StoreStats)
	// per pair over all the rounds: each operation's audit event is durable before it
	// returns, and concurrent callers share commits.
	CommitsPerPair float64 `json:"commitsPerPair"`
	FlushesPerPair float64 `json:"flushesPerPair"`
	// CPUPerPairUS is the CPU time (user and system) of the whole process per pair over all
	// the rounds, in microseconds: the service's and, over HTTP, the clients' too. Many
	// callers are bound by it on a small machine; one caller waits for its commits' flushes.
	CPUPerPairUS float64 `json:"cpuPerPairUs"`
}

// KMSReport is a whole RunKMS run.
type KMSReport struct {
	// Store says what the key store is: a bbolt file with fsync on every commit.
	Store string `json:"store"`
	// FileSystem is the file system of the store's directory.
	FileSystem string `json:"fileSystem"`
	// Rounds is how many times each case was measured, interleaved; Window how long each
	// measurement ran.
	Rounds   int         `json:"rounds"`
	WindowMS float64     `json:"windowMs"`
	Results  []KMSResult `json:"results"`
}

// kmsTarget is the ratio of pairs/s the project aims at for 32 HTTP callers over 1 caller.
const kmsTarget = 10

// RunKMS measures wrap+unwrap pairs per second of the key service with 1, 8 and 32
// concurrent callers (KMSOptions.Callers), in-process (crk.Service) and over HTTP (a kpapi
// server on 127.0.0.1 and the official client, each caller authenticated by a bearer token
// of an API key, as kms serve is used), on one bbolt store with fsync in opts.Dir. Every
// case runs once per round, the rounds interleaved so that each case sees the machine in
// the same states; the best round counts. Each operation's audit event is durable before
// its answer: the concurrent callers' events share commits (crk's group commit), which the
// commits and flushes per pair show.
func RunKMS(ctx context.Context, opts KMSOptions) (rep *KMSReport, err error) {
	callers := []int{1, 8, 32}
	if len(opts.Callers) > 0 {
		callers = append([]int{1}, opts.Callers...)
		slices.Sort(callers)
		callers = slices.Compact(callers)
		if callers[0] < 1 {
			return nil, fmt.Errorf("bench kms: %d callers: want 1 or more", callers[0])
		}
	}
	rounds, window := 4, 1200*time.Millisecond
	if opts.Quick {
		rounds, window = 3, 300*time.Millisecond
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	dir, err := os.MkdirTemp(opts.Dir, "crkvol-bench-kms")
	if err != nil {
		return nil, fmt.Errorf("bench kms: %w", err)
	}
	defer os.RemoveAll(dir)

	env, err := newKMSEnv(ctx, dir, callers[len(callers)-1])
	if err != nil {
		return nil, fmt.Errorf("bench kms: %w", err)
	}
	defer env.close()

	rep = &KMSReport{Store: "bbolt, fsync on every commit", FileSystem: fileSystem(dir),
		Rounds: rounds, WindowMS: float64(window) / float64(time.Millisecond)}
	type acc struct {
		best             float64
		pairs            int64
		commits, flushes uint64
		cpu              time.Duration
	}
	results := map[string]map[int]*acc{KMSInProcess: {}, KMSHTTP: {}}
	for _, tr := range []string{KMSInProcess, KMSHTTP} {
		for _, n := range callers {
			results[tr][n] = &acc{}
			// A short warm-up: connections, caches and the store's pages.
			if _, _, err := env.measure(ctx, tr, n, window/8); err != nil {
				return nil, fmt.Errorf("bench kms: %s, %d callers: %w", tr, n, err)
			}
		}
	}
	for r := range rounds {
		for _, n := range callers {
			for _, tr := range []string{KMSInProcess, KMSHTTP} {
				progress(fmt.Sprintf("kms: round %d of %d: %s, %s", r+1, rounds, tr, callersText(n)))
				before, cpuBefore := env.svc.StoreStats(), processCPU()
				pairs, elapsed, err := env.measure(ctx, tr, n, window)
				if err != nil {
					return nil, fmt.Errorf("bench kms: %s, %d callers: %w", tr, n, err)
				}
				after, cpuAfter := env.svc.StoreStats(), processCPU()
				a := results[tr][n]
				a.best = max(a.best, float64(pairs)/elapsed.Seconds())
				a.pairs += pairs
				a.commits += after.Commits - before.Commits
				a.flushes += after.Flushes - before.Flushes
				a.cpu += cpuAfter - cpuBefore
			}
		}
	}
	for _, tr := range []string{KMSInProcess, KMSHTTP} {
		for _, n := range callers {
			a := results[tr][n]
			res := KMSResult{Transport: tr, Callers: n, PairsPerSec: a.best, Pairs: a.pairs}
			if a.pairs > 0 {
				res.CommitsPerPair = float64(a.commits) / float64(a.pairs)
				res.FlushesPerPair = float64(a.flushes) / float64(a.pairs)
				res.CPUPerPairUS = float64(a.cpu.Microseconds()) / float64(a.pairs)
			}
			rep.Results = append(rep.Results, res)
		}
	}
	return rep, nil
}

// processCPU returns the CPU time (user and system) the process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// kmsEnv is the key service of a RunKMS run, its HTTP server, and one root key and one
// client per caller.
type kmsEnv struct {
	tenants *kpapi.Tenants
	svc     *crk.Service
	srv     *http.Server
	keys    []string
	clients []*kp.Client
	conns   []*http.Transport
	dek     []byte // 32 random bytes
	dek64   []byte // dek in base64, as the official client takes it
}

func newKMSEnv(ctx context.Context, dir string, n int) (e *kmsEnv, err error) {
	e = &kmsEnv{dek: make([]byte, 32)}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if _, err := rand.Read(e.dek); err != nil {
		return nil, err
	}
	e.dek64 = []byte(base64.StdEncoding.EncodeToString(e.dek))
	if e.tenants, err = kpapi.OpenTenants(dir, crk.Options{}); err != nil {
		return nil, err
	}
	inst, svc := e.tenants.Default()
	if svc == nil {
		return nil, errors.New("the default instance's store did not open")
	}
	e.svc = svc
	apiKey, err := e.tenants.CreateAPIKey(inst)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.srv = &http.Server{Handler: kpapi.NewServer(e.tenants), ReadHeaderTimeout: time.Minute}
	go e.srv.Serve(ln)
	url := "http://" + ln.Addr().String()
	for i := range n {
		k, err := svc.CreateRootKey(ctx, fmt.Sprintf("bench-kms-%d", i))
		if err != nil {
			return nil, err
		}
		e.keys = append(e.keys, k.ID)
		tok, _, err := e.tenants.Exchange(apiKey)
		if err != nil {
			return nil, err
		}
		// Each caller has its own connections, kept alive (the client's default transport
		// keeps none).
		tr := kp.DefaultTransport().(*http.Transport).Clone()
		tr.DisableKeepAlives = false
		tr.MaxIdleConnsPerHost = 4
		e.conns = append(e.conns, tr)
		c, err := kp.New(kp.ClientConfig{BaseURL: url, Authorization: "Bearer " + tok, InstanceID: inst, Verbose: kp.VerboseNone}, tr)
		if err != nil {
			return nil, err
		}
		e.clients = append(e.clients, c)
	}
	return e, nil
}

func (e *kmsEnv) close() {
	for _, tr := range e.conns {
		tr.CloseIdleConnections()
	}
	if e.srv != nil {
		e.srv.Close()
	}
	if e.tenants != nil {
		e.tenants.Close()
	}
}

// pair makes one wrap and one unwrap as caller i over transport tr.
func (e *kmsEnv) pair(ctx context.Context, tr string, i int) error {
	if tr == KMSInProcess {
		w, err := e.svc.Wrap(ctx, e.keys[i], e.dek, nil)
		if err != nil {
			return err
		}
		u, err := e.svc.Unwrap(ctx, e.keys[i], w.Ciphertext, nil)
		if err != nil {
			return err
		}
		clear(u.Plaintext)
		return nil
	}
	ct, err := e.clients[i].Wrap(ctx, e.keys[i], e.dek64, nil)
	if err != nil {
		return err
	}
	_, err = e.clients[i].Unwrap(ctx, e.keys[i], ct, nil)
	return err
}

// measure runs n callers making pairs for window and returns how many pairs they made and
// the time from the start until the last one finished.
func (e *kmsEnv) measure(ctx context.Context, tr string, n int, window time.Duration) (int64, time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		pairs atomic.Int64
		wg    sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(window)
	for i := range n {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := e.pair(ctx, tr, i); err != nil {
					cancel(err)
					return
				}
				pairs.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return 0, 0, err
	}
	return pairs.Load(), elapsed, nil
}

// find returns the result of a transport and number of callers.
func (r *KMSReport) find(tr string, n int) (KMSResult, bool) {
	for _, x := range r.Results {
		if x.Transport == tr && x.Callers == n {
			return x, true
		}
	}
	return KMSResult{}, false
}

// Ratios returns, for each transport, the pairs/s of each number of callers over one
// caller's (the target: 10 for 32 callers over HTTP).
func (r *KMSReport) Ratios() []Ratio {
	var out []Ratio
	for _, x := range r.Results {
		one, ok := r.find(x.Transport, 1)
		if x.Callers == 1 || !ok || one.PairsPerSec == 0 {
			continue
		}
		ratio := Ratio{Section: "kms", Name: fmt.Sprintf("%s, %d callers", x.Transport, x.Callers),
			Value: x.PairsPerSec / one.PairsPerSec, Against: "1 caller"}
		if x.Transport == KMSHTTP && x.Callers == 32 {
			ratio.Target = kmsTarget
		}
		out = append(out, ratio)
	}
	return out
}

// WriteTable prints the KMS report: pairs/s, the ratio to one caller, the commits and
// flushes per pair and the process's CPU time per pair, by transport and number of callers.
func (r *KMSReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "KMS: wrap+unwrap pairs/s, %s on %s, best of %d interleaved rounds of %.0f ms\n",
		r.Store, r.FileSystem, r.Rounds, r.WindowMS)
	fmt.Fprintf(w, "  %-10s  crk.Service called directly\n", KMSInProcess)
	fmt.Fprintf(w, "  %-10s  kpapi server on 127.0.0.1, keyprotect-go-client, a bearer token and connections per caller\n", KMSHTTP)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "transport\tcallers\tpairs/s\tvs 1 caller\tcommits/pair\tflushes/pair\tCPU µs/pair\t")
	for _, x := range r.Results {
		ratio := "-"
		if one, ok := r.find(x.Transport, 1); ok && one.PairsPerSec > 0 {
			ratio = fmt.Sprintf("%.2fx", x.PairsPerSec/one.PairsPerSec)
			if x.Transport == KMSHTTP && x.Callers == 32 {
				ratio += fmt.Sprintf(" (target %dx)", kmsTarget)
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%.3f\t%.3f\t%.0f\t\n", x.Transport, x.Callers, x.PairsPerSec, ratio, x.CommitsPerPair, x.FlushesPerPair, x.CPUPerPairUS)
	}
	return tw.Flush()
}

// callersText is "1 caller" or "n callers".
func callersText(n int) string {
	if n == 1 {
		return "1 caller"
	}
	return fmt.Sprintf("%d callers", n)
}
