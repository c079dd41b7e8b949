package sector

import (
	"runtime"
	"sync"
)

// DefaultParallelThreshold is the request size from which Parallel splits work.
const DefaultParallelThreshold = 64 << 10

// Parallel spreads large requests of a Cipher over several goroutines: a request of at least
// Threshold bytes is cut into sector-aligned pieces, one per worker, and the caller works on
// the first piece itself. Smaller requests run in the caller. The workers are started once, by
// NewParallel, so a call allocates nothing. A Parallel is safe for concurrent use; Close stops
// its workers.
type Parallel struct {
	c         *Cipher
	workers   int
	threshold int
	jobs      chan job
	wgs       sync.Pool
	running   sync.WaitGroup // the helper goroutines

	mu     sync.RWMutex // dispatching holds it shared; Close exclusively
	closed bool
}

type job struct {
	dst, src []byte
	first    uint64
	decrypt  bool
	wg       *sync.WaitGroup
}

// NewParallel starts workers-1 helper goroutines for c (workers <= 0 means GOMAXPROCS) that
// take requests of at least threshold bytes (<= 0 means DefaultParallelThreshold).
func NewParallel(c *Cipher, workers, threshold int) *Parallel {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if threshold <= 0 {
		threshold = DefaultParallelThreshold
	}
	p := &Parallel{c: c, workers: workers, threshold: threshold, jobs: make(chan job)}
	p.wgs.New = func() any { return new(sync.WaitGroup) }
	p.running.Add(workers - 1)
	for range workers - 1 {
		go func() {
			defer p.running.Done()
			for j := range p.jobs {
				if j.decrypt {
					p.c.decrypt(j.dst, j.src, j.first)
				} else {
					p.c.encrypt(j.dst, j.src, j.first)
				}
				j.wg.Done()
			}
		}()
	}
	return p
}

// Cipher returns the Cipher p runs.
func (p *Parallel) Cipher() *Cipher { return p.c }

// EncryptSectors is [Cipher.EncryptSectors], split over the workers for large requests.
func (p *Parallel) EncryptSectors(dst, src []byte, firstSector uint64) {
	p.c.check(dst, src, firstSector)
	p.run(dst[:len(src)], src, firstSector, false)
}

// DecryptSectors is [Cipher.DecryptSectors], split over the workers for large requests.
func (p *Parallel) DecryptSectors(dst, src []byte, firstSector uint64) {
	p.c.check(dst, src, firstSector)
	p.run(dst[:len(src)], src, firstSector, true)
}

func (p *Parallel) run(dst, src []byte, first uint64, decrypt bool) {
	n := len(src) / p.c.size // sectors
	parts := min(p.workers, n)
	p.mu.RLock()
	defer p.mu.RUnlock()
	if len(src) < p.threshold || parts < 2 || p.closed {
		if decrypt {
			p.c.decrypt(dst, src, first)
		} else {
			p.c.encrypt(dst, src, first)
		}
		return
	}
	wg := p.wgs.Get().(*sync.WaitGroup)
	per := n / parts
	off := per * p.c.size // the caller keeps piece 0
	wg.Add(parts - 1)
	for i := 1; i < parts; i++ {
		end := off + per*p.c.size
		if i == parts-1 {
			end = len(src)
		}
		p.jobs <- job{dst: dst[off:end], src: src[off:end], first: first + uint64(off/IVUnit), decrypt: decrypt, wg: wg}
		off = end
	}
	if decrypt {
		p.c.decrypt(dst[:per*p.c.size], src[:per*p.c.size], first)
	} else {
		p.c.encrypt(dst[:per*p.c.size], src[:per*p.c.size], first)
	}
	wg.Wait()
	p.wgs.Put(wg)
}

// Close stops the helper goroutines and waits for them; later requests run in the caller.
func (p *Parallel) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	close(p.jobs)
	p.running.Wait()
}
