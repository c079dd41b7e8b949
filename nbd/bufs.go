package nbd

import (
	"sync"
	"unsafe"
)

// numClasses is the number of buffer size classes: powers of two from 4 KiB to 2 GiB, the
// largest payload NewServer accepts.
const numClasses = 20

// defaultMaxIdleBytes bounds the free buffers a Server keeps for reuse while clients are
// connected. Streaming reuses a few buffers at a time; the rest go back to the OS.
const defaultMaxIdleBytes = 16 << 20

// bufPools recycle request buffers by size class (powers of two from 4 KiB), so streaming
// I/O does not map and zero a buffer per request, and keep the free ones bounded: a buffer
// put back when maxIdle bytes are already free is returned to the operating system at once
// (unmapped, on Linux, where buffers live outside the Go heap), and release returns all of
// them when the last client leaves. Buffers of the Go heap handed to put are cleared and
// dropped. The zero value is ready to use, with a bound of 16 MiB. Safe for concurrent use.
//
// Buffers hold plaintext: each is cleared before it is reused, and on Linux they are left
// out of core dumps.
type bufPools struct {
	maxIdle int // bytes kept free at most; defaultMaxIdleBytes if zero

	mu    sync.Mutex
	free  [numClasses][][]byte
	idle  int            // bytes in free
	owned map[*byte]bool // every buffer allocated here and not yet returned: true while in use
}

func sizeClass(n int) int {
	c := 0
	for 4096<<c < n {
		c++
	}
	return c
}

// get returns a buffer of n bytes (0 < n <= 2 GiB) whose contents are undefined.
func (p *bufPools) get(n int) []byte {
	c := sizeClass(n)
	if c >= numClasses {
		return make([]byte, n) // not reached: NewServer caps the payload at 2 GiB
	}
	p.mu.Lock()
	if k := len(p.free[c]); k > 0 {
		b := p.free[c][k-1]
		p.free[c][k-1] = nil
		p.free[c] = p.free[c][:k-1]
		p.idle -= cap(b)
		p.owned[unsafe.SliceData(b)] = true
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	b, mapped := osAlloc(4096 << c)
	if !mapped {
		return b[:n] // from the Go heap: put clears it and leaves it to the collector
	}
	p.mu.Lock()
	if p.owned == nil {
		p.owned = map[*byte]bool{}
	}
	p.owned[unsafe.SliceData(b)] = true
	p.mu.Unlock()
	return b[:n]
}

// put recycles b, which held a request's plaintext, cleared, or returns it to the OS. Only
// b's length is cleared: every buffer is cleared to its length before it returns to a pool,
// and a fresh one is zero, so the rest of its capacity holds nothing. A buffer of the Go heap
// (not from get) is cleared and dropped. Putting a buffer that is already free again is
// ignored; once put has returned a buffer to the OS, nothing may touch it, nor put it again.
func (p *bufPools) put(b []byte) {
	if cap(b) == 0 {
		return
	}
	key := unsafe.SliceData(b[:cap(b)])
	p.mu.Lock()
	inUse, ours := p.owned[key]
	if ours && inUse {
		// Marked free at once, under the lock, so a second put racing this one returns
		// here instead of adding b to a free list twice (two requests would then share it).
		p.owned[key] = false
	}
	p.mu.Unlock()
	switch {
	case !ours:
		clear(b) // the Go heap's: left to the collector
		return
	case !inUse:
		return // already free (or being freed), and cleared then
	}
	clear(b) // b is still ours alone: no get hands it out until it is on a free list
	b = b[:cap(b)]
	maxIdle := p.maxIdle
	if maxIdle <= 0 {
		maxIdle = defaultMaxIdleBytes
	}
	p.mu.Lock()
	if p.idle+cap(b) <= maxIdle {
		c := sizeClass(cap(b))
		p.free[c] = append(p.free[c], b)
		p.idle += cap(b)
		p.mu.Unlock()
		return
	}
	delete(p.owned, key)
	p.mu.Unlock()
	osFree(b)
}

// release returns every free buffer to the OS; buffers in use are not affected.
func (p *bufPools) release() {
	p.mu.Lock()
	var bufs [][]byte
	for c := range p.free {
		for _, b := range p.free[c] {
			delete(p.owned, unsafe.SliceData(b))
			bufs = append(bufs, b)
		}
		p.free[c] = nil
	}
	p.idle = 0
	p.mu.Unlock()
	for _, b := range bufs {
		osFree(b)
	}
}
