// Package bench is crkvol's benchmark harness for people evaluating it: in one run it measures
// the sector engine (aes-xts-plain64, AES-256-XTS, 512- and 4096-byte sectors, encrypt and
// decrypt) on every implementation this CPU runs, golang.org/x/crypto/xts, and
// `openssl speed -evp aes-256-xts` when openssl is installed, and reports MB/s and the ratios
// against OpenSSL and x/crypto/xts measured in the same run. Compare ratios, not absolute
// numbers across runs: shared machines vary by ±15%.
package bench

import (
	"bufio"
	"context"
	"crypto/aes"
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

	"crkvol/volume/sector"
)

// Options tune a run.
type Options struct {
	// Quick measures each case for 0.2 s instead of 1 s.
	Quick bool
	// OpenSSL is the openssl command; "openssl" if empty. Missing openssl is reported, not
	// an error.
	OpenSSL string
}

// Result is one measured case.
type Result struct {
	Impl       string  `json:"impl"` // a sector path, "x/crypto/xts" or "openssl"
	Op         string  `json:"op"`   // "encrypt" or "decrypt"
	SectorSize int     `json:"sectorSize"`
	MBps       float64 `json:"mbps"` // 10^6 bytes per second
}

// Report is a whole run.
type Report struct {
	CPU       string   `json:"cpu"`
	Features  []string `json:"features"`
	GoVersion string   `json:"goVersion"`
	Cores     int      `json:"cores"`
	Results   []Result `json:"results"`
	// OpenSSLError says why OpenSSL was not measured, if it was not.
	OpenSSLError string `json:"opensslError,omitempty"`
}

// Run measures every case.
func Run(ctx context.Context, opts Options) (*Report, error) {
	d := time.Second
	if opts.Quick {
		d = 200 * time.Millisecond
	}
	r := &Report{CPU: cpuModel(), Features: features(), GoVersion: runtime.Version(), Cores: runtime.NumCPU()}
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i*13 + 7)
	}
	for _, size := range []int{512, 4096} {
		for _, path := range sector.Paths() {
			c, err := sector.NewPath(key, size, path)
			if err != nil {
				return nil, err
			}
			buf := make([]byte, size)
			for _, op := range []string{"encrypt", "decrypt"} {
				var s uint64
				step := uint64(size / sector.IVUnit)
				f := func() {
					if op == "encrypt" {
						c.EncryptSectors(buf, buf, s)
					} else {
						c.DecryptSectors(buf, buf, s)
					}
					s += step
				}
				r.Results = append(r.Results, Result{Impl: string(path), Op: op, SectorSize: size, MBps: measure(ctx, d, size, f)})
			}
		}
		// The default path again, with 64 KiB calls: many sectors per call.
		if c, err := sector.New(key, size); err == nil {
			buf := make([]byte, 64<<10)
			for _, op := range []string{"encrypt", "decrypt"} {
				f := func() {
					if op == "encrypt" {
						c.EncryptSectors(buf, buf, 0)
					} else {
						c.DecryptSectors(buf, buf, 0)
					}
				}
				r.Results = append(r.Results, Result{Impl: string(c.Path()) + " (64 KiB calls)", Op: op, SectorSize: size, MBps: measure(ctx, d, len(buf), f)})
			}
		}
		ref, err := xts.NewCipher(aes.NewCipher, key)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		for _, op := range []string{"encrypt", "decrypt"} {
			var s uint64
			f := func() {
				if op == "encrypt" {
					ref.Encrypt(buf, buf, s)
				} else {
					ref.Decrypt(buf, buf, s)
				}
				s += uint64(size / sector.IVUnit)
			}
			r.Results = append(r.Results, Result{Impl: "x/crypto/xts", Op: op, SectorSize: size, MBps: measure(ctx, d, size, f)})
		}
		if r.OpenSSLError == "" {
			for _, op := range []string{"encrypt", "decrypt"} {
				mbps, err := openSSLSpeed(ctx, opts.OpenSSL, size, op == "decrypt", d)
				if err != nil {
					r.OpenSSLError = err.Error()
					break
				}
				r.Results = append(r.Results, Result{Impl: "openssl", Op: op, SectorSize: size, MBps: mbps})
			}
		}
	}
	return r, ctx.Err()
}

// measure runs f (which processes n bytes) repeatedly for about d and returns MB/s.
func measure(ctx context.Context, d time.Duration, n int, f func()) float64 {
	for range 100 { // warm up
		f()
	}
	start := time.Now()
	iters := 0
	for batch := 16; ; batch *= 2 {
		for range batch {
			f()
		}
		iters += batch
		if el := time.Since(start); el >= d || ctx.Err() != nil {
			return float64(iters) * float64(n) / el.Seconds() / 1e6
		}
	}
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
		{"vaes", cpu.X86.HasAVX512VAES}, {"vpclmulqdq", cpu.X86.HasAVX512VPCLMULQDQ},
	} {
		if f.ok {
			out = append(out, f.name)
		}
	}
	return out
}

// find returns a result's MB/s, or 0.
func (r *Report) find(impl, op string, size int) float64 {
	for _, x := range r.Results {
		if x.Impl == impl && x.Op == op && x.SectorSize == size {
			return x.MBps
		}
	}
	return 0
}

// WriteTable prints the report as a table of MB/s and ratios.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "CPU: %s (%d cores; %s)\n", r.CPU, r.Cores, strings.Join(r.Features, " "))
	fmt.Fprintf(w, "Go: %s; AES-256-XTS (aes-xts-plain64, 512-bit key), one sector per call, MB/s = 10^6 B/s\n", r.GoVersion)
	if r.OpenSSLError != "" {
		fmt.Fprintf(w, "OpenSSL not measured: %s\n", r.OpenSSLError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "implementation\top\tsector\tMB/s\tvs OpenSSL\tvs x/crypto/xts\t")
	for _, x := range r.Results {
		vsOSSL, vsX := "-", "-"
		if o := r.find("openssl", x.Op, x.SectorSize); o > 0 {
			vsOSSL = fmt.Sprintf("%.2fx", x.MBps/o)
		}
		if o := r.find("x/crypto/xts", x.Op, x.SectorSize); o > 0 {
			vsX = fmt.Sprintf("%.2fx", x.MBps/o)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t\n", x.Impl, x.Op, x.SectorSize, x.MBps, vsOSSL, vsX)
	}
	return tw.Flush()
}
