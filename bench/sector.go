package bench

import (
	"bufio"
	"context"
	"crypto/aes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/xts"
	"golang.org/x/sys/cpu"

	"crkvol/sector"
	"crkvol/volume"
)

// SectorOptions tune RunSector.
type SectorOptions struct {
	// Quick measures each case once for 0.2 s instead of five times for 1 s (openssl speed
	// runs for at least 1 s a measurement).
	Quick bool
	// Dir is unused: the section touches no files. It is here as in every section's options.
	Dir string
	// OpenSSL is the openssl command; "openssl" if empty. Missing openssl is reported, not
	// an error.
	OpenSSL string
	// Progress, if set, is told what is being measured.
	Progress func(string)

	// window, when not zero, replaces the measuring window of each case: for the package's
	// tests, which check a report's shape and make no timing claims.
	window time.Duration
}

// Result is one measured case.
type Result struct {
	Impl       string  `json:"impl"` // a sector path, "x/crypto/xts" or "openssl"
	Op         string  `json:"op"`   // "encrypt" or "decrypt"
	SectorSize int     `json:"sectorSize"`
	MBps       float64 `json:"mbps"` // 10^6 bytes per second
}

// Ceiling is the limit of one assembly path on this CPU: the rate of its ceiling loop
// (sector.CeilingLoop, independent AES-256 rounds and nothing else), in MB/s of data
// encrypted with 14 rounds a 16-byte block.
type Ceiling struct {
	Path string  `json:"path"`
	MBps float64 `json:"mbps"`
}

// SectorReport is the sector section of a run: the sector engine against OpenSSL and
// x/crypto/xts, and the ceiling of its assembly paths.
type SectorReport struct {
	CPU       string   `json:"cpu"`
	Features  []string `json:"features"`
	GoVersion string   `json:"goVersion"`
	Cores     int      `json:"cores"`
	Rounds    int      `json:"rounds"` // each result is the best of this many interleaved rounds
	Results   []Result `json:"results"`
	// Ceilings holds the ceiling of each assembly path this CPU runs (none with -tags purego).
	Ceilings []Ceiling `json:"ceilings,omitempty"`
	// Parallel compares 1 MiB requests (4096-byte sectors, encrypt, default path) on one
	// core with the same requests split over every core by volume.Parallel.
	Parallel *ParallelResult `json:"parallel,omitempty"`
	// OpenSSLError says why OpenSSL was not measured, if it was not.
	OpenSSLError string `json:"opensslError,omitempty"`
}

// ParallelResult is the multi-core measurement of a SectorReport.
type ParallelResult struct {
	Path        string  `json:"path"`
	Workers     int     `json:"workers"`
	OneCoreMBps float64 `json:"oneCoreMBps"`
	AllMBps     float64 `json:"allCoresMBps"`
}

// RunSector measures every case: aes-xts-plain64 (AES-256-XTS, 512- and 4096-byte sectors,
// encrypt and decrypt) on every implementation this CPU runs, golang.org/x/crypto/xts, and
// `openssl speed -evp aes-256-xts` when openssl is installed, plus the ceiling loop of each
// assembly path. Each case is measured Rounds times, the rounds interleaved (every case once,
// then every case again), and its best round is kept: on a shared machine a neighbour's burst
// then lowers one round of one case instead of skewing a ratio.
func RunSector(ctx context.Context, opts SectorOptions) (*SectorReport, error) {
	// Every case, ours and openssl's, is timed over windows of the same length (openssl
	// speed's shortest), so neither side's best round gains from shorter windows. The
	// ceiling loops are steady and get half a window.
	d, rounds := time.Second, 5
	if opts.Quick {
		d, rounds = 200*time.Millisecond, 1
	}
	if opts.window > 0 {
		d = opts.window
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	r := &SectorReport{CPU: cpuModel(), Features: features(), GoVersion: runtime.Version(), Cores: runtime.NumCPU(), Rounds: rounds}
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i*13 + 7)
	}
	type benchCase struct {
		Result
		bytes int    // per call of run
		run   func() // nil for openssl
		win   time.Duration
		peak  bool // measured with measurePeak
	}
	var cases []*benchCase
	add := func(impl, op string, size, n int, enc, dec func()) {
		f := enc
		if op == "decrypt" {
			f = dec
		}
		cases = append(cases, &benchCase{Result: Result{Impl: impl, Op: op, SectorSize: size}, bytes: n, run: f, win: d})
	}
	for _, size := range []int{512, 4096} {
		step := uint64(size / sector.IVUnit)
		for _, path := range sector.Paths() {
			c, err := sector.NewPath(key, size, path)
			if err != nil {
				return nil, err
			}
			defer c.Wipe()
			buf := make([]byte, size)
			var s uint64
			for _, op := range []string{"encrypt", "decrypt"} {
				add(string(path), op, size, size,
					func() { c.EncryptSectors(buf, buf, s); s += step },
					func() { c.DecryptSectors(buf, buf, s); s += step })
			}
		}
		// The default path again, with 64 KiB calls: many sectors per call.
		c, err := sector.New(key, size)
		if err != nil {
			return nil, err
		}
		defer c.Wipe()
		big := make([]byte, 64<<10)
		for _, op := range []string{"encrypt", "decrypt"} {
			add(string(c.Path())+" (64 KiB calls)", op, size, len(big),
				func() { c.EncryptSectors(big, big, 0) },
				func() { c.DecryptSectors(big, big, 0) })
		}
		ref, err := xts.NewCipher(aes.NewCipher, key)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		var s uint64
		for _, op := range []string{"encrypt", "decrypt"} {
			add("x/crypto/xts", op, size, size,
				func() { ref.Encrypt(buf, buf, s); s += step },
				func() { ref.Decrypt(buf, buf, s); s += step })
		}
		for _, op := range []string{"encrypt", "decrypt"} {
			add("openssl", op, size, 0, nil, nil)
		}
	}
	// The ceilings, measured in the same rounds as the paths they bound, at the start and
	// at the end of each round (half a window each), each as its peak rate (see
	// measurePeak): the ceiling is what the CPU does undisturbed, so that a neighbour's
	// burst or a change of clock during a round does not leave a path above its ceiling.
	var ceilings []*benchCase
	for _, path := range sector.Paths() {
		n, err := sector.CeilingLoop(path, 64)
		if errors.Is(err, sector.ErrNoCeiling) {
			continue
		} else if err != nil {
			return nil, err
		}
		c := &benchCase{Result: Result{Impl: string(path)}, bytes: int(n), win: d / 2, peak: true,
			run: func() { _, _ = sector.CeilingLoop(path, 64) }}
		ceilings = append(ceilings, c)
	}
	all := append(append(append([]*benchCase{}, ceilings...), cases...), ceilings...)
	for round := range rounds {
		progress(fmt.Sprintf("round %d of %d: %d cases between %d ceiling loops", round+1, rounds, len(cases), len(ceilings)))
		for _, c := range all {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var mbps float64
			if c.peak {
				mbps = measurePeak(ctx, c.win, c.bytes, c.run)
			} else if c.run != nil {
				mbps = measure(ctx, c.win, c.bytes, c.run)
			} else if r.OpenSSLError == "" {
				var err error
				if mbps, err = openSSLSpeed(ctx, opts.OpenSSL, c.SectorSize, c.Op == "decrypt", d); err != nil {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					r.OpenSSLError = err.Error()
				}
			}
			c.MBps = max(c.MBps, mbps)
		}
	}
	for _, c := range cases {
		if c.MBps > 0 {
			r.Results = append(r.Results, c.Result)
		}
	}
	for _, c := range ceilings {
		r.Ceilings = append(r.Ceilings, Ceiling{Path: c.Impl, MBps: c.MBps})
	}
	progress("multi-core: volume.Parallel on 1 MiB requests")
	p, err := parallel(ctx, key, d/2, rounds) // steady, like the ceilings: half a window
	if err != nil {
		return nil, err
	}
	r.Parallel = p
	return r, ctx.Err()
}

// parallel measures 1 MiB requests on one core and on every core.
func parallel(ctx context.Context, key []byte, d time.Duration, rounds int) (*ParallelResult, error) {
	c, err := sector.New(key, 4096)
	if err != nil {
		return nil, err
	}
	defer c.Wipe()
	buf := make([]byte, 1<<20)
	res := &ParallelResult{Path: string(c.Path()), Workers: runtime.GOMAXPROCS(0)}
	one := volume.NewParallel(c, 1, 0)
	defer one.Close()
	all := volume.NewParallel(c, res.Workers, 0)
	defer all.Close()
	for range rounds {
		res.OneCoreMBps = max(res.OneCoreMBps, measure(ctx, d, len(buf), func() { one.EncryptSectors(buf, buf, 0) }))
		res.AllMBps = max(res.AllMBps, measure(ctx, d, len(buf), func() { all.EncryptSectors(buf, buf, 0) }))
	}
	return res, nil
}

// measure runs f (which processes n bytes) repeatedly for about d and returns MB/s. Batches
// double until one takes a fiftieth of d, then stay that size, so the window ends within
// about 4% of d.
func measure(ctx context.Context, d time.Duration, n int, f func()) float64 {
	for range 100 { // warm up
		f()
	}
	start := time.Now()
	iters := 0
	for batch := 16; ; {
		t0 := time.Now()
		for range batch {
			f()
		}
		iters += batch
		if el := time.Since(start); el >= d || ctx.Err() != nil {
			return float64(iters) * float64(n) / el.Seconds() / 1e6
		}
		if time.Since(t0) < d/50 {
			batch *= 2
		}
	}
}

// measurePeak runs f (which processes n bytes) repeatedly for about d, timing batches of about
// a millisecond, and returns the MB/s of the fastest batch: the rate f reaches when nothing
// interrupts it, which a neighbour's burst or a preemption cannot lower as it lowers an
// average over the whole window (it can only leave fewer undisturbed batches to pick from).
func measurePeak(ctx context.Context, d time.Duration, n int, f func()) float64 {
	for range 100 { // warm up
		f()
	}
	batch := 1
	for {
		t0 := time.Now()
		for range batch {
			f()
		}
		if time.Since(t0) >= time.Millisecond || batch >= 1<<20 {
			break
		}
		batch *= 2
	}
	best := 0.0
	for start := time.Now(); time.Since(start) < d && ctx.Err() == nil; {
		t0 := time.Now()
		for range batch {
			f()
		}
		best = max(best, float64(batch)*float64(n)/time.Since(t0).Seconds()/1e6)
	}
	return best
}

// openSSLSpeed runs `openssl speed -elapsed -evp aes-256-xts` for one size.
func openSSLSpeed(ctx context.Context, openssl string, size int, decrypt bool, d time.Duration) (float64, error) {
	if openssl == "" {
		openssl = "openssl"
	}
	secs := max(1, int(d.Seconds()))
	args := []string{"speed", "-elapsed", "-evp", "aes-256-xts", "-bytes", strconv.Itoa(size), "-seconds", strconv.Itoa(secs)}
	if decrypt {
		args = append(args, "-decrypt")
	}
	out, err := exec.CommandContext(ctx, openssl, args...).Output()
	if err != nil {
		return 0, fmt.Errorf("openssl speed: %w", err)
	}
	// The last line reads "AES-256-XTS  <N>k": thousands of bytes per second.
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	var last string
	for sc.Scan() {
		if strings.HasPrefix(strings.TrimSpace(sc.Text()), "AES-256-XTS") {
			last = sc.Text()
		}
	}
	f := strings.Fields(last)
	if len(f) < 2 || !strings.HasSuffix(f[len(f)-1], "k") {
		return 0, fmt.Errorf("openssl speed: unexpected output %q", last)
	}
	k, err := strconv.ParseFloat(strings.TrimSuffix(f[len(f)-1], "k"), 64)
	if err != nil {
		return 0, fmt.Errorf("openssl speed: %w", err)
	}
	return k / 1000, nil
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

func features() []string {
	var out []string
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"aes", cpu.X86.HasAES}, {"pclmulqdq", cpu.X86.HasPCLMULQDQ}, {"avx", cpu.X86.HasAVX},
		{"avx2", cpu.X86.HasAVX2}, {"avx512f", cpu.X86.HasAVX512F}, {"avx512vl", cpu.X86.HasAVX512VL},
		{"avx512bw", cpu.X86.HasAVX512BW},
		{"avx512vbmi2", cpu.X86.HasAVX512VBMI2}, {"vaes", cpu.X86.HasAVX512VAES},
		{"vpclmulqdq", cpu.X86.HasAVX512VPCLMULQDQ},
	} {
		if f.ok {
			out = append(out, f.name)
		}
	}
	return out
}

// find returns a result's MB/s, or 0.
func (r *SectorReport) find(impl, op string, size int) float64 {
	for _, x := range r.Results {
		if x.Impl == impl && x.Op == op && x.SectorSize == size {
			return x.MBps
		}
	}
	return 0
}

// ceiling returns the ceiling in MB/s of the path a result's implementation runs ("vaes",
// "vaes (64 KiB calls)"), or 0 if it has none.
func (r *SectorReport) ceiling(impl string) float64 {
	path, _, _ := strings.Cut(impl, " ")
	for _, c := range r.Ceilings {
		if c.Path == path {
			return c.MBps
		}
	}
	return 0
}

// The targets of the sector engine (the README's): the VAES path against OpenSSL one sector
// per call, and with 64 KiB calls of 512-byte sectors; the AES-NI path against OpenSSL at
// 4096 bytes; the portable path against x/crypto/xts; volume.Parallel on every core against one.
func sectorTarget(impl, against string, size int) float64 {
	switch {
	case impl == "vaes" && against == "openssl" && size == 4096:
		return 2.1
	case impl == "vaes" && against == "openssl" && size == 512:
		return 1.8
	case impl == "vaes (64 KiB calls)" && against == "openssl" && size == 512:
		return 2.5
	case impl == "aesni" && against == "openssl" && size == 4096:
		return 0.95
	case impl == "generic" && against == "x/crypto/xts":
		return 3
	}
	return 0
}

// Ratios returns the section's comparisons: each assembly path (one sector per call, and
// the default one with 64 KiB calls) against OpenSSL and against its ceiling, the portable
// path against x/crypto/xts, and volume.Parallel on every core against one.
func (r *SectorReport) Ratios() []Ratio {
	var out []Ratio
	add := func(x Result, against string, ref float64) {
		if ref > 0 && x.MBps > 0 {
			out = append(out, Ratio{Section: "sector", Name: fmt.Sprintf("%s %s %d", x.Impl, x.Op, x.SectorSize),
				Value: x.MBps / ref, Against: against, Target: sectorTarget(x.Impl, against, x.SectorSize)})
		}
	}
	for _, x := range r.Results {
		switch x.Impl {
		case "openssl", "x/crypto/xts":
		case string(sector.PathGeneric):
			add(x, "x/crypto/xts", r.find("x/crypto/xts", x.Op, x.SectorSize))
		default:
			add(x, "openssl", r.find("openssl", x.Op, x.SectorSize))
		}
	}
	for _, x := range r.Results {
		add(x, "ceiling", r.ceiling(x.Impl))
	}
	if p := r.Parallel; p != nil && p.Workers > 1 && p.OneCoreMBps > 0 && p.AllMBps > 0 {
		out = append(out, Ratio{Section: "sector", Name: fmt.Sprintf("volume.Parallel, %d cores", p.Workers),
			Value: p.AllMBps / p.OneCoreMBps, Against: "1 core", Target: 1.7})
	}
	return out
}

// WriteTable prints the section as a table of MB/s and ratios: against OpenSSL, against
// x/crypto/xts and, for the assembly paths, the share of their ceiling.
func (r *SectorReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "CPU: %s (%d cores; %s)\n", r.CPU, r.Cores, strings.Join(r.Features, " "))
	fmt.Fprintf(w, "Go: %s; AES-256-XTS (aes-xts-plain64, 512-bit key), one sector per call, MB/s = 10^6 B/s, best of %d interleaved rounds\n", r.GoVersion, max(r.Rounds, 1))
	if len(r.Ceilings) > 0 {
		var cs []string
		for _, c := range r.Ceilings {
			cs = append(cs, fmt.Sprintf("%s %.0f MB/s", c.Path, c.MBps))
		}
		fmt.Fprintf(w, "Ceiling (independent AES-256 rounds only, measured in the same rounds): %s\n", strings.Join(cs, ", "))
	} else {
		fmt.Fprintln(w, "Ceiling: none (no assembly path in this build or on this CPU)")
	}
	if r.OpenSSLError != "" {
		fmt.Fprintf(w, "OpenSSL not measured: %s\n", r.OpenSSLError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "implementation\top\tsector\tMB/s\tvs OpenSSL\tvs x/crypto/xts\tof ceiling\t")
	for _, x := range r.Results {
		vsOSSL, vsX, ofCeiling := "-", "-", "-"
		if o := r.find("openssl", x.Op, x.SectorSize); o > 0 {
			vsOSSL = fmt.Sprintf("%.2fx", x.MBps/o)
		}
		if o := r.find("x/crypto/xts", x.Op, x.SectorSize); o > 0 {
			vsX = fmt.Sprintf("%.2fx", x.MBps/o)
		}
		if c := r.ceiling(x.Impl); c > 0 {
			ofCeiling = fmt.Sprintf("%.0f%%", 100*x.MBps/c)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t\n", x.Impl, x.Op, x.SectorSize, x.MBps, vsOSSL, vsX, ofCeiling)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p := r.Parallel; p != nil && p.Workers > 1 && p.OneCoreMBps > 0 {
		if _, err := fmt.Fprintf(w, "\nMulti-core (volume.Parallel, %s, 1 MiB requests of 4096-byte sectors): 1 core %.0f MB/s, %d cores %.0f MB/s, %.2fx\n",
			p.Path, p.OneCoreMBps, p.Workers, p.AllMBps, p.AllMBps/p.OneCoreMBps); err != nil {
			return err
		}
	}
	return nil
}
