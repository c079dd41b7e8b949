package volume

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"crkvol/sector"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParallelMatchesSerial(t *testing.T) {
	t.Parallel()
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(4, 4)), key)
	for _, path := range sector.Paths() {
		for _, size := range []int{512, 4096} {
			c, err := sector.NewPath(key, size, path)
			require.NoError(t, err)
			p := NewParallel(c, 3, 8<<10)
			rng := rand.New(rand.NewPCG(uint64(size), 1))
			for _, n := range []int{1, 2, 15, 16, 17, 64, 256, 1 << 20 / size} {
				src := make([]byte, n*size)
				fillRand(rng, src)
				first := uint64(rng.IntN(1<<20)) * uint64(size/sector.IVUnit)
				want := make([]byte, len(src))
				c.EncryptSectors(want, src, first)
				got := make([]byte, len(src))
				p.EncryptSectors(got, src, first)
				require.True(t, bytes.Equal(want, got), "%s %d x %d", path, n, size)
				p.DecryptSectors(got, got, first) // in place
				require.True(t, bytes.Equal(src, got), "%s %d x %d decrypt", path, n, size)
			}
			p.Close()
		}
	}
}

func TestParallelNoAllocations(t *testing.T) {
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(5, 5)), key)
	c, err := sector.New(key, 4096)
	require.NoError(t, err)
	p := NewParallel(c, 2, 0)
	defer p.Close()
	buf := make([]byte, 1<<20)
	p.EncryptSectors(buf, buf, 0) // warm the WaitGroup pool
	allocs := testing.AllocsPerRun(20, func() { p.EncryptSectors(buf, buf, 0) })
	assert.Zero(t, allocs)
}

// BenchmarkParallel compares one 1 MiB request on one goroutine with the same request split
// over GOMAXPROCS workers.
func BenchmarkParallel(b *testing.B) {
	c, err := sector.New(benchKey(), 4096)
	if err != nil {
		b.Fatal(err)
	}
	for _, workers := range []int{1, 0} {
		name := "workers=1"
		if workers == 0 {
			name = "workers=GOMAXPROCS"
		}
		b.Run(fmt.Sprintf("%s/size=1MiB", name), func(b *testing.B) {
			p := NewParallel(c, workers, 0)
			defer p.Close()
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				p.EncryptSectors(buf, buf, 0)
			}
		})
	}
}

// TestParallelClose: requests after (or racing) Close run in the caller instead of panicking.
func TestParallelClose(t *testing.T) {
	t.Parallel()
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(6, 6)), key)
	c, err := sector.New(key, 4096)
	require.NoError(t, err)
	p := NewParallel(c, 4, 4096)
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	c.EncryptSectors(want, buf, 0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			out := make([]byte, len(buf))
			p.EncryptSectors(out, buf, 0)
			if !bytes.Equal(out, want) {
				t.Error("wrong output")
				return
			}
		}
	}()
	p.Close()
	p.Close()
	<-done
	out := make([]byte, len(buf))
	p.EncryptSectors(out, buf, 0)
	assert.Equal(t, want, out)
}

func fillRand(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

func benchKey() []byte {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i*7 + 1)
	}
	return key
}
