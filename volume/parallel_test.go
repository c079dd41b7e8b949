package volume

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
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

// memFile is an in-memory file for the reads of Parallel: it counts its calls and fails
// those that touch byte failAt (when not negative).
type memFile struct {
	mu     sync.Mutex
	data   []byte
	calls  int
	failAt int64
}

var errMemFile = errors.New("memFile: injected failure")

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.failAt >= off && m.failAt < off+int64(len(p)) {
		return 0, errMemFile
	}
	return copy(p, m.data[off:]), nil
}

// TestParallelReadDecrypt checks ReadDecrypt against the serial cipher, the number of reads
// it splits a request into, and what it returns when one chunk's read fails.
func TestParallelReadDecrypt(t *testing.T) {
	t.Parallel()
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(7, 7)), key)
	c, err := sector.New(key, 4096)
	require.NoError(t, err)
	const base = 3 << 20 // where in the file the request starts
	for _, tc := range []struct {
		size, workers, calls int
	}{
		{4096, 2, 1},         // below the threshold
		{128 << 10, 2, 1},    // less than two chunks
		{256 << 10, 2, 2},    // two 128 KiB chunks
		{1 << 20, 2, 4},      // two chunks a worker
		{1 << 20, 1, 1},      // nobody to share with
		{1 << 20, 3, 6},      // 43 sectors a chunk
		{4<<20 + 4096, 2, 4}, // a short last chunk
		{64 << 10, 4, 1},     // at the threshold, one chunk
		{2<<20 - 4096, 2, 4}, // not a power of two
	} {
		name := fmt.Sprintf("%d/%d", tc.size, tc.workers)
		p := NewParallel(c, tc.workers, 0)
		plain := make([]byte, tc.size)
		fillRand(rand.New(rand.NewPCG(uint64(tc.size), 8)), plain)
		first := uint64(base / sector.IVUnit)
		f := &memFile{data: make([]byte, base+tc.size), failAt: -1}
		c.EncryptSectors(f.data[base:], plain, first)

		got := make([]byte, tc.size)
		n, err := p.ReadDecrypt(f, got, base, first)
		require.NoError(t, err, name)
		assert.Equal(t, tc.size, n, name)
		assert.Equal(t, tc.calls, f.calls, name+": read calls")
		require.True(t, bytes.Equal(plain, got), name+": read")
		p.Close()
	}

	// A failing chunk: the bytes before it are reported done, with its error.
	p := NewParallel(c, 2, 0)
	defer p.Close()
	f := &memFile{data: make([]byte, 1<<20), failAt: 600 << 10} // in the third 256 KiB chunk
	n, err := p.ReadDecrypt(f, make([]byte, 1<<20), 0, 0)
	assert.ErrorIs(t, err, errMemFile)
	assert.Equal(t, 512<<10, n)
	small := &memFile{data: make([]byte, 8192), failAt: 0}
	n, err = p.ReadDecrypt(small, make([]byte, 8192), 0, 0)
	assert.ErrorIs(t, err, errMemFile)
	assert.Zero(t, n)
}

// TestParallelReadDecryptNoAllocations: a split read allocates nothing.
func TestParallelReadDecryptNoAllocations(t *testing.T) {
	key := make([]byte, 64)
	fillRand(rand.New(rand.NewPCG(9, 9)), key)
	c, err := sector.New(key, 4096)
	require.NoError(t, err)
	p := NewParallel(c, 2, 0)
	defer p.Close()
	f := &memFile{data: make([]byte, 1<<20), failAt: -1}
	buf := make([]byte, 1<<20)
	_, _ = p.ReadDecrypt(f, buf, 0, 0) // warm the request pool
	assert.Zero(t, testing.AllocsPerRun(20, func() { _, _ = p.ReadDecrypt(f, buf, 0, 0) }))
}
