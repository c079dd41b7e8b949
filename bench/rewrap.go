package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/procs"
	"crkvol/keyslot"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// RewrapOptions tune RunRewrap.
type RewrapOptions struct {
	// Quick rotates a smaller fleet once instead of three interleaved rounds.
	Quick bool
	// Dir is where the fleet, the key service's store and the ceiling's files are made, in a
	// new directory removed at the end: put it on the disk the volumes live on. os.TempDir if
	// empty.
	Dir string
	// Volumes is the fleet's size; 1,000 if zero (200 with Quick).
	Volumes int
	// Concurrency is the rewraps run at once (volume.Options.Workers) and the ceiling's
	// goroutines; the volume package's default if zero.
	Concurrency int
	// Rounds is how many times each case is measured, interleaved, the best kept; 3 if zero
	// (1 with Quick).
	Rounds int
	// Progress, if set, receives a line as each step starts.
	Progress func(string)
	// Procs, when more than GOMAXPROCS, is the GOMAXPROCS the whole section runs with, the
	// ceiling and both rotations alike, raised at its start and put back at its end (the
	// setting is the process's: what else runs meanwhile gets it too). A pass's flushes
	// block processors (see RewrapReport.Procs), so that too few of them cap the ceiling
	// below the disk's rate.
	Procs int
}

// rewrapBudget and rewrapQuickBudget bound a RunRewrap's wall time, the fleet's making
// included: no round starts that would end past them (see RewrapReport.Rounds).
const (
	rewrapBudget      = 45 * time.Second
	rewrapQuickBudget = 15 * time.Second
)

// FleetVolumeSize is the data size of each volume of RunRewrap's fleet: a rewrap never reads
// nor writes the data area, so a small one costs nothing in what is measured.
const FleetVolumeSize = 1 << 20

// RewrapReport is a RunRewrap run: the same fleet rotated through the embedded key service
// and through the Key Protect API over loopback HTTP, beside the disk's own rate of the
// two-flush commits a rewrap is made of, all measured in the same run.
type RewrapReport struct {
	// Volumes is the fleet's size, each a LUKS2 image of FleetVolumeSize data bytes whose
	// file is VolumeFileSize bytes (sparse) with a header of MetadataSize bytes a copy.
	Volumes        int    `json:"volumes"`
	VolumeFileSize int64  `json:"volumeFileSize"`
	MetadataSize   uint64 `json:"metadataSize"`
	// Concurrency is the rewraps at once (Manager Workers) and the ceiling's goroutines.
	Concurrency int `json:"concurrency"`
	// Procs is the GOMAXPROCS the section ran with: a goroutine blocked in a flush keeps
	// its processor for a while, so that with one per CPU the commits' flushes leave CPUs
	// idle and runnable goroutines waiting, the ceiling's as a rotation's.
	Procs int `json:"procs"`
	// Rounds is how many interleaved rounds were run; each figure is the best round's. It is
	// fewer than asked when another round would have ended past the section's time budget
	// (45 s, 15 s with Quick, the fleet's making included).
	Rounds int `json:"rounds"`
	// FileSystem is the file system of the directory the fleet was made in.
	FileSystem string `json:"fileSystem"`
	// CreateSeconds is the wall time the fleet took to make (not part of any figure).
	CreateSeconds float64 `json:"createSeconds"`
	// Commit is what one LUKS2 token commit writes, as recorded on a fleet volume: what
	// the ceiling repeats.
	Commit CommitPattern `json:"commit"`
	// Ceiling is the rate of such commits the disk sustains at Concurrency, one per file
	// of a fleet-sized set of files, each opened and closed as a rewrap does.
	Ceiling RewrapResult `json:"ceiling"`
	// Local is a rotation through volume.Manager on the embedded key service (crk, bbolt
	// with fsync); Remote the same with the key service behind crk/kpapi on loopback HTTP
	// and volume/kms.Remote as its client.
	Local  RewrapResult `json:"local"`
	Remote RewrapResult `json:"remote"`
	// Each is every round's volumes/s (commits/s for the ceiling), in order.
	Each map[string][]float64 `json:"each"`
}

// CommitPattern is the I/O of one LUKS2 header commit.
type CommitPattern struct {
	// Writes and Bytes are its write calls and the bytes they write; Flushes its syncs.
	Writes  int   `json:"writes"`
	Bytes   int64 `json:"bytes"`
	Flushes int   `json:"flushes"`
	ops     []commitOp
}

// commitOp is a write of Data at Off, or with Sync a flush.
type commitOp struct {
	Off  int64
	Data []byte
	Sync bool
}

// RewrapResult is one measured case of RunRewrap: the best of its rounds.
type RewrapResult struct {
	// Name says what was measured.
	Name string `json:"name"`
	// PerSecond is volumes rewrapped a second (commits a second for the ceiling).
	PerSecond float64 `json:"perSecond"`
	// Rewrapped is the volumes the best round rewrapped (commits for the ceiling).
	Rewrapped int `json:"rewrapped"`
	// FlushesPerVolume is Flushes over Rewrapped; Flushes is HeaderFlushes (the syncs of the
	// volume images) + StoreFlushes (the key service's store) + RegistryFlushes (the volume
	// registry's), counted by the Manager and the stores in the best round.
	FlushesPerVolume float64 `json:"flushesPerVolume"`
	Flushes          int64   `json:"flushes"`
	HeaderFlushes    int64   `json:"headerFlushes"`
	StoreFlushes     int64   `json:"storeFlushes"`
	RegistryFlushes  int64   `json:"registryFlushes"`
	// HeaderBytes is what one volume's rewrap wrote to its image (one commit's writes for the
	// ceiling): the same, or the ceiling would not be the rewrap's.
	HeaderBytes int64 `json:"headerBytes"`
	// KMSCalls is the key service calls the pass made (batches count once).
	KMSCalls int `json:"kmsCalls,omitempty"`
	// CPUMicrosPerVolume is the CPU time (user and system) the whole process used during the
	// case, over Rewrapped: with two cores, a rewrap costing more CPU than the ceiling's commit
	// caps volumes/s below the ceiling whatever the flushes. The HTTP server of the remote
	// case runs in the same process, so its CPU is counted too.
	CPUMicrosPerVolume float64 `json:"cpuMicrosPerVolume"`
	// P50Ms and P99Ms are the median and 99th percentile time of one volume (one commit).
	P50Ms float64 `json:"p50Ms"`
	P99Ms float64 `json:"p99Ms"`
}

// RunRewrap makes a fleet of real volumes (LUKS2 images of FleetVolumeSize bytes with the
// default header geometry, registered with one root key) and measures, in interleaved
// rounds: the ceiling, the rate of two-flush commits the disk sustains at the same
// concurrency (each commit writes what a LUKS2 token commit of a fleet volume writes, at the
// same offsets, syncing after each header copy, on its own file opened and closed as a
// rewrap does); a rotation of the key with the whole fleet rewrapped through volume.Manager
// on the embedded key service; and the same through the Key Protect API on loopback HTTP.
// Rotations report volumes/s, per-volume latency and flushes per volume (the Manager's header
// syncs plus the syncs of the key service's store and of the registry). Everything it makes is
// removed at the end, also on error or cancellation.
func RunRewrap(ctx context.Context, opts RewrapOptions) (_ *RewrapReport, err error) {
	if opts.Volumes <= 0 {
		opts.Volumes = 1000
		if opts.Quick {
			opts.Volumes = 200
		}
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = volume.DefaultWorkers
	}
	if opts.Rounds <= 0 {
		opts.Rounds = 3
		if opts.Quick {
			opts.Rounds = 1
		}
	}
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress("rewrap: " + fmt.Sprintf(format, args...))
		}
	}
	dir, err := os.MkdirTemp(opts.Dir, "crkvol-bench-rewrap-")
	if err != nil {
		return nil, fmt.Errorf("bench rewrap: %w", err)
	}
	defer os.RemoveAll(dir)
	defer procs.Raise(opts.Procs)()
	r := &RewrapReport{Volumes: opts.Volumes, Concurrency: opts.Concurrency, Procs: runtime.GOMAXPROCS(0), Rounds: opts.Rounds,
		FileSystem: statfsType(dir), Each: map[string][]float64{}}

	f, err := openFleetServices(dir)
	if err != nil {
		return nil, err
	}
	defer f.close()

	progress("making %d volumes", opts.Volumes)
	start := time.Now()
	paths, err := f.create(ctx, opts.Volumes, max(opts.Concurrency, 32))
	if err != nil {
		return nil, err
	}
	r.CreateSeconds = time.Since(start).Seconds()
	st, err := os.Stat(paths[0])
	if err != nil {
		return nil, fmt.Errorf("bench rewrap: %w", err)
	}
	r.VolumeFileSize = st.Size()
	if r.Commit, r.MetadataSize, err = recordCommit(ctx, paths[0]); err != nil {
		return nil, err
	}
	progress("making %d ceiling files", opts.Volumes)
	ceilFiles, err := makeCeilingFiles(ctx, filepath.Join(dir, "ceiling"), opts.Volumes, r.VolumeFileSize, r.Commit, max(opts.Concurrency, 32))
	if err != nil {
		return nil, err
	}

	var lastRound time.Duration
	cases := []struct {
		key string
		run func() (RewrapResult, error)
		out *RewrapResult
	}{
		{"ceiling", func() (RewrapResult, error) { return runCeiling(ctx, ceilFiles, r.Commit, opts.Concurrency) }, &r.Ceiling},
		{"local", func() (RewrapResult, error) { return f.rotateLocal(ctx, opts.Concurrency) }, &r.Local},
		{"remote", func() (RewrapResult, error) { return f.rotateRemote(ctx, opts.Concurrency) }, &r.Remote},
	}
	// A round is not started when, taking as long as the last one, it would end past the
	// section's budget: a slow or busy machine gets fewer rounds (Rounds says how many ran)
	// rather than a run that does not end.
	budget := rewrapBudget
	if opts.Quick {
		budget = rewrapQuickBudget
	}
	r.Rounds = 0
	for round := range opts.Rounds {
		roundStart := time.Now()
		if round > 0 && time.Since(start)+lastRound > budget {
			progress("round %d of %d not started: it would end past the %s budget", round+1, opts.Rounds, budget)
			break
		}
		r.Rounds++
		for i := range cases {
			// Each round starts with the next case, so that no case always follows the same one.
			c := cases[(round+i)%len(cases)]
			progress("round %d of %d: %s", round+1, opts.Rounds, c.key)
			res, err := c.run()
			if err != nil {
				return nil, fmt.Errorf("bench rewrap: %s: %w", c.key, err)
			}
			r.Each[c.key] = append(r.Each[c.key], res.PerSecond)
			if res.PerSecond > c.out.PerSecond {
				*c.out = res
			}
		}
		lastRound = time.Since(roundStart)
	}
	return r, ctx.Err()
}

// fleetServices are the stores, the key and the services a fleet is rotated with.
type fleetServices struct {
	dir     string
	tenants *kpapi.Tenants
	svc     *crk.Service
	reg     *volume.Registry
	srv     *httptest.Server
	remote  *kms.Remote
	keyID   string
	// clock is the key service's: a key rotates at most once an hour, so each rotation
	// moves it on by an hour first.
	clock *crk.ManualClock
}

// openFleetServices opens the key service (as an instance of kpapi tenants, so that the
// HTTP server serves the very same store) and the registry in dir, and starts the server.
func openFleetServices(dir string) (_ *fleetServices, err error) {
	f := &fleetServices{dir: dir, clock: crk.NewManualClock(time.Now())}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	mk := make([]byte, 32)
	if _, err := rand.Read(mk); err != nil {
		return nil, err
	}
	if f.tenants, err = kpapi.OpenTenants(filepath.Join(dir, "kms"), crk.Options{MasterKey: mk, Initiator: crk.PrincipalLocal, Clock: f.clock}); err != nil {
		return nil, fmt.Errorf("bench rewrap: opening the key service: %w", err)
	}
	inst, svc := f.tenants.Default()
	if svc == nil {
		return nil, errors.New("bench rewrap: the key service's default instance did not open")
	}
	f.svc = svc
	if f.reg, err = volume.OpenRegistry(filepath.Join(dir, "volumes.db")); err != nil {
		return nil, fmt.Errorf("bench rewrap: %w", err)
	}
	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	token := base64.RawURLEncoding.EncodeToString(tok)
	f.tenants.SetStaticToken(token)
	f.srv = httptest.NewServer(kpapi.NewServer(f.tenants))
	if f.remote, err = kms.NewRemote(kms.RemoteConfig{URL: f.srv.URL, Instance: inst, Token: token}); err != nil {
		return nil, fmt.Errorf("bench rewrap: %w", err)
	}
	k, err := svc.CreateRootKey(context.Background(), "bench-rewrap")
	if err != nil {
		return nil, fmt.Errorf("bench rewrap: %w", err)
	}
	f.keyID = k.ID
	return f, nil
}

func (f *fleetServices) close() {
	if f.srv != nil {
		f.srv.Close()
	}
	if f.reg != nil {
		f.reg.Close()
	}
	if f.tenants != nil {
		f.tenants.Close()
	}
}

// create makes n volumes of the key in f.dir, workers at a time, and returns their paths.
func (f *fleetServices) create(ctx context.Context, n, workers int) ([]string, error) {
	mgr := volume.NewManager(kms.NewLocal(f.svc), f.reg, volume.Options{})
	defer mgr.Close()
	return CreateFleet(ctx, mgr, f.dir, f.keyID, n, workers)
}

// CreateFleet makes n volumes of FleetVolumeSize data bytes protected by key keyID with mgr,
// workers at a time, as dir/v0000.img, dir/v0001.img, …, and returns their paths in order:
// the fleet of the rewrap benchmark and of the flush-count tests.
func CreateFleet(ctx context.Context, mgr *volume.Manager, dir, keyID string, n, workers int) ([]string, error) {
	paths := make([]string, n)
	for i := range paths {
		paths[i] = filepath.Join(dir, fmt.Sprintf("v%04d.img", i))
	}
	err := forEach(ctx, n, workers, func(i int) error {
		_, err := mgr.Create(ctx, paths[i], volume.CreateOptions{KeyID: keyID, Size: FleetVolumeSize})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("making the fleet: %w", err)
	}
	return paths, nil
}

// forEach runs fn(0) … fn(n-1), workers at a time, and returns the first error; after an
// error (or ctx's end) no further call starts.
func forEach(ctx context.Context, n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// recordCommit records what a LUKS2 token commit writes and syncs on the volume at path: it
// rewrites the volume's token unchanged (the volume stays as it was, one sequence number on)
// through a device that logs each write and sync. It returns the pattern and the header's
// metadata size.
func recordCommit(ctx context.Context, path string) (CommitPattern, uint64, error) {
	var p CommitPattern
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return p, 0, fmt.Errorf("bench rewrap: %w", err)
	}
	defer fh.Close()
	dev := &recordingDevice{File: fh}
	img, err := keyslot.OpenContext(ctx, dev, nil)
	if err != nil {
		return p, 0, fmt.Errorf("bench rewrap: %s: %w", path, err)
	}
	toks := img.Tokens()
	if len(toks) == 0 {
		return p, 0, fmt.Errorf("bench rewrap: %s has no token", path)
	}
	dev.on = true
	err = img.UpdateTokenContext(ctx, toks[0].ID, func(cur json.RawMessage) ([]byte, error) { return cur, nil })
	dev.on = false
	if err != nil {
		return p, 0, fmt.Errorf("bench rewrap: recording a token commit on %s: %w", path, err)
	}
	p.ops = dev.ops
	for _, op := range p.ops {
		if op.Sync {
			p.Flushes++
		} else {
			p.Writes++
			p.Bytes += int64(len(op.Data))
		}
	}
	if p.Writes == 0 || p.Flushes == 0 {
		return p, 0, fmt.Errorf("bench rewrap: a token commit made %d writes and %d syncs", p.Writes, p.Flushes)
	}
	return p, img.MetadataSize(), nil
}

// recordingDevice is an image file that logs the writes and syncs made while on. It keeps
// *os.File's Fd, so that the keyslot package locks it as it does a volume's.
type recordingDevice struct {
	*os.File
	on  bool
	ops []commitOp
}

func (d *recordingDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.on {
		d.ops = append(d.ops, commitOp{Off: off, Data: bytes.Clone(p)})
	}
	return d.File.WriteAt(p, off)
}

func (d *recordingDevice) Sync() error {
	if d.on {
		d.ops = append(d.ops, commitOp{Sync: true})
	}
	return d.File.Sync()
}

// makeCeilingFiles makes n files of size bytes in dir, in the state of a fleet volume's
// header: the commit's ranges written and flushed (allocated, clean in the page cache).
func makeCeilingFiles(ctx context.Context, dir string, n int, size int64, p CommitPattern, workers int) ([]string, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bench rewrap: %w", err)
	}
	paths := make([]string, n)
	err := forEach(ctx, n, workers, func(i int) error {
		paths[i] = filepath.Join(dir, fmt.Sprintf("c%04d", i))
		fh, err := os.OpenFile(paths[i], os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		defer fh.Close()
		if err := fh.Truncate(size); err != nil {
			return err
		}
		for _, op := range p.ops {
			if !op.Sync {
				if _, err := fh.WriteAt(op.Data, op.Off); err != nil {
					return err
				}
			}
		}
		return fh.Sync()
	})
	if err != nil {
		return nil, fmt.Errorf("bench rewrap: making the ceiling's files: %w", err)
	}
	return paths, nil
}

// runCeiling commits p once on every file, workers at a time: open, the pattern's writes
// and syncs, close.
func runCeiling(ctx context.Context, paths []string, p CommitPattern, workers int) (RewrapResult, error) {
	lat := make([]time.Duration, len(paths))
	cpu0, start := processCPU(), time.Now()
	err := forEach(ctx, len(paths), workers, func(i int) error {
		t0 := time.Now()
		fh, err := os.OpenFile(paths[i], os.O_RDWR, 0)
		if err != nil {
			return err
		}
		for _, op := range p.ops {
			if op.Sync {
				err = fh.Sync()
			} else {
				_, err = fh.WriteAt(op.Data, op.Off)
			}
			if err != nil {
				fh.Close()
				return err
			}
		}
		if err := fh.Close(); err != nil {
			return err
		}
		lat[i] = time.Since(t0)
		return nil
	})
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	if err != nil {
		return RewrapResult{}, err
	}
	slices.Sort(lat)
	flushes := int64(p.Flushes * len(paths))
	return RewrapResult{
		Name:      fmt.Sprintf("ceiling: %d-flush commits", p.Flushes),
		PerSecond: float64(len(paths)) / elapsed.Seconds(), Rewrapped: len(paths),
		Flushes: flushes, HeaderFlushes: flushes, FlushesPerVolume: float64(p.Flushes), HeaderBytes: p.Bytes,
		CPUMicrosPerVolume: micros(cpu) / float64(len(paths)),
		P50Ms:              ms(percentile(lat, 0.5)), P99Ms: ms(percentile(lat, 0.99)),
	}, nil
}

// rotateLocal rotates the key on the embedded service; the Manager's rotation hook rewraps
// the fleet before RotateKey returns.
func (f *fleetServices) rotateLocal(ctx context.Context, workers int) (RewrapResult, error) {
	var rep *volume.Report
	mgr := volume.NewManager(kms.NewLocal(f.svc), f.reg, volume.Options{Workers: workers, OnReport: func(r *volume.Report) { rep = r }})
	defer mgr.Close()
	f.clock.Advance(time.Hour)
	before := f.counts()
	cpu0, start := processCPU(), time.Now()
	if _, err := f.svc.RotateKey(ctx, f.keyID, nil); err != nil {
		return RewrapResult{}, err
	}
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	if rep == nil {
		return RewrapResult{}, errors.New("the rotation ran no rewrap pass")
	}
	return f.result("local: embedded key service", rep, elapsed, cpu, before)
}

// rotateRemote rotates the key through the Key Protect API and rewraps the fleet with
// Manager.Sync over the remote client, as `crkvol --kms-url … key rotate` does.
func (f *fleetServices) rotateRemote(ctx context.Context, workers int) (RewrapResult, error) {
	mgr := volume.NewManager(f.remote, f.reg, volume.Options{Workers: workers})
	defer mgr.Close()
	f.clock.Advance(time.Hour)
	before := f.counts()
	cpu0, start := processCPU(), time.Now()
	if err := f.remote.RotateKey(ctx, f.keyID, nil); err != nil {
		return RewrapResult{}, err
	}
	rep, err := mgr.Sync(ctx, f.keyID)
	if err != nil {
		return RewrapResult{}, err
	}
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	return f.result("remote: Key Protect API over loopback HTTP", rep, elapsed, cpu, before)
}

// result makes the result of a rotation's pass rep, which took elapsed and cpu, from the
// flush counts before it.
func (f *fleetServices) result(name string, rep *volume.Report, elapsed, cpu time.Duration, before flushCounts) (RewrapResult, error) {
	if err := rep.Err(); err != nil {
		return RewrapResult{}, err
	}
	if rep.Rewrapped == 0 {
		return RewrapResult{}, fmt.Errorf("the rotation rewrapped none of %d volumes", rep.Volumes)
	}
	after := f.counts()
	res := RewrapResult{
		Name: name, PerSecond: float64(rep.Rewrapped) / elapsed.Seconds(), Rewrapped: rep.Rewrapped,
		HeaderFlushes:   rep.HeaderFlushes,
		KMSCalls:        rep.KMSCalls,
		HeaderBytes:     rep.BytesWritten / int64(rep.Rewrapped),
		StoreFlushes:    int64(after.store - before.store),
		RegistryFlushes: int64(after.registry - before.registry),
		P50Ms:           ms(rep.Percentile(0.5)), P99Ms: ms(rep.Percentile(0.99)),
		CPUMicrosPerVolume: micros(cpu) / float64(rep.Rewrapped),
	}
	res.Flushes = res.HeaderFlushes + res.StoreFlushes + res.RegistryFlushes
	res.FlushesPerVolume = float64(res.Flushes) / float64(res.Rewrapped)
	return res, nil
}

// flushCounts are the flushes the key service's store and the registry made so far.
type flushCounts struct{ store, registry uint64 }

func (f *fleetServices) counts() flushCounts {
	return flushCounts{store: f.svc.StoreStats().Flushes, registry: f.reg.Stats().Flushes}
}

// percentile returns the q-th (0-1) of the sorted durations d.
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[int(q*float64(len(d)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Ratios returns the rotations' volumes/s over the ceiling's commits/s.
func (r *RewrapReport) Ratios() []Ratio {
	if r.Ceiling.PerSecond == 0 {
		return nil
	}
	return []Ratio{
		{Section: "rewrap", Name: fmt.Sprintf("fleet rotation, local, %d volumes", r.Volumes),
			Value: r.Local.PerSecond / r.Ceiling.PerSecond, Against: "2-flush ceiling", Target: 0.6},
		{Section: "rewrap", Name: fmt.Sprintf("fleet rotation, HTTP, %d volumes", r.Volumes),
			Value: r.Remote.PerSecond / r.Ceiling.PerSecond, Against: "2-flush ceiling"},
	}
}

// WriteTable prints the report as a table.
func (r *RewrapReport) WriteTable(w io.Writer) error {
	procs := ""
	if r.Procs > 0 { // reports before Procs have none
		procs = fmt.Sprintf(", GOMAXPROCS %d", r.Procs)
	}
	fmt.Fprintf(w, "Fleet rewrap: %d volumes (%d MiB files, %d KiB header copies) on %s, %d at once%s, best of %d round(s)\n",
		r.Volumes, r.VolumeFileSize>>20, r.MetadataSize>>10, r.FileSystem, r.Concurrency, procs, r.Rounds)
	fmt.Fprintf(w, "ceiling: each commit writes %d bytes in %d writes with %d flushes, as a LUKS2 token commit does\n",
		r.Commit.Bytes, r.Commit.Writes, r.Commit.Flushes)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tvolumes/s\tflushes/volume\theader\tkms store\tregistry\tcpu µs/volume\tp50 ms\tp99 ms\tvs ceiling\t")
	row := func(label string, x RewrapResult, ratio string) {
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%d\t%d\t%d\t%.0f\t%.2f\t%.2f\t%s\t\n", label, x.PerSecond, x.FlushesPerVolume,
			x.HeaderFlushes, x.StoreFlushes, x.RegistryFlushes, x.CPUMicrosPerVolume, x.P50Ms, x.P99Ms, ratio)
	}
	row("ceiling (commits/s)", r.Ceiling, "1.00x")
	ratio := func(x RewrapResult) string {
		if r.Ceiling.PerSecond == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", x.PerSecond/r.Ceiling.PerSecond)
	}
	row("local (embedded crk)", r.Local, ratio(r.Local)+" (target 0.60x)")
	row("remote (HTTP)", r.Remote, ratio(r.Remote))
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "flushes/volume: the pass's fsync/fdatasync calls per rewrapped volume; header, kms store, registry: its flushes of each, in all; cpu µs/volume: the whole process's CPU time (user and kernel, the HTTP server's too for remote) per volume; the fleet took %.1f s to make (not measured)\n", r.CreateSeconds)
	return err
}
