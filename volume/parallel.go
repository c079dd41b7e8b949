package volume

import (
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"crkvol/sector"
)

// DefaultParallelThreshold is the request size from which Parallel splits work.
const DefaultParallelThreshold = 64 << 10

// helperSpin is how long an idle helper keeps polling for the next request before it parks.
// Waking a parked goroutine costs tens of microseconds on a virtual machine, as long as
// encrypting a whole 1 MiB request on one core, so back-to-back requests must find their
// helpers awake.
const helperSpin = 50 * time.Microsecond

// Parallel spreads large requests of a Cipher over several goroutines. A request of at least
// Threshold bytes is cut into sector-aligned chunks that the caller and the helper goroutines
// claim one at a time, so a helper that wakes late only takes less of the work and never
// delays the request. Smaller requests run in the caller. The helpers are started once, by
// NewParallel, so a call allocates nothing. A Parallel is safe for concurrent use; Close stops
// its helpers.
type Parallel struct {
	c         *sector.Cipher
	size      int // c's sector size
	workers   int
	threshold int
	jobs      chan *request // requests offered to idle helpers
	reqs      sync.Pool
	running   sync.WaitGroup // the helper goroutines

	mu     sync.RWMutex // dispatching holds it shared; Close exclusively
	closed bool
}

// request is one split request. The caller writes its plain fields only while open is false
// and no helper is inside (active == 0); a helper reads them only after counting itself in
// active and seeing open true, so a helper holding a stale pointer never sees a half-written
// request.
type request struct {
	dst, src []byte
	first    uint64
	decrypt  bool
	chunk    int // bytes per chunk, a multiple of the sector size
	chunks   int64
	// For ReadDecrypt, r reads each chunk (at off plus the chunk's offset) before it is
	// decrypted; nil for a request of the cipher alone.
	r   io.ReaderAt
	off int64

	failMu sync.Mutex // guards failAt and err (taken only when a chunk's I/O fails)
	failAt int        // offset of the first chunk whose I/O failed; len(src) if none
	err    error      // its error
	failed atomic.Bool

	next    atomic.Int64 // next chunk to claim
	pending atomic.Int64 // chunks not yet finished
	active  atomic.Int32 // helpers working on the request
	open    atomic.Bool
}

// NewParallel starts workers-1 helper goroutines for c (workers <= 0 means GOMAXPROCS) that
// take requests of at least threshold bytes (<= 0 means DefaultParallelThreshold).
func NewParallel(c *sector.Cipher, workers, threshold int) *Parallel {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if threshold <= 0 {
		threshold = DefaultParallelThreshold
	}
	p := &Parallel{c: c, size: c.SectorSize(), workers: workers, threshold: threshold, jobs: make(chan *request, workers)}
	p.reqs.New = func() any { return new(request) }
	p.running.Add(workers - 1)
	for range workers - 1 {
		go p.helper()
	}
	return p
}

// helper takes offered requests until Close. After each one it polls for helperSpin before
// parking on the channel.
func (p *Parallel) helper() {
	defer p.running.Done()
	for {
		var r *request
		ok := true
		deadline := time.Now().Add(helperSpin)
	spin:
		for i := 0; ; i++ {
			select {
			case r, ok = <-p.jobs:
				break spin
			default:
			}
			if i%32 == 31 && time.Now().After(deadline) {
				r, ok = <-p.jobs
				break
			}
			runtime.Gosched()
		}
		if !ok {
			return
		}
		r.active.Add(1)
		if r.open.Load() {
			p.work(r)
		}
		r.active.Add(-1)
	}
}

// work claims and runs chunks of r until none is left.
func (p *Parallel) work(r *request) {
	for {
		i := r.next.Add(1) - 1
		if i >= r.chunks {
			return
		}
		p.claimed(r, int(i))
	}
}

// claimed runs chunk i of r, claimed by the calling goroutine, and counts it finished.
func (p *Parallel) claimed(r *request, i int) {
	off := i * r.chunk
	if !r.failed.Load() {
		p.chunk(r, off, min(off+r.chunk, len(r.src)))
	}
	r.pending.Add(-1)
}

// chunk runs the part of r from off to end: its read, if any, and its cipher.
func (p *Parallel) chunk(r *request, off, end int) {
	if r.r != nil {
		if _, err := r.r.ReadAt(r.dst[off:end], r.off+int64(off)); err != nil {
			r.fail(off, err)
			return
		}
	}
	p.xts(r.dst[off:end], r.src[off:end], r.first+uint64(off/sector.IVUnit), r.decrypt)
}

// fail records that the I/O of the chunk at off failed with err, keeping the first chunk's.
func (r *request) fail(off int, err error) {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	if off < r.failAt {
		r.failAt, r.err = off, err
	}
	r.failed.Store(true)
}

// Cipher returns the cipher p runs.
func (p *Parallel) Cipher() *sector.Cipher { return p.c }

// EncryptSectors is [sector.Cipher.EncryptSectors], split over the workers for large requests.
func (p *Parallel) EncryptSectors(dst, src []byte, firstSector uint64) {
	p.c.Check(dst, src, firstSector)
	p.run(dst[:len(src)], src, firstSector, false)
}

// DecryptSectors is [sector.Cipher.DecryptSectors], split over the workers for large requests.
func (p *Parallel) DecryptSectors(dst, src []byte, firstSector uint64) {
	p.c.Check(dst, src, firstSector)
	p.run(dst[:len(src)], src, firstSector, true)
}

// ReadDecrypt reads len(dst) bytes, whole sectors, from ra at off into dst and decrypts them
// in place, dst's first sector being sector firstSector. A request of at least the threshold
// is cut into chunks that the caller and the helpers each read and decrypt (at least 128 KiB
// a chunk, to amortise the extra read calls), so a chunk is decrypted by the core that has
// just read it, in its cache, and the reads of different chunks overlap. It returns how many
// bytes at the start of dst were read and decrypted before the first chunk whose read failed,
// and that read's error.
func (p *Parallel) ReadDecrypt(ra io.ReaderAt, dst []byte, off int64, firstSector uint64) (int, error) {
	p.c.Check(dst, dst, firstSector)
	if len(dst) < p.threshold || len(dst) < 2*ioChunk || p.workers < 2 {
		if _, err := ra.ReadAt(dst, off); err != nil {
			return 0, err
		}
		p.c.DecryptSectors(dst, dst, firstSector)
		return len(dst), nil
	}
	return p.dispatch(dst, dst, firstSector, true, ra, off, ioChunk, 2)
}

// ioChunk is the least a chunk of ReadDecrypt holds: each costs a system call more than one
// call for the whole request would.
const ioChunk = 128 << 10

func (p *Parallel) run(dst, src []byte, first uint64, decrypt bool) {
	if len(src) < p.threshold {
		p.xts(dst, src, first, decrypt)
		return
	}
	// Each chunk long enough (at least 16 KiB) to amortise claiming it.
	p.dispatch(dst, src, first, decrypt, nil, 0, 16<<10, 4)
}

// dispatch runs a request over the caller and the helpers, in chunks of at least minChunk
// bytes, about perWorker chunks a worker, and returns what ReadDecrypt returns. Several chunks a
// worker balance the load when a helper starts late or is descheduled.
func (p *Parallel) dispatch(dst, src []byte, first uint64, decrypt bool, ra io.ReaderAt, off int64, minChunk, perWorker int) (int, error) {
	n := len(src) / p.size // sectors
	p.mu.RLock()
	defer p.mu.RUnlock()
	k := perWorker * p.workers
	per := max((n+k-1)/k, minChunk/p.size, 1)
	r := p.reqs.Get().(*request)
	r.dst, r.src, r.first, r.decrypt = dst, src, first, decrypt
	r.r, r.off = ra, off
	r.failAt, r.err = len(src), nil
	r.failed.Store(false)
	r.chunk = per * p.size
	r.chunks = int64((n + per - 1) / per)
	if p.workers < 2 || r.chunks < 2 || p.closed {
		for i := 0; i < len(src) && !r.failed.Load(); i += r.chunk {
			p.chunk(r, i, min(i+r.chunk, len(src)))
		}
		return p.finish(r)
	}
	r.next.Store(0)
	r.pending.Store(r.chunks)
	r.open.Store(true)
	for range p.workers - 1 {
		select {
		case p.jobs <- r:
		default: // every helper already has an offer waiting
		}
	}
	p.work(r)
	for r.pending.Load() > 0 { // helpers finishing their last chunk
		runtime.Gosched()
	}
	r.open.Store(false)
	for r.active.Load() > 0 { // helpers that picked r up but have not left it yet
		runtime.Gosched()
	}
	return p.finish(r)
}

// finish returns r to the pool and what its request returns.
func (p *Parallel) finish(r *request) (int, error) {
	n, err := len(r.src), r.err
	if err != nil {
		n = r.failAt
	}
	r.dst, r.src, r.r, r.err = nil, nil, nil, nil
	p.reqs.Put(r)
	return n, err
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

// xts runs one part of a request, whose preconditions the caller has checked.
func (p *Parallel) xts(dst, src []byte, first uint64, decrypt bool) {
	if decrypt {
		p.c.DecryptSectors(dst, src, first)
	} else {
		p.c.EncryptSectors(dst, src, first)
	}
}
