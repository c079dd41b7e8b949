package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// IOOptions tune RunIO.
type IOOptions struct {
	// Quick measures one round on 64 MiB files instead of three rounds on 256 MiB files.
	Quick bool
	// Dir is the scratch directory the two files are made in (a new directory inside it,
	// removed at the end); os.TempDir() if empty. Its file system is what is measured.
	Dir string
	// Size is the data size of each file in bytes, a positive multiple of 1 MiB; 256 MiB (64
	// MiB with Quick) if zero. The default is several times the CPU's caches, so a pass over
	// a file measures the page cache rather than L2/L3, and small enough that both files
	// fully dirty (2 × Size) stay far below the kernel's background writeback threshold
	// (vm.dirty_background_ratio, 10% of the dirtyable memory by default), so the measured
	// writes never start writeback of one file and not the other.
	Size int64
	// Rounds is how many interleaved rounds are measured, the best of each case kept; 3 (1
	// with Quick) if zero.
	Rounds int
	// Progress, if set, is told what is being measured.
	Progress func(string)

	// randOps, when not zero, replaces the number of random requests a measurement makes
	// (Size / 4 KiB): for the package's tests.
	randOps int
}

// IOResult is one measured case of RunIO: the best of its rounds for each side.
type IOResult struct {
	// Pattern is "sequential 1 MiB" or "random 4 KiB".
	Pattern string `json:"pattern"`
	// Op is "read" or "write".
	Op string `json:"op"`
	// State is the page-cache state both files were in: "clean" or "dirty".
	State string `json:"state"`
	// Requests is how many requests one measurement made.
	Requests int `json:"requests"`
	// VolumeMBps and RawMBps are 10^6 bytes per second through the volume and on the raw file.
	VolumeMBps float64 `json:"volumeMBps"`
	RawMBps    float64 `json:"rawMBps"`
	// Ratio is VolumeMBps / RawMBps.
	Ratio float64 `json:"ratio"`
	// Suspect counts the measurements of the case whose page-cache check failed (see
	// IOReport.StateMismatches): a side's figure is its best measurement that passed, a
	// suspect one only when none did.
	Suspect int `json:"suspect,omitempty"`
}

// Name is the case's label, such as "random 4 KiB write, dirty".
func (r IOResult) Name() string { return r.Pattern + " " + r.Op + ", " + r.State }

// IOReport is a whole RunIO run.
type IOReport struct {
	// Dir is the directory the files were in, FileSystem its file system type.
	Dir        string `json:"dir"`
	FileSystem string `json:"fileSystem"`
	// Size is the data size of each file, Rounds the interleaved rounds measured.
	Size   int64 `json:"size"`
	Rounds int   `json:"rounds"`
	// SectorSize is the volume's encryption sector size.
	SectorSize int `json:"sectorSize"`
	// Seed is the seed of the random offsets, the same on both sides.
	Seed uint64 `json:"seed"`
	// DirtyBackgroundBytes is the kernel's background writeback threshold at the start (from
	// vm.dirty_background_bytes, or vm.dirty_background_ratio of the available memory), and
	// DirtyAtStart the bytes already dirty in the whole system then.
	DirtyBackgroundBytes int64 `json:"dirtyBackgroundBytes"`
	DirtyAtStart         int64 `json:"dirtyAtStart"`
	// StateChecks counts the page-cache checks made (cachestat(2) of each file's data
	// range before and after each measurement); StateVerified is false when the kernel
	// could not be asked, StateMismatches lists every check that found a state other than
	// the one the case is defined by (a mismatch makes that measurement suspect).
	StateChecks     int      `json:"stateChecks"`
	StateVerified   bool     `json:"stateVerified"`
	StateMismatches []string `json:"stateMismatches,omitempty"`
	// Warnings say what may have made the run unfair (such as a dirty threshold too low for
	// the files' size).
	Warnings []string   `json:"warnings,omitempty"`
	Results  []IOResult `json:"results"`
}

// ioSeed seeds the random offsets: fixed, so that every run and both sides make the same
// requests.
const ioSeed = 24

// ioSide is one of the two files compared: the volume, or the raw file.
type ioSide struct {
	name string
	rw   interface {
		io.ReaderAt
		io.WriterAt
	}
	f    *os.File // the file, for preparing, flushing and checking it
	base int64    // where the data starts in f
}

// ioCase is one pattern and direction.
type ioCase struct {
	pattern string
	write   bool
	reqSize int
}

func (c ioCase) op() string {
	if c.write {
		return "write"
	}
	return "read"
}

var ioCases = []ioCase{
	{"sequential 1 MiB", false, 1 << 20},
	{"random 4 KiB", false, 4 << 10},
	{"sequential 1 MiB", true, 1 << 20},
	{"random 4 KiB", true, 4 << 10},
}

// ioRun is the state of one RunIO.
type ioRun struct {
	ctx     context.Context
	opts    IOOptions
	rep     *IOReport
	sides   [2]*ioSide // volume, raw
	offs    []int64    // the random requests' offsets
	randPgs int64      // distinct pages the random requests touch
	pages   int64      // pages of a file's data
	fill    []byte     // what the files are written with before a measurement
	wbuf    []byte     // what measured writes write
	rbuf    []byte     // where measured reads read to
}

// RunIO compares I/O through an attached volume (Volume.ReadAt and WriteAt: aes-xts-plain64
// with 4096-byte sectors) with the same requests on a raw file (pread and pwrite) of the same
// size in the same directory: sequential 1 MiB and random 4 KiB reads and writes, each with
// both files in two page-cache states, "clean" (freshly written in full and flushed with
// fdatasync: every page cached, none dirty) and "dirty" (freshly written in full, not
// flushed: every page cached and dirty, none under writeback). Both files are brought to a
// state by the same procedure right before the measurements of that state, the state is
// verified with cachestat(2) before and after each measurement, and the volume and the raw
// file are measured interleaved in rounds, alternating which goes first; the best round of
// each is kept and reported with their ratio.
func RunIO(ctx context.Context, opts IOOptions) (*IOReport, error) {
	if opts.Size == 0 {
		opts.Size = 256 << 20
		if opts.Quick {
			opts.Size = 64 << 20
		}
	}
	if opts.Size <= 0 || opts.Size%(1<<20) != 0 {
		return nil, fmt.Errorf("bench io: size %d is not a positive multiple of 1 MiB", opts.Size)
	}
	if opts.Rounds < 0 {
		return nil, fmt.Errorf("bench io: %d rounds", opts.Rounds)
	}
	if opts.Rounds == 0 {
		opts.Rounds = 3
		if opts.Quick {
			opts.Rounds = 1
		}
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	dir, err := os.MkdirTemp(opts.Dir, "crkvol-bench-io")
	if err != nil {
		return nil, fmt.Errorf("bench io: %w", err)
	}
	defer os.RemoveAll(dir)

	r := &ioRun{ctx: ctx, opts: opts, rep: &IOReport{
		Dir: filepath.Dir(dir), FileSystem: fileSystem(dir), Size: opts.Size, Rounds: opts.Rounds, Seed: ioSeed,
	}}
	r.rep.DirtyBackgroundBytes, r.rep.DirtyAtStart = dirtyThreshold()
	if r.rep.DirtyBackgroundBytes > 0 && 2*opts.Size+r.rep.DirtyAtStart > r.rep.DirtyBackgroundBytes/2 {
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf(
			"two dirty files (%d MiB) and what is already dirty (%d MiB) come near the background writeback threshold (%d MiB): the kernel may start writeback during a measurement; use a smaller size",
			2*opts.Size>>20, r.rep.DirtyAtStart>>20, r.rep.DirtyBackgroundBytes>>20))
	}

	progress("io: preparing a volume and a raw file")
	vol, err := newBenchVolume(filepath.Join(dir, "volume.img"), opts.Size)
	if err != nil {
		return nil, fmt.Errorf("bench io: %w", err)
	}
	defer vol.Close()
	r.rep.SectorSize = vol.SectorSize()
	vf, err := os.OpenFile(vol.Path(), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("bench io: %w", err)
	}
	defer vf.Close()
	rf, err := os.OpenFile(filepath.Join(dir, "raw.img"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("bench io: %w", err)
	}
	defer rf.Close()
	if err := rf.Truncate(opts.Size); err != nil {
		return nil, fmt.Errorf("bench io: %w", err)
	}
	st, err := vf.Stat()
	if err != nil {
		return nil, fmt.Errorf("bench io: %w", err)
	}
	r.sides = [2]*ioSide{
		{name: "volume", rw: vol, f: vf, base: st.Size() - opts.Size},
		{name: "raw", rw: rf, f: rf},
	}

	pg := int64(os.Getpagesize())
	r.pages = (opts.Size + pg - 1) / pg
	r.fill = make([]byte, 1<<20)
	r.wbuf = make([]byte, 1<<20)
	r.rbuf = make([]byte, 1<<20)
	if _, err := rand.Read(r.fill); err != nil {
		return nil, err
	}
	if _, err := rand.Read(r.wbuf); err != nil {
		return nil, err
	}
	n := opts.randOps
	if n <= 0 {
		n = int(opts.Size / (4 << 10))
	}
	rng := mrand.New(mrand.NewPCG(ioSeed, ioSeed))
	touched := map[int64]bool{}
	r.offs = make([]int64, n)
	for i := range r.offs {
		r.offs[i] = rng.Int64N(opts.Size/(4<<10)) * (4 << 10)
		for p := r.offs[i] / pg; p <= (r.offs[i]+(4<<10)-1)/pg; p++ {
			touched[p] = true
		}
	}
	r.randPgs = int64(len(touched))
	r.rep.StateVerified = true

	type key struct {
		c     ioCase
		state string
	}
	best := map[key]*IOResult{}
	var clean [2]map[key]float64 // the best measurement of each side whose state checks passed
	for round := range opts.Rounds {
		for _, state := range []string{"clean", "dirty"} {
			// Both files written in full by the same procedure, then flushed for "clean".
			for _, s := range r.sides {
				if err := r.prepare(s, state == "clean"); err != nil {
					return nil, err
				}
			}
			for ci, c := range ioCases {
				progress(fmt.Sprintf("io: round %d of %d: %s %s, %s", round+1, opts.Rounds, c.pattern, c.op(), state))
				k := key{c, state}
				res := best[k]
				if res == nil {
					res = &IOResult{Pattern: c.pattern, Op: c.op(), State: state, Requests: r.requests(c)}
					best[k] = res
				}
				order := [2]int{0, 1}
				if (ci+round)%2 == 1 {
					order = [2]int{1, 0}
				}
				for _, i := range order {
					mbps, ok, err := r.measure(r.sides[i], c, state)
					if err != nil {
						return nil, err
					}
					if !ok {
						res.Suspect++
					} else {
						if clean[i] == nil {
							clean[i] = map[key]float64{}
						}
						clean[i][k] = max(clean[i][k], mbps)
					}
					if i == 0 {
						res.VolumeMBps = max(res.VolumeMBps, mbps)
					} else {
						res.RawMBps = max(res.RawMBps, mbps)
					}
				}
			}
		}
		// Leave nothing dirty for the next round's (or another section's) measurements.
		for _, s := range r.sides {
			if err := fdatasync(s.f); err != nil {
				return nil, err
			}
		}
	}
	for _, state := range []string{"clean", "dirty"} {
		for _, c := range ioCases {
			k := key{c, state}
			res := best[k]
			// A side's measurements that passed their state checks are its figure; only a
			// side with none passing keeps its best suspect one (and the case its count).
			if v, ok := clean[0][k]; ok {
				res.VolumeMBps = v
			}
			if v, ok := clean[1][k]; ok {
				res.RawMBps = v
			}
			if res.RawMBps > 0 {
				res.Ratio = res.VolumeMBps / res.RawMBps
			}
			r.rep.Results = append(r.rep.Results, *res)
		}
	}
	return r.rep, nil
}

// requests is how many requests a measurement of c makes.
func (r *ioRun) requests(c ioCase) int {
	if c.reqSize == 1<<20 {
		return int(r.opts.Size >> 20)
	}
	return len(r.offs)
}

// prepare writes s's data in full, 1 MiB at a time, then flushes it if clean: afterwards every
// page is cached, and either none or all are dirty, none under writeback.
func (r *ioRun) prepare(s *ioSide, clean bool) error {
	for off := int64(0); off < r.opts.Size; off += int64(len(r.fill)) {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		if _, err := s.f.WriteAt(r.fill, s.base+off); err != nil {
			return fmt.Errorf("bench io: preparing the %s file: %w", s.name, err)
		}
	}
	if clean {
		return fdatasync(s.f)
	}
	return nil
}

// measure runs c once on s, whose file is in state, and returns its MB/s and whether the
// page-cache checks passed. It checks the state before (a file found otherwise, such as
// written back by a sync(2) elsewhere on the machine, is prepared again, once), and after a
// write that the pages it dirtied are still dirty (no writeback started during the
// measurement); a measured write in the clean state is flushed afterwards (untimed) to give
// the next measurement a clean file again.
func (r *ioRun) measure(s *ioSide, c ioCase, state string) (mbps float64, ok bool, err error) {
	if err := r.ctx.Err(); err != nil {
		return 0, false, err
	}
	wantDirty := int64(0)
	if state == "dirty" {
		wantDirty = r.pages
	}
	label := s.name + " " + c.pattern + " " + c.op() + ", " + state
	ok = r.checkRange(s, label+": before", wantDirty, wantDirty)
	if !ok {
		if err := r.prepare(s, state == "clean"); err != nil {
			return 0, false, err
		}
		ok = r.checkRange(s, label+": before, prepared again", wantDirty, wantDirty)
	}
	var bytes int64
	start := time.Now()
	if c.reqSize == 1<<20 {
		for off := int64(0); off < r.opts.Size; off += 1 << 20 {
			if err := r.do(s, c, off); err != nil {
				return 0, false, err
			}
			bytes += 1 << 20
		}
	} else {
		for i, off := range r.offs {
			if i%4096 == 4095 {
				if err := r.ctx.Err(); err != nil {
					return 0, false, err
				}
			}
			if err := r.do(s, c, off); err != nil {
				return 0, false, err
			}
			bytes += int64(c.reqSize)
		}
	}
	elapsed := time.Since(start)
	if c.write {
		// After a write, the pages it dirtied must still be dirty: fewer would mean the
		// kernel started writing the file back during the measurement. Random writes to a
		// clean file dirty at least the pages they touch, more where the page cache holds
		// the file in large folios (dirtied whole).
		least := wantDirty
		if state == "clean" {
			least = r.pages
			if c.reqSize != 1<<20 {
				least = r.randPgs
			}
		}
		if !r.checkRange(s, label+": after", least, r.pages) {
			ok = false
		}
		if state == "clean" {
			if err := fdatasync(s.f); err != nil {
				return 0, false, err
			}
		}
	}
	return float64(bytes) / 1e6 / elapsed.Seconds(), ok, nil
}

// do makes one request of c at data offset off on s.
func (r *ioRun) do(s *ioSide, c ioCase, off int64) error {
	var err error
	if c.write {
		_, err = s.rw.WriteAt(r.wbuf[:c.reqSize], off)
	} else {
		_, err = s.rw.ReadAt(r.rbuf[:c.reqSize], off)
	}
	if err != nil {
		return fmt.Errorf("bench io: %s %s at %d: %w", s.name, c.op(), off, err)
	}
	return nil
}

// checkRange asks the kernel (cachestat) for the page-cache state of s's data and records a
// mismatch unless every page is cached, none under writeback, and between least and most
// pages dirty. It reports whether the state was as wanted (true too when it cannot be asked).
func (r *ioRun) checkRange(s *ioSide, label string, least, most int64) bool {
	if !r.rep.StateVerified {
		return true
	}
	cr := unix.CachestatRange{Off: uint64(s.base), Len: uint64(r.opts.Size)}
	var cs unix.Cachestat_t
	if err := unix.Cachestat(uint(s.f.Fd()), &cr, &cs, 0); err != nil {
		r.rep.StateVerified = false
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("page-cache state not verified: cachestat: %v", err))
		return true
	}
	r.rep.StateChecks++
	if int64(cs.Cache) != r.pages || int64(cs.Dirty) < least || int64(cs.Dirty) > most || cs.Writeback != 0 {
		want := strconv.FormatInt(least, 10)
		if most != least {
			want += " to " + strconv.FormatInt(most, 10)
		}
		r.rep.StateMismatches = append(r.rep.StateMismatches, fmt.Sprintf(
			"%s: %d of %d pages cached, %d dirty (want %s), %d under writeback",
			label, cs.Cache, r.pages, cs.Dirty, want, cs.Writeback))
		return false
	}
	return true
}

func fdatasync(f *os.File) error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("bench io: flushing %s: %w", f.Name(), err)
	}
	return nil
}

// dirtyThreshold returns the kernel's background writeback threshold (approximated, for the
// ratio form, against MemAvailable) and the bytes dirty now; zeros when they cannot be read.
func dirtyThreshold() (threshold, dirty int64) {
	mem := map[string]int64{}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			name, rest, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				continue
			}
			if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
				mem[name] = n << 10 // kB
			}
		}
		f.Close()
	}
	sysctl := func(name string) int64 {
		b, err := os.ReadFile("/proc/sys/vm/" + name)
		if err != nil {
			return 0
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	threshold = sysctl("dirty_background_bytes")
	if threshold == 0 {
		threshold = sysctl("dirty_background_ratio") * mem["MemAvailable"] / 100
	}
	return threshold, mem["Dirty"]
}

// fileSystem names the file system dir is on.
func fileSystem(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("0x%x", uint32(st.Type))
}

// Ratios returns each case's volume/raw ratio, against a target of 0.8.
func (r *IOReport) Ratios() []Ratio {
	out := make([]Ratio, 0, len(r.Results))
	for _, x := range r.Results {
		out = append(out, Ratio{Section: "io", Name: x.Name(), Value: x.Ratio, Against: "raw file", Target: 0.8})
	}
	return out
}

// WriteTable prints the report: what each side and state is, then MB/s and the ratio per case.
func (r *IOReport) WriteTable(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "Volume I/O against the raw file: %s in %s, %d MiB files, best of %d interleaved round(s), MB/s = 10^6 bytes/s\n",
		r.FileSystem, r.Dir, r.Size>>20, r.Rounds)
	fmt.Fprintf(bw, "  volume  crkvol volume (aes-xts-plain64, %d-byte sectors) through Volume.ReadAt/WriteAt\n", r.SectorSize)
	fmt.Fprintf(bw, "  raw     the same requests as pread/pwrite on a plain file of the same size beside it\n")
	fmt.Fprintf(bw, "  clean   both files freshly written in full and flushed (fdatasync): every page cached, none dirty\n")
	fmt.Fprintf(bw, "  dirty   both files freshly rewritten in full, not flushed: every page cached and dirty, none under writeback\n")
	fmt.Fprintf(bw, "  sequential: one pass over the file; random: %d aligned requests at the same seeded uniform offsets on both sides\n",
		r.requests("random 4 KiB"))
	if r.StateVerified {
		fmt.Fprintf(bw, "  page-cache state checked %d times (cachestat), %d mismatches\n", r.StateChecks, len(r.StateMismatches))
	}
	fmt.Fprintln(bw)
	tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tstate\tvolume MB/s\traw MB/s\tvolume/raw\t")
	for _, x := range r.Results {
		suspect := ""
		if x.Suspect > 0 {
			suspect = fmt.Sprintf("%d suspect", x.Suspect)
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%.0f\t%.0f\t%.2fx\t%s\n", x.Pattern, x.Op, x.State, x.VolumeMBps, x.RawMBps, x.Ratio, suspect)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, m := range r.StateMismatches {
		fmt.Fprintf(bw, "  state mismatch: %s\n", m)
	}
	for _, m := range r.Warnings {
		fmt.Fprintf(bw, "  warning: %s\n", m)
	}
	return bw.Flush()
}

// requests returns the requests per measurement of the results of pattern, 0 if none.
func (r *IOReport) requests(pattern string) int {
	for _, x := range r.Results {
		if x.Pattern == pattern {
			return x.Requests
		}
	}
	return 0
}
