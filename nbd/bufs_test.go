package nbd

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
)

// TestBufPoolsClearOnPut checks that a request buffer is cleared when it is handed back,
// whether it returns to a pool or is too large for one: it held a read's or a write's
// plaintext.
func TestBufPoolsClearOnPut(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		own  bool // a buffer not from get, whose capacity is no size class: put drops it
	}{
		{"small", 100, false},
		{"one class", 4096, false},
		{"between classes", 5000, false},
		{"1 MiB", 1 << 20, false},
		{"not a class", 5000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p bufPools
			b := p.get(tc.n)
			if tc.own {
				b = make([]byte, tc.n)
			}
			assert.Len(t, b, tc.n)
			for i := range b {
				b[i] = 0x5a
			}
			p.put(b)
			assert.True(t, bytes.Equal(b, make([]byte, tc.n)), "buffer of %d bytes cleared", tc.n)
		})
	}
}

// TestBufPoolsBounded checks that at most maxIdle bytes of free buffers are kept, that a
// buffer kept free and put back again is kept once, and that release gives every free
// buffer back.
func TestBufPoolsBounded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxIdle  int
		sizes    []int
		wantIdle int
	}{
		{"all kept", 64 << 10, []int{4096, 4096, 8192}, 16 << 10},
		{"bound reached", 8192, []int{4096, 4096, 4096}, 8192},
		{"too large to keep", 8192, []int{1 << 20}, 0},
		{"mixed", 12 << 10, []int{100, 8000, 5000, 4096}, 12 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := bufPools{maxIdle: tc.maxIdle}
			var bufs [][]byte
			for _, n := range tc.sizes {
				bufs = append(bufs, p.get(n))
			}
			assert.Len(t, p.owned, len(tc.sizes), "every buffer is tracked while in use")
			for _, b := range bufs {
				p.put(b)
				if _, free := p.owned[unsafe.SliceData(b[:cap(b)])]; free {
					p.put(b) // kept free: a second put is ignored (one returned to the OS is gone)
				}
			}
			assert.Equal(t, tc.wantIdle, p.idle)
			kept := 0
			for c := range p.free {
				for _, b := range p.free[c] {
					kept += cap(b)
				}
			}
			assert.Equal(t, tc.wantIdle, kept)
			assert.LessOrEqual(t, p.idle, tc.maxIdle)
			p.release()
			assert.Zero(t, p.idle)
			assert.Empty(t, p.owned, "nothing is held after release")
			for c := range p.free {
				assert.Empty(t, p.free[c])
			}
			b := p.get(4096) // still usable after release
			assert.Equal(t, make([]byte, 4096), b)
			p.put(b)
		})
	}
}

// TestBufPoolsRacingDoublePut: two puts of one buffer racing each other put it on a free list
// once, so two later gets never hand the same memory to two requests.
func TestBufPoolsRacingDoublePut(t *testing.T) {
	t.Parallel()
	for range 200 {
		var p bufPools
		b := p.get(4096)
		start := make(chan struct{})
		done := make(chan struct{}, 2)
		for range 2 {
			go func() {
				<-start
				p.put(b)
				done <- struct{}{}
			}()
		}
		close(start)
		<-done
		<-done
		x, y := p.get(4096), p.get(4096)
		if unsafe.SliceData(x) == unsafe.SliceData(y) {
			t.Fatal("one buffer handed out twice after a racing double put")
		}
		p.put(x)
		p.put(y)
		p.release()
	}
}
