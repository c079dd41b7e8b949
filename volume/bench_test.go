package volume_test

import (
	"fmt"
	"testing"

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
// rotation with its hook rewrapping the whole fleet on the Manager's worker pool.
func BenchmarkRotateFleet(b *testing.B) {
	const fleet = 1000
	f := newFixture(b)
	for i := range fleet {
		f.create(b, fmt.Sprintf("v%04d.img", i), 1<<20)
	}
	var volumes, rewrapped int
	b.ResetTimer()
	for b.Loop() {
		f.rotate(b)
		rep := f.lastReport()
		if err := rep.Err(); err != nil {
			b.Fatal(err)
		}
		volumes += rep.Volumes
		rewrapped += rep.Rewrapped
	}
	if rewrapped != volumes {
		b.Fatalf("%d of %d volumes rewrapped", rewrapped, volumes)
	}
	b.ReportMetric(float64(volumes)/b.Elapsed().Seconds(), "volumes/s")
}
