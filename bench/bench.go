// Package bench is crkvol's benchmark harness for people evaluating it (`crkvol bench`). A run
// measures one or more sections on the machine it runs on, each against a reference measured
// in the same run, and reports the comparisons as ratios ([Ratio]):
//
//   - sector ([RunSector]): the sector engine (aes-xts-plain64) on every implementation this
//     CPU runs against `openssl speed`, golang.org/x/crypto/xts and the ceiling of the AES
//     instructions themselves (sector.CeilingLoop);
//   - kms ([RunKMS]): wrap+unwrap pairs per second of the key service with 1, 8 and 32
//     concurrent callers, in process and over HTTP, against one caller;
//   - rewrap ([RunRewrap]): a key rotation over a fleet of volumes, through the embedded key
//     service and over HTTP, against the disk's own rate of two-flush commits;
//   - io ([RunIO]): reads and writes through a volume against the same requests on a raw
//     file, both files in the same page-cache state;
//   - nbd ([RunNBD]): sequential I/O through NBD against qemu-nbd.
//
// [Run] runs the sections asked for, in a fixed order (see [Sections]), and gathers their
// reports, the machine's description and every ratio into one [Report], which prints as
// tables (WriteTable), encodes as JSON and draws as a chart ([Report.WriteChart]). Compare
// ratios, not absolute numbers across runs: shared machines vary by ±15%.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// ErrToolMissing marks a section that could not run because a program it needs (qemu-nbd,
// nbdcopy) is not installed: [Run] reports it in the section and goes on with the others.
var ErrToolMissing = errors.New("bench: a program it needs is not installed")

// Sections returns the names of every section, in the order [Run] runs them:
//
//   - sector first: it is pure CPU and the most sensitive to other work, and it runs before
//     the sections that write files leave the kernel writeback work (which takes CPU);
//   - kms next: CPU and small flushes, on a store it makes and removes;
//   - rewrap next: it is bound by flushes, so it runs before the sections that leave the
//     device writing back hundreds of MiB;
//   - io after the sections that flush small files: it writes hundreds of MiB to the page
//     cache, which the kernel then writes back for seconds;
//   - nbd last: it writes the most data, and no section after it feels the writeback.
//
// Between two sections Run flushes the scratch directory's file system (syncfs), so that a
// section starts with no dirty data left by the one before.
func Sections() []string { return []string{"sector", "kms", "rewrap", "io", "nbd"} }

// Options tune a run.
type Options struct {
	// Sections names the sections to run (see Sections); none means "sector".
	Sections []string
	// Quick runs every section's short variant: about a tenth of the time.
	Quick bool
	// Dir is the scratch directory of the sections that write files, "" for os.TempDir().
	// Each section removes what it created, also on failure or cancellation. Sections that
	// measure the disk measure the file system Dir is on.
	Dir string
	// OpenSSL is the openssl command of the sector section; "openssl" if empty.
	OpenSSL string
	// Progress, if set, is told what is being measured, each message prefixed with its
	// section's name.
	Progress func(string)
	// RewrapProcs, when more than GOMAXPROCS, is the GOMAXPROCS the rewrap section runs
	// with (see RewrapOptions.Procs): crkvol bench gives it what crkvol key rotate runs with.
	RewrapProcs int

	// sectorWindow, when not zero, replaces the sector section's measuring window: for the
	// package's tests, which make no timing claims.
	sectorWindow time.Duration
	// nbdSize, ioSize and ioRandOps, when not zero, replace the NBD section's transfer size
	// and the io section's file size and random requests (tests).
	nbdSize, ioSize int64
	ioRandOps       int
}

// Report is a whole run. The sector section's members are the report's own (as they were
// before the harness had sections); every other section has a member of its own.
type Report struct {
	*SectorReport
	// Machine is what the run ran on, with the scratch directory's file system.
	Machine Machine `json:"machine"`
	// Quick says the run measured every section's short variant.
	Quick bool `json:"quick"`
	// Sections lists the sections asked for, in the order they ran, with their wall time
	// and why one has no results.
	Sections []SectionRun `json:"sections"`
	// KMS is the kms section's report (RunKMS).
	KMS *KMSReport `json:"kms,omitempty"`
	// Rewrap is the rewrap section's report (RunRewrap).
	Rewrap *RewrapReport `json:"rewrap,omitempty"`
	// IO is the io section's report (RunIO).
	IO *IOReport `json:"io,omitempty"`
	// NBD is the nbd section's report (RunNBD).
	NBD *NBDReport `json:"nbd,omitempty"`
	// Ratios holds every section's comparisons, in run order: what --chart draws.
	Ratios []Ratio `json:"ratios"`
}

// SectionRun is one section of a run.
type SectionRun struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	// Error says why the section has no results: a program it needs is missing
	// (ToolMissing), or it failed.
	Error       string `json:"error,omitempty"`
	ToolMissing bool   `json:"toolMissing,omitempty"`
}

// Run runs the sections opts names, in the order of [Sections]. A section that cannot run for
// want of a program reports that in its SectionRun and the run goes on; a section that fails
// otherwise is reported the same way, the others still run, and Run returns the report with
// an error naming the failed sections. When ctx is cancelled Run stops at once and returns
// what it measured so far with ctx's error. An unknown section name is refused before
// anything runs.
func Run(ctx context.Context, opts Options) (*Report, error) {
	want := opts.Sections
	if len(want) == 0 {
		want = []string{"sector"}
	}
	all := Sections()
	for _, s := range want {
		if !slices.Contains(all, s) {
			return nil, fmt.Errorf("bench: unknown section %q (sections: %s)", s, strings.Join(all, ", "))
		}
	}
	r := &Report{Machine: thisMachine(opts.Dir), Quick: opts.Quick}
	if opts.Progress != nil && (len(want) > 1 || want[0] != "sector") {
		dir := opts.Dir
		if dir == "" {
			dir = os.TempDir()
		}
		note := ""
		if strings.HasPrefix(r.Machine.FileSystem, "tmpfs") {
			note = " (memory: flushes cost nothing there, so the disk sections measure no disk)"
		}
		opts.Progress(fmt.Sprintf("scratch directory %s: %s%s", dir, r.Machine.FileSystem, note))
	}
	var failed []string
	ran := 0
	for _, name := range all {
		if !slices.Contains(want, name) {
			continue
		}
		if ran > 0 {
			settle(opts.Dir)
		}
		ran++
		progress := func(msg string) {
			if opts.Progress != nil && !strings.HasPrefix(msg, name+": ") {
				msg = name + ": " + msg
			}
			if opts.Progress != nil {
				opts.Progress(msg)
			}
		}
		start := time.Now()
		err := r.runSection(ctx, name, opts, progress)
		run := SectionRun{Name: name, Seconds: time.Since(start).Seconds()}
		if ctx.Err() != nil {
			r.Sections = append(r.Sections, run)
			return r, ctx.Err()
		}
		if err != nil {
			run.Error, run.ToolMissing = err.Error(), errors.Is(err, ErrToolMissing)
			if !run.ToolMissing {
				failed = append(failed, name)
			}
		}
		r.Sections = append(r.Sections, run)
	}
	r.Ratios = r.sectionRatios()
	if len(failed) > 0 {
		return r, fmt.Errorf("bench: section %s failed (see its report)", strings.Join(failed, ", "))
	}
	return r, nil
}

// runSection runs one section into r.
func (r *Report) runSection(ctx context.Context, name string, opts Options, progress func(string)) error {
	var err error
	switch name {
	case "sector":
		r.SectorReport, err = RunSector(ctx, SectorOptions{Quick: opts.Quick, Dir: opts.Dir, OpenSSL: opts.OpenSSL, Progress: progress, window: opts.sectorWindow})
	case "kms":
		r.KMS, err = RunKMS(ctx, KMSOptions{Quick: opts.Quick, Dir: opts.Dir, Progress: progress})
	case "rewrap":
		r.Rewrap, err = RunRewrap(ctx, RewrapOptions{Quick: opts.Quick, Dir: opts.Dir, Progress: progress, Procs: opts.RewrapProcs})
	case "io":
		r.IO, err = RunIO(ctx, IOOptions{Quick: opts.Quick, Dir: opts.Dir, Progress: progress, Size: opts.ioSize, randOps: opts.ioRandOps})
	case "nbd":
		r.NBD, err = RunNBD(ctx, NBDOptions{Quick: opts.Quick, Dir: opts.Dir, Progress: progress, Size: opts.nbdSize})
	default:
		err = fmt.Errorf("bench: unknown section %q", name)
	}
	return err
}

// section is what every section's report offers the run.
type section interface {
	Ratios() []Ratio
	WriteTable(w io.Writer) error
}

// sections returns the reports of the sections that have results, in run order.
func (r *Report) sections() []section {
	var out []section
	for _, s := range r.Sections {
		if sec := r.section(s.Name); sec != nil {
			out = append(out, sec)
		}
	}
	return out
}

// section returns the report of the named section, or nil if it has none.
func (r *Report) section(name string) section {
	switch name {
	case "sector":
		if r.SectorReport != nil {
			return r.SectorReport
		}
	case "kms":
		if r.KMS != nil {
			return r.KMS
		}
	case "rewrap":
		if r.Rewrap != nil {
			return r.Rewrap
		}
	case "io":
		if r.IO != nil {
			return r.IO
		}
	case "nbd":
		if r.NBD != nil {
			return r.NBD
		}
	}
	return nil
}

// sectionRatios gathers every section's ratios, in run order.
func (r *Report) sectionRatios() []Ratio {
	out := []Ratio{}
	for _, s := range r.sections() {
		out = append(out, s.Ratios()...)
	}
	return out
}

// settle flushes the file system of dir (syncfs), so that the next section starts with no
// dirty data of the last one's to write back. Failing to is not worth failing a run for.
func settle(dir string) {
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Syncfs(int(f.Fd()))
}

// WriteTable prints the run: the machine, then each section's table in run order (or why it
// has none), then the ratios that have a target, each marked met or missed.
func (r *Report) WriteTable(w io.Writer) error {
	mode := "full"
	if r.Quick {
		mode = "quick"
	}
	fmt.Fprintf(w, "crkvol bench (%s run) on %s\n", mode, r.Machine)
	for _, s := range r.Sections {
		fmt.Fprintf(w, "\n== %s (%.0f s) ==\n", s.Name, s.Seconds)
		if s.Error != "" {
			what := "failed"
			if s.ToolMissing {
				what = "not measured"
			}
			fmt.Fprintf(w, "%s: %s\n", what, s.Error)
			continue
		}
		if sec := r.section(s.Name); sec != nil {
			if err := sec.WriteTable(w); err != nil {
				return err
			}
		}
	}
	var targeted []Ratio
	for _, x := range r.Ratios {
		if x.Target > 0 {
			targeted = append(targeted, x)
		}
	}
	if len(targeted) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\n== targets ==")
	if r.Quick {
		// One short round on a machine that may be busy: a hint, not a verdict.
		fmt.Fprintln(w, "a quick run measures short rounds: its ratios are indicative only; judge the targets with a full run")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "section\tratio\tvalue\ttarget\tresult")
	for _, x := range targeted {
		mark := "met"
		switch {
		case r.Quick && x.Value < x.Target:
			mark = "below (quick)"
		case r.Quick:
			mark = "above (quick)"
		case x.Value < x.Target:
			mark = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%s vs %s\t%.2fx\t%.2fx\t%s\n", x.Section, x.Name, x.Against, x.Value, x.Target, mark)
	}
	return tw.Flush()
}
