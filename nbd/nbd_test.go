package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memDevice is an in-memory Device. A read at blockOff waits for release to be closed.
type memDevice struct {
	mu       sync.Mutex
	data     []byte
	syncs    int
	blockOff int64
	release  chan struct{}
	blocked  chan struct{} // closed when a read starts waiting for release
	delay    time.Duration // each read takes this long
	active   int           // reads in progress
	peak     int           // the most reads in progress at once
}

func newMem(size int) *memDevice {
	return &memDevice{data: make([]byte, size), blockOff: -1, blocked: make(chan struct{})}
}

func (m *memDevice) ReadAt(p []byte, off int64) (int, error) {
	if off == m.blockOff && m.release != nil {
		close(m.blocked)
		<-m.release
	}
	if m.delay > 0 {
		m.mu.Lock()
		m.active++
		m.peak = max(m.peak, m.active)
		m.mu.Unlock()
		time.Sleep(m.delay)
		defer func() { m.mu.Lock(); m.active--; m.mu.Unlock() }()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memDevice) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memDevice) Size() int64 { return int64(len(m.data)) }

func (m *memDevice) Sync() error {
	m.mu.Lock()
	m.syncs++
	m.mu.Unlock()
	return nil
}

func (m *memDevice) syncCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.syncs
}

func (m *memDevice) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data)
}

// client is a minimal NBD client for the tests.
type client struct {
	t  *testing.T
	nc net.Conn
}

func startServer(t *testing.T, exp Export, opts Options) (*Server, string) {
	t.Helper()
	s, err := NewServer(exp, opts)
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, l.Addr().String()
}

// dial connects over TCP and reads the greeting; it sends the client flags.
func dial(t *testing.T, addr string, clientFlags uint32) *client {
	t.Helper()
	return dialNet(t, "tcp", addr, clientFlags)
}

// dialNet is dial on any network.
func dialNet(t *testing.T, network, addr string, clientFlags uint32) *client {
	t.Helper()
	nc, err := net.Dial(network, addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
	var hello [18]byte
	_, err = io.ReadFull(nc, hello[:])
	require.NoError(t, err)
	require.Equal(t, uint64(magicInit), binary.BigEndian.Uint64(hello[0:]))
	require.Equal(t, uint64(magicOpt), binary.BigEndian.Uint64(hello[8:]))
	require.Equal(t, uint16(flagFixedNewstyle|flagNoZeroes), binary.BigEndian.Uint16(hello[16:]))
	c := &client{t: t, nc: nc}
	c.write(binary.BigEndian.AppendUint32(nil, clientFlags))
	return c
}

func (c *client) write(b []byte) {
	c.t.Helper()
	_, err := c.nc.Write(b)
	require.NoError(c.t, err)
}

func (c *client) option(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) optReply() optReply {
	c.t.Helper()
	var h [20]byte
	_, err := io.ReadFull(c.nc, h[:])
	require.NoError(c.t, err)
	require.Equal(c.t, uint64(magicOptReply), binary.BigEndian.Uint64(h[0:]))
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	_, err = io.ReadFull(c.nc, r.data)
	require.NoError(c.t, err)
	return r
}

func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// goExport negotiates with NBD_OPT_GO and returns the size and transmission flags.
func (c *client) goExport(name string) (uint64, uint16) {
	c.t.Helper()
	c.option(optGo, goData(name))
	r := c.optReply()
	require.Equal(c.t, uint32(repInfo), r.typ, "%s", r.data)
	require.Equal(c.t, uint16(infoExport), binary.BigEndian.Uint16(r.data))
	size, flags := binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
	for {
		r := c.optReply()
		if r.typ == repAck {
			return size, flags
		}
		require.Equal(c.t, uint32(repInfo), r.typ)
	}
}

func (c *client) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...))
}

// simpleReply reads a reply header: the cookie and the error.
func (c *client) simpleReply() (uint64, uint32) {
	c.t.Helper()
	var h [16]byte
	_, err := io.ReadFull(c.nc, h[:])
	require.NoError(c.t, err)
	require.Equal(c.t, uint32(magicSimpleRep), binary.BigEndian.Uint32(h[0:]))
	return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[4:])
}

func (c *client) read(cookie, off uint64, n int) []byte {
	c.t.Helper()
	c.request(cmdRead, 0, cookie, off, uint32(n), nil)
	got, errno := c.simpleReply()
	require.Equal(c.t, cookie, got)
	require.Zero(c.t, errno)
	buf := make([]byte, n)
	_, err := io.ReadFull(c.nc, buf)
	require.NoError(c.t, err)
	return buf
}

func (c *client) expect(cookie uint64, errno uint32) {
	c.t.Helper()
	got, e := c.simpleReply()
	require.Equal(c.t, cookie, got)
	require.Equal(c.t, errno, e)
}

// closed reports whether the server has closed the connection.
func (c *client) closed() bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.nc.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestGoReadWriteFlushDisc(t *testing.T) {
	dev := newMem(1 << 20)
	_, addr := startServer(t, Export{Name: "vol", Description: "a test volume", Device: dev, PreferredBlockSize: 512}, Options{})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)

	c.option(optGo, goData("vol", infoName, infoDescription, infoBlockSize))
	infos := map[uint16][]byte{}
	for {
		r := c.optReply()
		if r.typ == repAck {
			break
		}
		require.Equal(t, uint32(repInfo), r.typ)
		infos[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	require.Len(t, infos, 4)
	assert.Equal(t, uint64(1<<20), binary.BigEndian.Uint64(infos[infoExport]))
	flags := binary.BigEndian.Uint16(infos[infoExport][8:])
	assert.NotZero(t, flags&tflagSendFlush)
	assert.NotZero(t, flags&tflagSendFUA)
	assert.NotZero(t, flags&tflagWriteZeroes)
	assert.Zero(t, flags&tflagReadOnly)
	assert.Zero(t, flags&(1<<5), "TRIM must not be offered on an encrypted volume")
	assert.Equal(t, "vol", string(infos[infoName]))
	assert.Equal(t, "a test volume", string(infos[infoDescription]))
	bs := infos[infoBlockSize]
	assert.Equal(t, []uint32{1, 512, 32 << 20}, []uint32{binary.BigEndian.Uint32(bs), binary.BigEndian.Uint32(bs[4:]), binary.BigEndian.Uint32(bs[8:])})

	data := randBytes(1, 8192+100)
	c.request(cmdWrite, 0, 1, 4000, uint32(len(data)), data)
	c.expect(1, 0)
	assert.Equal(t, data, c.read(2, 4000, len(data)))
	assert.Equal(t, data, dev.snapshot()[4000:4000+len(data)])

	syncs := dev.syncCount()
	c.request(cmdWrite, cmdFlagFUA, 3, 0, 512, data[:512])
	c.expect(3, 0)
	assert.Equal(t, syncs+1, dev.syncCount(), "FUA syncs before the reply")
	c.request(cmdFlush, 0, 4, 0, 0, nil)
	c.expect(4, 0)
	assert.Equal(t, syncs+2, dev.syncCount())

	c.request(cmdWriteZeroes, 0, 5, 4000, 5000, nil)
	c.expect(5, 0)
	assert.Equal(t, make([]byte, 5000), c.read(6, 4000, 5000))
	assert.Equal(t, data[5000:], c.read(7, 9000, len(data)-5000))

	c.request(cmdDisc, 0, 8, 0, 0, nil)
	assert.True(t, c.closed(), "the server closes after DISC")
}

func TestExportNameOption(t *testing.T) {
	dev := newMem(64 << 10)
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{})
	for _, noZeroes := range []bool{true, false} {
		flags := uint32(flagFixedNewstyle)
		if noZeroes {
			flags |= flagNoZeroes
		}
		c := dial(t, addr, flags)
		c.option(optExportName, []byte("vol"))
		n := 10
		if !noZeroes {
			n += 124
		}
		b := make([]byte, n)
		_, err := io.ReadFull(c.nc, b)
		require.NoError(t, err)
		assert.Equal(t, uint64(64<<10), binary.BigEndian.Uint64(b))
		assert.Equal(t, make([]byte, 16), c.read(1, 0, 16))
	}
	// An unknown name has no error reply: the connection closes.
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.option(optExportName, []byte("other"))
	assert.True(t, c.closed())
}

func TestNegotiationOptions(t *testing.T) {
	dev := newMem(64 << 10)
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)

	c.option(optList, nil)
	r := c.optReply()
	require.Equal(t, uint32(repServer), r.typ)
	assert.Equal(t, append([]byte{0, 0, 0, 3}, "vol"...), r.data)
	assert.Equal(t, uint32(repAck), c.optReply().typ)

	c.option(optList, []byte("x"))
	assert.Equal(t, uint32(repErrInvalid), c.optReply().typ)

	for _, opt := range []uint32{optStructuredReply, optStartTLS, 9, 10, 99} {
		c.option(opt, nil)
		r := c.optReply()
		assert.Equal(t, opt, r.opt)
		assert.Equal(t, uint32(repErrUnsup), r.typ, "option %d", opt)
	}

	c.option(optInfo, goData("nope"))
	assert.Equal(t, uint32(repErrUnknown), c.optReply().typ)
	c.option(optGo, []byte{0, 0, 0, 9, 'a'}) // name runs past the data
	assert.Equal(t, uint32(repErrInvalid), c.optReply().typ)
	c.option(optGo, append(goData("vol"), 0, 1)) // count does not match
	assert.Equal(t, uint32(repErrInvalid), c.optReply().typ)

	c.option(optInfo, goData(""))
	r = c.optReply()
	require.Equal(t, uint32(repInfo), r.typ)
	r = c.optReply() // the size constraints come unasked
	require.Equal(t, uint32(repInfo), r.typ)
	assert.Equal(t, uint16(infoBlockSize), binary.BigEndian.Uint16(r.data))
	assert.Equal(t, uint32(repAck), c.optReply().typ)

	// Still negotiating after all that: GO works.
	size, _ := c.goExport("")
	assert.Equal(t, uint64(64<<10), size)
	assert.Equal(t, make([]byte, 8), c.read(1, 0, 8))

	c2 := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c2.option(optAbort, nil)
	assert.Equal(t, uint32(repAck), c2.optReply().typ)
	assert.True(t, c2.closed())
}

func TestProtocolErrorsCloseOnlyThatConnection(t *testing.T) {
	dev := newMem(64 << 10)
	copy(dev.data, randBytes(2, len(dev.data)))
	want := dev.snapshot()
	s, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{})

	cases := map[string]func(c *client){
		"old-style client flags": func(c *client) {},
		"bad option magic": func(c *client) {
			c.write(bytes.Repeat([]byte{0xEE}, 16))
		},
		"bad request magic": func(c *client) {
			c.goExport("vol")
			c.write(bytes.Repeat([]byte{0xEE}, 28))
		},
		"vanishing mid-write": func(c *client) {
			c.goExport("vol")
			c.request(cmdWrite, 0, 1, 0, 4096, bytes.Repeat([]byte{0xAB}, 2048))
			c.nc.Close()
		},
		"vanishing mid-header": func(c *client) {
			c.goExport("vol")
			c.write([]byte{0x25, 0x60})
			c.nc.Close()
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			flags := uint32(flagFixedNewstyle | flagNoZeroes)
			if name == "old-style client flags" {
				flags = 0
			}
			c := dial(t, addr, flags)
			f(c)
			if name != "vanishing mid-write" && name != "vanishing mid-header" {
				assert.True(t, c.closed())
			}
			// The server and the data survive.
			c2 := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
			c2.goExport("vol")
			assert.Equal(t, want[:4096], c2.read(9, 0, 4096))
		})
	}
	assert.Equal(t, want, dev.snapshot(), "no partial write was applied")
	require.Eventually(t, func() bool { return s.Connections() <= 1 }, 5*time.Second, 10*time.Millisecond)
}

func TestRequestErrorsAnswered(t *testing.T) {
	dev := newMem(64 << 10)
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{MaxPayload: 16 << 10})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")

	c.request(cmdRead, 0, 1, 64<<10-10, 20, nil)
	c.expect(1, errInval)
	c.request(cmdRead, 0, 2, 1<<62, 1, nil)
	c.expect(2, errInval)
	c.request(cmdWrite, 0, 3, 64<<10-10, 20, make([]byte, 20))
	c.expect(3, errNoSpc)
	c.request(cmdWriteZeroes, 0, 4, 64<<10, 1, nil)
	c.expect(4, errNoSpc)
	c.request(cmdRead, 0, 5, 0, 32<<10, nil)
	c.expect(5, errInval)
	c.request(cmdWrite, 0, 6, 0, 32<<10, bytes.Repeat([]byte{1}, 32<<10)) // payload skipped
	c.expect(6, errInval)
	c.request(cmdRead, cmdFlagNoHole, 11, 0, 16, nil) // NO_HOLE is for WRITE_ZEROES only
	c.expect(11, errInval)
	c.request(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFUA, 12, 0, 16, nil)
	c.expect(12, 0)
	c.request(cmdTrim, 0, 7, 0, 4096, nil)
	c.expect(7, errInval)
	c.request(42, 0, 8, 0, 0, nil)
	c.expect(8, errInval)
	c.request(cmdRead, 1<<7, 9, 0, 16, nil)
	c.expect(9, errInval)
	// The stream is still in step, and nothing was written.
	assert.Equal(t, make([]byte, 64<<10), dev.snapshot())
	assert.Equal(t, make([]byte, 16), c.read(10, 0, 16))
}

func TestReadOnly(t *testing.T) {
	dev := newMem(64 << 10)
	_, addr := startServer(t, Export{Name: "vol", Device: dev, ReadOnly: true}, Options{})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	_, flags := c.goExport("vol")
	assert.NotZero(t, flags&tflagReadOnly)
	assert.Zero(t, flags&tflagWriteZeroes)
	c.request(cmdWrite, 0, 1, 0, 4, []byte{1, 2, 3, 4})
	c.expect(1, errPerm)
	c.request(cmdWriteZeroes, 0, 2, 0, 4, nil)
	c.expect(2, errPerm)
	c.request(cmdFlush, 0, 3, 0, 0, nil)
	c.expect(3, 0)
	assert.Equal(t, make([]byte, 4), c.read(4, 0, 4))
}

// TestRepliesOutOfOrder: a slow request does not hold back the ones after it.
func TestRepliesOutOfOrder(t *testing.T) {
	dev := newMem(1 << 20)
	copy(dev.data, randBytes(3, len(dev.data)))
	dev.blockOff, dev.release = 0, make(chan struct{})
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")
	c.request(cmdRead, 0, 100, 0, 4096, nil) // blocks in the device
	// Many more requests in flight at once, answered before the first.
	for i := range 32 {
		c.request(cmdRead, 0, uint64(i), uint64(4096*(i+1)), 4096, nil)
	}
	seen := map[uint64]bool{}
	for range 32 {
		cookie, errno := c.simpleReply()
		require.Zero(t, errno)
		require.Less(t, cookie, uint64(32))
		buf := make([]byte, 4096)
		_, err := io.ReadFull(c.nc, buf)
		require.NoError(t, err)
		off := 4096 * (cookie + 1)
		require.Equal(t, dev.data[off:off+4096], buf)
		seen[cookie] = true
	}
	assert.Len(t, seen, 32)
	close(dev.release)
	cookie, errno := c.simpleReply()
	assert.Equal(t, uint64(100), cookie)
	assert.Zero(t, errno)
}

// TestShutdownAnswersInFlight: Shutdown lets a request already read finish and be answered.
func TestShutdownAnswersInFlight(t *testing.T) {
	dev := newMem(64 << 10)
	dev.blockOff, dev.release = 0, make(chan struct{})
	s, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")
	c.request(cmdRead, 0, 7, 0, 512, nil)
	<-dev.blocked // the request is being served
	done := make(chan error)
	go func() { done <- s.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("Shutdown returned while a request was still being served")
	default:
	}
	close(dev.release)
	require.NoError(t, <-done)
	c.expect(7, 0)
	_, err := io.ReadFull(c.nc, make([]byte, 512))
	require.NoError(t, err)
	assert.True(t, c.closed())
	_, err = net.Dial("tcp", addr)
	assert.Error(t, err, "the listener is closed")
}

// TestBudgetBoundsRequestsInFlight: a client pipelining far more than the connection's
// budget gets every answer, but the server never holds more than the budget at once.
func TestBudgetBoundsRequestsInFlight(t *testing.T) {
	dev := newMem(1 << 20)
	dev.delay = 5 * time.Millisecond
	// Each 4 KiB read costs 8 KiB (4 KiB of data and the per-request cost): four at a time.
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{MaxPayload: 16 << 10, MaxBytesInFlight: 32 << 10})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")
	go func() {
		for i := range 40 {
			c.request(cmdRead, 0, uint64(i), uint64(4096*i), 4096, nil)
		}
	}()
	for range 40 {
		_, errno := c.simpleReply()
		require.Zero(t, errno)
		_, err := io.ReadFull(c.nc, make([]byte, 4096))
		require.NoError(t, err)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	assert.LessOrEqual(t, dev.peak, 4)
	assert.GreaterOrEqual(t, dev.peak, 2, "requests do run concurrently")
}

// TestServerBudgetAcrossConnections: clients on several connections, each with a generous
// budget of its own, together never hold more than the server-wide budget.
func TestServerBudgetAcrossConnections(t *testing.T) {
	dev := newMem(1 << 20)
	dev.delay = 5 * time.Millisecond
	// Each 4 KiB read costs 8 KiB; the server holds 32 KiB: four at a time in all.
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{MaxPayload: 16 << 10, MaxBytesInFlight: 1 << 20, MaxBufferedBytes: 32 << 10})
	const conns, reqs = 3, 20
	var wg sync.WaitGroup
	for range conns {
		c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
		c.goExport("vol")
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b []byte
			for i := range reqs {
				b = binary.BigEndian.AppendUint32(b, magicRequest)
				b = binary.BigEndian.AppendUint16(b, 0)
				b = binary.BigEndian.AppendUint16(b, cmdRead)
				b = binary.BigEndian.AppendUint64(b, uint64(i))
				b = binary.BigEndian.AppendUint64(b, uint64(4096*i))
				b = binary.BigEndian.AppendUint32(b, 4096)
			}
			if _, err := c.nc.Write(b); err != nil {
				t.Error(err)
				return
			}
			for range reqs {
				var h [16]byte
				if _, err := io.ReadFull(c.nc, h[:]); err != nil || binary.BigEndian.Uint32(h[4:]) != 0 {
					t.Error("reply", err, h)
					return
				}
				if _, err := io.ReadFull(c.nc, make([]byte, 4096)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	dev.mu.Lock()
	defer dev.mu.Unlock()
	assert.LessOrEqual(t, dev.peak, 4, "reads in progress across all connections")
	assert.GreaterOrEqual(t, dev.peak, 2, "requests do run concurrently")
}

// TestStalledReaderDisconnected: a client that pipelines reads and never reads the replies
// holds the server-wide budget only until a reply has waited ReplyTimeout; then it is
// disconnected and other clients are served again.
func TestStalledReaderDisconnected(t *testing.T) {
	dev := newMem(4 << 20)
	s, err := NewServer(Export{Name: "vol", Device: dev},
		Options{MaxPayload: 1 << 20, MaxBufferedBytes: 2 << 20, ReplyTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	// A unix socket: its kernel buffers are small and fixed (loopback TCP's grow to many MiB).
	addr := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", addr)
	require.NoError(t, err)
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	greedy := dialNet(t, "unix", addr, flagFixedNewstyle|flagNoZeroes)
	greedy.goExport("vol")
	for i := range 64 { // 32 MiB of replies: more than the kernel's socket buffers hold
		greedy.request(cmdRead, 0, uint64(i), uint64(i%8)<<19, 1<<19, nil)
	}
	// The server is full: the greedy client's replies fill its socket and hold the budget.
	require.Eventually(t, func() bool { return s.budget.inUse() > 1<<20 }, 5*time.Second, 5*time.Millisecond)

	good := dialNet(t, "unix", addr, flagFixedNewstyle|flagNoZeroes)
	good.goExport("vol")
	require.NoError(t, good.nc.SetDeadline(time.Now().Add(10*time.Second)))
	assert.Equal(t, make([]byte, 1<<20), good.read(1, 0, 1<<20), "served once the stalled client is dropped")
	// What the kernel had buffered can still be read; then the connection ends.
	require.NoError(t, greedy.nc.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, err := io.Copy(io.Discard, greedy.nc)
	var ne net.Error
	assert.False(t, errors.As(err, &ne) && ne.Timeout(), "the stalled client is disconnected (%v)", err)
	assert.Less(t, n, int64(64*(16+1<<19)), "not every reply was sent")

	// A client that idles with no reply pending is not affected.
	time.Sleep(400 * time.Millisecond)
	assert.Equal(t, make([]byte, 16), good.read(2, 0, 16))
}

// TestOptionDefaults: the limits a zero Options gets, and how they are adjusted.
func TestOptionDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Options
		want Options
	}{
		{"zero", Options{}, Options{MaxPayload: 32 << 20, MaxBytesInFlight: 64 << 20, MaxBufferedBytes: 256 << 20,
			MaxConnections: 64, NegotiationTimeout: 10 * time.Second, ReplyTimeout: time.Minute}},
		{"budgets raised to one maximal request", Options{MaxPayload: 1 << 20, MaxBytesInFlight: 1, MaxBufferedBytes: 1},
			Options{MaxPayload: 1 << 20, MaxBytesInFlight: 1 << 20, MaxBufferedBytes: 1<<20 + requestCost,
				MaxConnections: 64, NegotiationTimeout: 10 * time.Second, ReplyTimeout: time.Minute}},
		{"set", Options{MaxConnections: 3, NegotiationTimeout: time.Second, MaxBufferedBytes: 100 << 20, ReplyTimeout: time.Second},
			Options{MaxPayload: 32 << 20, MaxBytesInFlight: 64 << 20, MaxBufferedBytes: 100 << 20,
				MaxConnections: 3, NegotiationTimeout: time.Second, ReplyTimeout: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewServer(Export{Device: newMem(4096)}, tc.in)
			require.NoError(t, err)
			got := s.opts
			got.Logger = nil
			assert.Equal(t, tc.want, got)
			assert.Equal(t, got.MaxBufferedBytes, s.budget.max)
		})
	}
	assert.Equal(t, 64, DefaultMaxConnections)
	assert.LessOrEqual(t, DefaultNegotiationTimeout, 10*time.Second, "idle clients that never negotiate are dropped soon")
}

func TestNewServerRejectsBadExport(t *testing.T) {
	_, err := NewServer(Export{}, Options{})
	assert.Error(t, err)
	_, err = NewServer(Export{Device: newMem(0)}, Options{})
	assert.Error(t, err)
	_, err = NewServer(Export{Device: newMem(4096), PreferredBlockSize: 1000}, Options{})
	assert.ErrorContains(t, err, "power of two")
	_, err = NewServer(Export{Device: newMem(4096)}, Options{MaxPayload: 1024})
	assert.ErrorContains(t, err, "maximum payload")
}

// TestHandlersBounded: however many requests a client pipelines, a connection serves at most
// maxHandlers at once (each may hold an OS thread in a blocked system call).
func TestHandlersBounded(t *testing.T) {
	dev := newMem(1 << 20)
	dev.delay = 2 * time.Millisecond
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{MaxBytesInFlight: 1 << 30})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")
	const n = 600
	var b []byte
	for i := range n {
		b = binary.BigEndian.AppendUint32(b, magicRequest)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, cmdRead)
		b = binary.BigEndian.AppendUint64(b, uint64(i))
		b = binary.BigEndian.AppendUint64(b, 0)
		b = binary.BigEndian.AppendUint32(b, 16)
	}
	c.write(b)
	for range n {
		_, errno := c.simpleReply()
		require.Zero(t, errno)
		_, err := io.ReadFull(c.nc, make([]byte, 16))
		require.NoError(t, err)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	assert.LessOrEqual(t, dev.peak, maxHandlers)
	assert.Greater(t, dev.peak, 8)
}

// TestFailedSyncIsSticky: after one failed fsync, later flushes fail too.
func TestFailedSyncIsSticky(t *testing.T) {
	dev := &failSyncDevice{memDevice: newMem(64 << 10)}
	_, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")
	c.request(cmdFlush, 0, 1, 0, 0, nil)
	c.expect(1, 0)
	dev.fail.Store(true)
	c.request(cmdWrite, cmdFlagFUA, 2, 0, 4, []byte{1, 2, 3, 4})
	c.expect(2, errIO)
	dev.fail.Store(false) // the device recovers, but the lost pages stay lost
	c.request(cmdFlush, 0, 3, 0, 0, nil)
	c.expect(3, errIO)
}

type failSyncDevice struct {
	*memDevice
	fail atomic.Bool
}

func (d *failSyncDevice) Sync() error {
	if d.fail.Load() {
		return errors.New("EIO")
	}
	return d.memDevice.Sync()
}

// FuzzNegotiation feeds arbitrary client bytes to the handshake: the server must answer or
// close, never panic or hang.
func FuzzNegotiation(f *testing.F) {
	f.Add(append([]byte{0, 0, 0, 3}, append(binary.BigEndian.AppendUint64(nil, magicOpt), append([]byte{0, 0, 0, 7, 0, 0, 0, 6}, goData("")...)...)...))
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := NewServer(Export{Name: "vol", Device: newMem(4096)}, Options{MaxPayload: 4096})
		require.NoError(t, err)
		a, b := net.Pipe()
		s.ServeConn(a)
		go io.Copy(io.Discard, b)
		_ = b.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = b.Write(in)
		b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, s.Shutdown(ctx))
	})
}

// TestConnectionLimitAndNegotiationTimeout: clients beyond MaxConnections are disconnected at
// once, and a client that stalls in the handshake is dropped after NegotiationTimeout.
func TestConnectionLimitAndNegotiationTimeout(t *testing.T) {
	// Long enough for the clients that do negotiate to finish on a loaded machine, short
	// enough to wait out twice.
	const negotiationTimeout = 500 * time.Millisecond
	dev := newMem(64 << 10)
	s, addr := startServer(t, Export{Name: "vol", Device: dev}, Options{MaxConnections: 1, NegotiationTimeout: negotiationTimeout})
	c := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c.goExport("vol")
	require.Eventually(t, func() bool { return s.Connections() == 1 }, 10*time.Second, time.Millisecond)
	extra, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadFull(extra, make([]byte, 18))
	assert.Error(t, err, "a second client gets no greeting")
	assert.Equal(t, make([]byte, 16), c.read(1, 0, 16), "the first one is served")
	c.request(cmdDisc, 0, 2, 0, 0, nil)
	require.Eventually(t, func() bool { return s.Connections() == 0 }, 5*time.Second, 10*time.Millisecond)

	// A client that reads the greeting and then says nothing.
	stall, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer stall.Close()
	_, err = io.ReadFull(stall, make([]byte, 18))
	require.NoError(t, err)
	_ = stall.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = stall.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "dropped after the negotiation timeout")
	// Transmission has no deadline: a served client may idle longer than the timeout.
	require.Eventually(t, func() bool { return s.Connections() == 0 }, 5*time.Second, 10*time.Millisecond)
	c2 := dial(t, addr, flagFixedNewstyle|flagNoZeroes)
	c2.goExport("vol")
	time.Sleep(negotiationTimeout + negotiationTimeout/5)
	assert.Equal(t, make([]byte, 16), c2.read(3, 0, 16))
}

// TestStoppedBeforeServeEndsAtOnce: a connection stopped (by Shutdown) before serve sets its
// handshake deadline must not have that deadline lift the stop: serve returns at once instead
// of negotiating and serving for the handshake limit (an hour here).
func TestStoppedBeforeServeEndsAtOnce(t *testing.T) {
	t.Parallel()
	s, err := NewServer(Export{Name: "vol", Device: newMem(1 << 20)}, Options{NegotiationTimeout: time.Hour})
	require.NoError(t, err)
	server, client := net.Pipe()
	defer client.Close()
	c := newConn(s, server)
	c.stop()
	done := make(chan struct{})
	go func() { defer close(done); c.serve() }()
	go func() { _, _ = io.Copy(io.Discard, client) }() // a client that reads and never speaks
	select {
	case <-done:
	case <-time.After(10 * time.Second): // a failure bound; the fixed code returns at once
		t.Fatal("a stopped connection kept waiting for its handshake")
	}
}
