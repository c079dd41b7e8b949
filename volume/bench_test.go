package volume_test

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"crkvol/volume"
)

// BenchmarkRewrap measures rewrapping one volume: open the image, rewrap the ciphertext in
// the key service, commit the token to both header copies (fsynced), update the
// registration. bytes/rewrap is what reaches the image.
func BenchmarkRewrap(b *testing.B) {
	f := newFixture(b)
	info := f.create(b, "rewrap.img", 1<<30)
	f.mgr.Close()
	mgr := volume.NewManager(f.ks, f.reg, volume.Options{})
	defer mgr.Close()
	var written int64
	b.ReportAllocs()
	for b.Loop() {
		rep := mgr.Rewrap(f.ctx, f.key.ID, "", []string{info.CRN}) // "": rewrap even if current
		if err := rep.Err(); err != nil {
			b.Fatal(err)
		}
		written += rep.BytesWritten
	}
	b.ReportMetric(float64(written)/float64(b.N), "bytes/rewrap")
}

// BenchmarkRotateFleet rotates a key protecting 1,000 volumes; each iteration is one
// rotation with its hook rewrapping the whole fleet in waves (Options.RewrapBatch, default
// Workers). Besides volumes/s it reports flushes/volume by the flush model of the rewrap
// (the report's header flushes, the key service store's and the registry's flushes, per
// rewrapped volume) and cpu-µs/volume, the process's CPU time (user and system) per volume:
// on a shared machine that says more than the rate. CRKVOL_BENCH_WORKERS sets Workers.
func BenchmarkRotateFleet(b *testing.B) {
	const fleet = 1000
	f := newFixture(b)
	if w := os.Getenv("CRKVOL_BENCH_WORKERS"); w != "" {
		n, err := strconv.Atoi(w)
		if err != nil {
			b.Fatal(err)
		}
		f.mgr.Close()
		f.mgr = volume.NewManager(f.ks, f.reg, volume.Options{Workers: n, Now: f.clock.Now,
			OnReport: func(r *volume.Report) { f.mu.Lock(); f.reports = append(f.reports, r); f.mu.Unlock() }})
		b.Cleanup(f.mgr.Close)
	}
	for i := range fleet {
		f.create(b, fmt.Sprintf("v%04d.img", i), 1<<20)
	}
	var volumes, rewrapped int
	var flushes uint64
	store0, reg0, cpu0 := f.svc.StoreStats(), f.reg.Stats(), processCPU(b)
	b.ResetTimer()
	for b.Loop() {
		f.rotate(b)
		rep := f.lastReport()
		if err := rep.Err(); err != nil {
			b.Fatal(err)
		}
		volumes += rep.Volumes
		rewrapped += rep.Rewrapped
		flushes += uint64(rep.HeaderFlushes)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	store1, reg1 := f.svc.StoreStats(), f.reg.Stats()
	flushes += store1.Flushes - store0.Flushes + reg1.Flushes - reg0.Flushes
	if rewrapped != volumes {
		b.Fatalf("%d of %d volumes rewrapped", rewrapped, volumes)
	}
	b.ReportMetric(float64(volumes)/b.Elapsed().Seconds(), "volumes/s")
	b.ReportMetric(float64(flushes)/float64(rewrapped), "flushes/volume")
	b.ReportMetric(float64(cpu.Microseconds())/float64(rewrapped), "cpu-µs/volume")
}

// processCPU returns the CPU time (user and system) the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
