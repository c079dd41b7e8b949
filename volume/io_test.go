package volume_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestVolumeIOAllocatesNothing: reads and writes through an attached volume, aligned or not,
// small or split over the cores, allocate nothing per call.
func TestVolumeIOAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector (its sync.Pool drops items)")
	}
	f := newFixture(t)
	info := f.create(t, "allocs.img", 4<<20)
	v, err := f.mgr.Open(f.ctx, info.Path)
	require.NoError(t, err)
	defer v.Close()
	buf := make([]byte, 1<<20+100)
	for _, tc := range []struct {
		n   int
		off int64
	}{{4096, 8192}, {1 << 20, 1 << 20}, {100, 4000}, {1<<20 + 100, 4000}} {
		p := buf[:tc.n]
		_, err := v.WriteAt(p, tc.off) // warm the pools
		require.NoError(t, err)
		assert.Zero(t, testing.AllocsPerRun(10, func() { _, _ = v.WriteAt(p, tc.off) }), "write %d at %d", tc.n, tc.off)
		assert.Zero(t, testing.AllocsPerRun(10, func() { _, _ = v.ReadAt(p, tc.off) }), "read %d at %d", tc.n, tc.off)
	}
}

// BenchmarkVolumeIO drives an attached volume with sequential 1 MiB and random 4 KiB requests,
// for CPU profiles and allocation counts of the volume's I/O path. It has no reference and
// makes no comparison: the volume-against-raw-file ratios, with both files in a defined
// page-cache state, are `crkvol bench --io` (crkvol/bench.RunIO).
func BenchmarkVolumeIO(b *testing.B) {
	const size = 64 << 20
	f := newFixture(b)
	info := f.create(b, "bench.img", size)
	v, err := f.mgr.Open(f.ctx, info.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	if _, err := v.WriteAt(make([]byte, size), 0); err != nil { // allocate the file
		b.Fatal(err)
	}
	for _, write := range []bool{false, true} {
		for _, n := range []int{1 << 20, 4096} {
			op := map[bool]string{false: "read", true: "write"}[write]
			b.Run(fmt.Sprintf("%s-%d", op, n), func(b *testing.B) {
				buf := pattern(n, 1)
				rng := rand.New(rand.NewPCG(1, 2))
				b.SetBytes(int64(n))
				b.ReportAllocs()
				var off int64
				for b.Loop() {
					if n == 4096 {
						off = rng.Int64N(size/4096) * 4096
					} else if off += int64(n); off+int64(n) > size {
						off = 0
					}
					var err error
					if write {
						_, err = v.WriteAt(buf, off)
					} else {
						_, err = v.ReadAt(buf, off)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
