package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// conn is one client connection.
type conn struct {
	s  *Server
	nc net.Conn
	br *bufio.Reader

	wmu sync.Mutex // one reply at a time

	budget   budget         // request bytes buffered or being served; counted in s.budget too
	handlers chan struct{}  // a slot per request being served
	wg       sync.WaitGroup // requests being served

	stopOnce sync.Once
	stopped  chan struct{}
	// readMu orders stop's past read deadline with serve's own deadline changes, so serve
	// never lifts the deadline that stopped a connection.
	readMu sync.Mutex
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{s: s, nc: nc, br: bufio.NewReaderSize(nc, 64<<10),
		budget: budget{max: s.opts.MaxBytesInFlight}, handlers: make(chan struct{}, maxHandlers), stopped: make(chan struct{})}
}

// stop makes the connection stop reading requests; those already read are answered.
func (c *conn) stop() {
	c.stopOnce.Do(func() {
		c.readMu.Lock()
		close(c.stopped)
		_ = c.nc.SetReadDeadline(time.Now())
		c.readMu.Unlock()
		c.budget.wake()
		c.s.budget.wake()
	})
}

func (c *conn) isStopped() bool {
	select {
	case <-c.stopped:
		return true
	default:
		return false
	}
}

// setDeadline sets the connection's read and write deadline unless it has been stopped
// (stop's past read deadline then stays).
func (c *conn) setDeadline(t time.Time) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if !c.isStopped() {
		_ = c.nc.SetDeadline(t)
	}
}

func (c *conn) serve() {
	defer c.nc.Close()
	log := c.s.log.With("remote", c.nc.RemoteAddr().String())
	c.setDeadline(time.Now().Add(c.s.opts.NegotiationTimeout))
	ok, err := c.negotiate()
	if ok && err == nil {
		c.setDeadline(time.Time{}) // transmission has no deadline
	}
	if err != nil {
		switch {
		case c.isStopped():
		case errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET):
			log.Debug("nbd client left during negotiation", "err", err) // a probe, or nbdinfo --list
		default:
			log.Info("nbd negotiation failed", "err", err)
		}
		return
	}
	if !ok {
		return
	}
	log.Info("nbd client attached")
	err = c.transmit()
	c.wg.Wait() // every request read is answered before the connection closes
	switch {
	case err == nil || c.isStopped():
		log.Info("nbd client detached")
	default:
		log.Warn("nbd connection closed", "err", err)
	}
}

// errProtocol marks a client error that ends the connection.
var errProtocol = errors.New("nbd: protocol error")

// negotiate runs the fixed newstyle handshake. It returns true when transmission starts.
func (c *conn) negotiate() (bool, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return false, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return false, err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^clientFlagsKnown != 0 || clientFlags&flagFixedNewstyle == 0 {
		return false, fmt.Errorf("%w: client flags %#x (fixed newstyle is required)", errProtocol, clientFlags)
	}
	noZeroes := clientFlags&flagNoZeroes != 0
	for {
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return false, err
		}
		if m := binary.BigEndian.Uint64(h[0:]); m != magicOpt {
			return false, fmt.Errorf("%w: option magic %#x", errProtocol, m)
		}
		opt := binary.BigEndian.Uint32(h[8:])
		n := binary.BigEndian.Uint32(h[12:])
		if n > maxOptionData {
			if opt == optExportName {
				// NBD_OPT_EXPORT_NAME gets no option reply, only the session's end.
				return false, fmt.Errorf("%w: export name of %d bytes", errProtocol, n)
			}
			// Too long to be a real option: skip it without buffering, then refuse it.
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return false, err
			}
			if err := c.optReply(opt, repErrTooBig, []byte("option data too long")); err != nil {
				return false, err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, err
		}
		if c.isStopped() {
			switch opt {
			case optExportName: // no reply is possible: end the session
			case optAbort:
				_ = c.optReply(opt, repAck, nil)
			default:
				_ = c.optReply(opt, repErrShutdown, []byte("server shutting down"))
			}
			return false, nil
		}
		switch opt {
		case optExportName:
			if !c.nameMatches(string(data)) {
				// The protocol has no error reply here: the server closes the connection.
				return false, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME for unknown export %q", errProtocol, data)
			}
			var r [10 + 124]byte
			binary.BigEndian.PutUint64(r[0:], uint64(c.s.exp.Device.Size()))
			binary.BigEndian.PutUint16(r[8:], c.transmissionFlags())
			b := r[:]
			if noZeroes {
				b = r[:10]
			}
			_, err := c.nc.Write(b)
			return err == nil, err
		case optAbort:
			_ = c.optReply(opt, repAck, nil)
			return false, nil
		case optList:
			if n != 0 {
				if err := c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data")); err != nil {
					return false, err
				}
				continue
			}
			name := []byte(c.s.exp.Name)
			b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			if err := c.optReply(opt, repServer, append(b, name...)); err != nil {
				return false, err
			}
			if err := c.optReply(opt, repAck, nil); err != nil {
				return false, err
			}
		case optInfo, optGo:
			start, err := c.infoOrGo(opt, data)
			if err != nil || start {
				return start, err
			}
		default: // NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, meta contexts, unknown options
			msg := fmt.Sprintf("option %d is not supported", opt)
			if opt == optStartTLS {
				msg = "TLS is not supported; use a unix socket or loopback"
			} else if opt == optStructuredReply {
				msg = "this server sends simple replies only"
			}
			if err := c.optReply(opt, repErrUnsup, []byte(msg)); err != nil {
				return false, err
			}
		}
	}
}

// infoOrGo answers NBD_OPT_INFO or NBD_OPT_GO; for a successful GO it returns true.
func (c *conn) infoOrGo(opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, c.optReply(opt, repErrInvalid, []byte("option data too short"))
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen)+6 > uint64(len(data)) {
		return false, c.optReply(opt, repErrInvalid, []byte("export name runs past the option data"))
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return false, c.optReply(opt, repErrInvalid, []byte("information request count does not match the option length"))
	}
	if !c.nameMatches(name) {
		return false, c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", name))
	}
	exp := binary.BigEndian.AppendUint16(nil, infoExport)
	exp = binary.BigEndian.AppendUint64(exp, uint64(c.s.exp.Device.Size()))
	exp = binary.BigEndian.AppendUint16(exp, c.transmissionFlags())
	if err := c.optReply(opt, repInfo, exp); err != nil {
		return false, err
	}
	for i := range nreq {
		var b []byte
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			b = append(binary.BigEndian.AppendUint16(nil, infoName), c.s.exp.Name...)
		case infoDescription:
			b = append(binary.BigEndian.AppendUint16(nil, infoDescription), c.s.exp.Description...)
		default:
			continue // block size is always sent below; unknown requests are ignored
		}
		if err := c.optReply(opt, repInfo, b); err != nil {
			return false, err
		}
	}
	// The size constraints, whether asked for or not: the maximum payload may be below the
	// protocol's default of 32 MiB.
	b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, 1) // any alignment: partial sectors are merged
	b = binary.BigEndian.AppendUint32(b, uint32(c.s.exp.PreferredBlockSize))
	b = binary.BigEndian.AppendUint32(b, uint32(c.s.opts.MaxPayload))
	if err := c.optReply(opt, repInfo, b); err != nil {
		return false, err
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	return opt == optGo, nil
}

func (c *conn) nameMatches(name string) bool { return name == "" || name == c.s.exp.Name }

func (c *conn) transmissionFlags() uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagCanMultiConn)
	if c.s.exp.ReadOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagWriteZeroes
	}
	return f
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	_, err := c.nc.Write(append(b, data...))
	return err
}

// maxHandlers bounds the requests of one connection served at once.
const maxHandlers = 128

// requestCost is what any request counts against the connection's budget besides its data,
// so that a flood of small requests (FLUSH, say) is bounded too.
const requestCost = 4096

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
	data   []byte // WRITE payload
	cost   int    // bytes reserved from the connection's budget
}

// transmit reads requests until DISC, a protocol error, the client leaving, or stop. It
// returns nil for an orderly end.
func (c *conn) transmit() error {
	size := uint64(c.s.exp.Device.Size())
	for {
		var h [28]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if c.isStopped() || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading a request: %w", err)
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != magicRequest {
			return fmt.Errorf("%w: request magic %#x", errProtocol, m)
		}
		r := &request{
			flags:  binary.BigEndian.Uint16(h[4:]),
			typ:    binary.BigEndian.Uint16(h[6:]),
			cookie: binary.BigEndian.Uint64(h[8:]),
			off:    binary.BigEndian.Uint64(h[16:]),
			length: binary.BigEndian.Uint32(h[24:]),
		}
		if r.typ == cmdDisc {
			return nil
		}
		errno := c.check(r, size)
		if r.typ == cmdWrite {
			// The payload follows the header whatever the verdict; read it (or skip it)
			// before the next request.
			if errno != 0 {
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					return fmt.Errorf("skipping a refused write's payload: %w", err)
				}
			} else {
				r.cost = requestCost + int(r.length)
				if !c.acquire(r.cost) {
					return nil // stopped while waiting
				}
				r.data = c.s.bufs.get(int(r.length))
				if _, err := io.ReadFull(c.br, r.data); err != nil {
					c.s.bufs.put(r.data)
					c.release(r.cost)
					if c.isStopped() {
						return nil
					}
					// The client vanished mid-request: the partial write is not applied.
					return fmt.Errorf("reading a write's payload: %w", err)
				}
			}
		}
		if errno != 0 {
			if err := c.reply(r.cookie, errno, nil); err != nil {
				return err
			}
			continue
		}
		if r.typ != cmdWrite { // a write reserved its cost before its payload was read
			r.cost = requestCost
			if r.typ == cmdRead {
				r.cost += int(r.length)
			}
			if !c.acquire(r.cost) {
				_ = c.reply(r.cookie, errShutdown, nil)
				return nil
			}
		}
		// At most maxHandlers requests are served at once: each may hold an OS thread in a
		// blocked pread, pwrite or fsync.
		select {
		case c.handlers <- struct{}{}:
		case <-c.stopped:
			c.release(r.cost)
			c.s.bufs.put(r.data)
			_ = c.reply(r.cookie, errShutdown, nil)
			return nil
		}
		c.wg.Add(1)
		go c.handle(r)
	}
}

// acquire reserves n bytes from the connection's budget and then from the server's, waiting
// while either is spent: until then no further request is read, which holds the client back
// through TCP (or the unix socket's) flow control. False if the connection stops meanwhile.
func (c *conn) acquire(n int) bool {
	if !c.budget.acquire(n, c.stopped) {
		return false
	}
	if !c.s.budget.acquire(n, c.stopped) {
		c.budget.release(n)
		return false
	}
	return true
}

// release gives back what acquire reserved.
func (c *conn) release(n int) {
	c.s.budget.release(n)
	c.budget.release(n)
}

// check validates a request; it returns the NBD error to answer, or 0.
func (c *conn) check(r *request, size uint64) uint32 {
	switch r.typ {
	case cmdRead, cmdWrite, cmdWriteZeroes, cmdFlush:
	default: // TRIM is not advertised; CACHE, BLOCK_STATUS and unknown commands neither
		return errInval
	}
	if r.flags&^cmdFlagFUA != 0 && !(r.typ == cmdWriteZeroes && r.flags&^(cmdFlagFUA|cmdFlagNoHole) == 0) {
		return errInval // NO_HOLE is for WRITE_ZEROES only; other flags are not offered
	}
	if r.typ == cmdFlush {
		return 0
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > uint32(c.s.opts.MaxPayload) {
		return errInval // over the advertised maximum payload
	}
	if c.s.exp.ReadOnly && r.typ != cmdRead {
		return errPerm
	}
	if r.off > size || uint64(r.length) > size-r.off {
		if r.typ == cmdRead {
			return errInval
		}
		return errNoSpc
	}
	return 0
}

// handle serves one valid request and answers it.
func (c *conn) handle(r *request) {
	defer c.wg.Done()
	defer func() { <-c.handlers }()
	defer c.release(r.cost)
	dev := c.s.exp.Device
	var errno uint32
	var data []byte
	switch r.typ {
	case cmdRead:
		data = c.s.bufs.get(int(r.length))
		defer c.s.bufs.put(data)
		if _, err := dev.ReadAt(data, int64(r.off)); err != nil && !(errors.Is(err, io.EOF) && len(data) == 0) {
			c.s.log.Warn("nbd read failed", "offset", r.off, "length", r.length, "err", err)
			errno, data = errIO, nil
		}
	case cmdWrite:
		errno = c.write(r, r.data)
		c.s.bufs.put(r.data)
	case cmdWriteZeroes:
		errno = c.writeZeroes(r)
	case cmdFlush:
		if err := c.s.sync(); err != nil {
			c.s.log.Warn("nbd flush failed", "err", err)
			errno = errIO
		}
	}
	if err := c.reply(r.cookie, errno, data); err != nil {
		// The client is gone, or reads no replies: closing the connection stops the reader
		// too, and the other requests' replies fail at once.
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.s.log.Warn("nbd client reads no replies; disconnecting", "remote", c.nc.RemoteAddr().String(), "after", c.s.opts.ReplyTimeout)
		}
		c.nc.Close()
	}
}

func (c *conn) write(r *request, p []byte) uint32 {
	dev := c.s.exp.Device
	if _, err := dev.WriteAt(p, int64(r.off)); err != nil {
		c.s.log.Warn("nbd write failed", "offset", r.off, "length", len(p), "err", err)
		return errIO
	}
	if r.flags&cmdFlagFUA != 0 {
		if err := c.s.sync(); err != nil {
			c.s.log.Warn("nbd FUA sync failed", "err", err)
			return errIO
		}
	}
	return 0
}

// writeZeroes writes zeros (encrypted, on a volume: the range must read back as zeros, so it
// cannot be punched) in pieces of at most 1 MiB.
func (c *conn) writeZeroes(r *request) uint32 {
	zero := c.s.zeros[:min(int(r.length), len(c.s.zeros))] // never written to (io.WriterAt)
	dev := c.s.exp.Device
	for done := uint64(0); done < uint64(r.length); {
		n := min(uint64(len(zero)), uint64(r.length)-done)
		if _, err := dev.WriteAt(zero[:n], int64(r.off+done)); err != nil {
			c.s.log.Warn("nbd write zeroes failed", "offset", r.off+done, "err", err)
			return errIO
		}
		done += n
	}
	if r.flags&cmdFlagFUA != 0 {
		if err := c.s.sync(); err != nil {
			return errIO
		}
	}
	return 0
}

// reply sends a simple reply, with data for a successful READ.
func (c *conn) reply(cookie uint64, errno uint32, data []byte) error {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], magicSimpleRep)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], cookie)
	bufs := net.Buffers{h[:]}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// A client that reads no reply for so long is stalled, or pipelining without reading on
	// purpose: what its requests hold is freed by ending the connection.
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.ReplyTimeout))
	_, err := bufs.WriteTo(c.nc)
	return err
}

// budget bounds request bytes held at once: a connection's, so that one client cannot make
// the server buffer without limit, and the server's, across all connections.
type budget struct {
	mu   sync.Mutex
	cond *sync.Cond
	used int
	max  int
}

// acquire reserves n bytes (at most max), waiting while the budget is spent; false if stop
// is closed first. Whoever closes stop must then call wake.
func (b *budget) acquire(n int, stop <-chan struct{}) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cond == nil {
		b.cond = sync.NewCond(&b.mu)
	}
	n = min(n, b.max)
	for b.used+n > b.max {
		select {
		case <-stop:
			return false
		default:
		}
		b.cond.Wait()
	}
	b.used += n
	return true
}

// release gives back n bytes of an acquire.
func (b *budget) release(n int) {
	b.mu.Lock()
	b.used -= min(n, b.max)
	if b.cond != nil {
		b.cond.Broadcast()
	}
	b.mu.Unlock()
}

// wake makes waiting acquires check their stop channel.
func (b *budget) wake() {
	b.mu.Lock()
	if b.cond != nil {
		b.cond.Broadcast()
	}
	b.mu.Unlock()
}

// inUse returns the bytes reserved.
func (b *budget) inUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
