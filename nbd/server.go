package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Device is what an export serves: a fixed-size block device. *volume.Volume (an attached,
// decrypted crkvol volume) and [File] (a plain file, for comparisons) implement it. ReadAt and
// WriteAt must be safe for concurrent use.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Size is the device size in bytes.
	Size() int64
	// Sync makes completed writes durable.
	Sync() error
}

// Export is the one device a Server serves.
type Export struct {
	// Name is the export name clients ask for; the default (empty) name also selects it.
	Name string
	// Description is shown by NBD_OPT_INFO / NBD_OPT_GO when asked for.
	Description string
	// Device is served.
	Device Device
	// ReadOnly refuses writes with EPERM and advertises the export as read-only.
	ReadOnly bool
	// PreferredBlockSize is advertised as the preferred I/O size (the volume's sector size,
	// say); 4096 if zero.
	PreferredBlockSize int
}

// Defaults of [Options].
const (
	// DefaultMaxConnections is the number of connections served at once unless
	// Options.MaxConnections says otherwise.
	DefaultMaxConnections = 64
	// DefaultNegotiationTimeout is how long a client has to finish the handshake unless
	// Options.NegotiationTimeout says otherwise: real clients need milliseconds.
	DefaultNegotiationTimeout = 10 * time.Second
	// DefaultReplyTimeout is how long the client may take to read a whole reply unless
	// Options.ReplyTimeout says otherwise.
	DefaultReplyTimeout = time.Minute
	// DefaultMaxBufferedBytes bounds the request and reply data the server holds across all
	// connections unless Options.MaxBufferedBytes says otherwise.
	DefaultMaxBufferedBytes = defaultMaxBufferedBytes
)

// defaultMaxBufferedBytes is DefaultMaxBufferedBytes as an untyped constant for the tests.
const defaultMaxBufferedBytes = 256 << 20

// Options tune a Server.
type Options struct {
	// MaxPayload is the largest READ or WRITE accepted; 32 MiB if zero.
	MaxPayload int
	// MaxBytesInFlight bounds the buffered request data of one connection; 64 MiB if zero.
	MaxBytesInFlight int
	// MaxBufferedBytes bounds the request and reply data buffered across all connections
	// together (a request's data and a fixed cost per request); DefaultMaxBufferedBytes if
	// zero. It is raised to one maximal request if below. A connection whose next request
	// would exceed it is not read from until enough earlier requests have been answered.
	MaxBufferedBytes int
	// MaxConnections bounds the connections served at once, negotiating or not;
	// DefaultMaxConnections if zero. Further clients are disconnected at once.
	MaxConnections int
	// NegotiationTimeout bounds the handshake of a connection; a client that has not started
	// transmission by then is disconnected. DefaultNegotiationTimeout if zero.
	NegotiationTimeout time.Duration
	// ReplyTimeout bounds how long writing one reply may take: a client that has not read a
	// whole reply within it (one that reads nothing, or reads a large reply very slowly) is
	// disconnected, which frees what its requests held. DefaultReplyTimeout if zero.
	ReplyTimeout time.Duration
	// Logger receives connection-level events (never data or keys); discarded if nil.
	Logger *slog.Logger
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves one Export on any number of listeners and connections.
type Server struct {
	exp  Export
	opts Options
	log  *slog.Logger
	bufs bufPools // request buffers; the free ones are returned to the OS when the last client leaves
	// budget is the request and reply data held across all connections: each request's
	// reservation is taken from its connection's budget and from this one.
	budget budget
	zeros  []byte // 1 MiB of zeros for WRITE_ZEROES, shared, never written to

	syncMu     sync.Mutex
	syncFailed error // once an fsync fails, every later flush fails: the lost writes stay lost

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // connection goroutines
}

// NewServer returns a Server for exp.
func NewServer(exp Export, opts Options) (*Server, error) {
	if exp.Device == nil {
		return nil, errors.New("nbd: export has no device")
	}
	if exp.Device.Size() <= 0 {
		return nil, fmt.Errorf("nbd: device size %d is not positive", exp.Device.Size())
	}
	if exp.PreferredBlockSize <= 0 {
		exp.PreferredBlockSize = 4096
	}
	if opts.MaxPayload <= 0 {
		opts.MaxPayload = 32 << 20
	}
	pb := exp.PreferredBlockSize
	switch {
	case pb < 512 || pb&(pb-1) != 0:
		return nil, fmt.Errorf("nbd: preferred block size %d is not a power of two of at least 512", pb)
	case opts.MaxPayload < pb || int64(opts.MaxPayload) > 1<<31:
		return nil, fmt.Errorf("nbd: maximum payload %d is not between the preferred block size %d and 2 GiB", opts.MaxPayload, pb)
	}
	if opts.MaxBytesInFlight <= 0 {
		opts.MaxBytesInFlight = 64 << 20
	}
	opts.MaxBytesInFlight = max(opts.MaxBytesInFlight, opts.MaxPayload)
	if opts.MaxBufferedBytes <= 0 {
		opts.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	opts.MaxBufferedBytes = max(opts.MaxBufferedBytes, opts.MaxPayload+requestCost)
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.NegotiationTimeout <= 0 {
		opts.NegotiationTimeout = DefaultNegotiationTimeout
	}
	if opts.ReplyTimeout <= 0 {
		opts.ReplyTimeout = DefaultReplyTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{exp: exp, opts: opts, log: log, zeros: make([]byte, 1<<20), listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{}}
	s.budget.max = opts.MaxBufferedBytes
	s.bufs.maxIdle = min(defaultMaxIdleBytes, opts.MaxBufferedBytes)
	return s, nil
}

// sync makes completed writes durable. After a failed fsync the kernel may have dropped the
// dirty pages, so every later flush reports the failure too.
func (s *Server) sync() error {
	s.syncMu.Lock()
	failed := s.syncFailed
	s.syncMu.Unlock()
	if failed != nil {
		return failed
	}
	if err := s.exp.Device.Sync(); err != nil {
		s.syncMu.Lock()
		s.syncFailed = fmt.Errorf("an earlier flush failed, writes may be lost: %w", err)
		s.syncMu.Unlock()
		return err
	}
	return nil
}

// Serve accepts connections on l until Shutdown (then it returns ErrServerClosed) or until
// accepting fails.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: accept: %w", err)
			}
			// Out of descriptors, say: wait and try again, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.ServeConn(c)
	}
}

// ServeConn serves one connection in a new goroutine and returns at once. The connection is
// closed when the client disconnects, on a protocol error, or by Shutdown.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closed || len(s.conns) >= s.opts.MaxConnections {
		full := !s.closed
		s.mu.Unlock()
		nc.Close()
		if full {
			s.log.Warn("nbd connection refused: too many connections", "remote", nc.RemoteAddr().String(), "max", s.opts.MaxConnections)
		}
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		c.serve()
		s.mu.Lock()
		delete(s.conns, c)
		if len(s.conns) == 0 {
			// The last client left: give the free buffers back to the OS. A new client
			// meanwhile only finds fewer buffers to reuse.
			s.bufs.release()
		}
		s.mu.Unlock()
	}()
}

// Shutdown stops accepting, stops reading new requests, lets the requests already received
// finish and be answered, and closes every connection. It returns when all connections are
// gone or ctx ends (then the remaining connections are closed at once). The device is left
// open: the caller syncs and closes it.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// Connections returns the number of open connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// File is a Device backed by a plain file of fixed size: the unencrypted baseline that
// benchmarks compare a volume with.
type File struct {
	f    *os.File
	size int64
}

// NewFile serves f, whose current size is the device size.
func NewFile(f *os.File) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	return &File{f: f, size: st.Size()}, nil
}

// ReadAt implements io.ReaderAt.
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt.
func (f *File) WriteAt(p []byte, off int64) (int, error) { return f.f.WriteAt(p, off) }

// Size returns the file's size when NewFile was called.
func (f *File) Size() int64 { return f.size }

// Sync flushes the file to stable storage.
func (f *File) Sync() error { return f.f.Sync() }
