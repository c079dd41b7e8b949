package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// rssHelperEnv names the unix socket a re-executed test binary serves on as the RSS test's
// server process; rssWriteDelayEnv, how long each of its writes takes.
const (
	rssHelperEnv     = "CRKVOL_NBD_RSS_HELPER"
	rssWriteDelayEnv = "CRKVOL_NBD_RSS_WRITE_DELAY"
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(rssHelperEnv); sock != "" {
		os.Exit(rssHelper(sock))
	}
	os.Exit(m.Run())
}

// patternDevice is a large Device that stores nothing: reads fill a pattern, writes are
// dropped after writeDelay (a slow disk: the server holds their payloads meanwhile). It
// keeps the server process's memory down to what the server itself holds.
type patternDevice struct {
	size       int64
	writeDelay time.Duration
}

func (d patternDevice) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		p[i] = byte(off + int64(i))
	}
	return len(p), nil
}
func (d patternDevice) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(d.writeDelay)
	return len(p), nil
}
func (d patternDevice) Size() int64 { return d.size }
func (d patternDevice) Sync() error { return nil }

// rssHelper runs in a child process: it serves a 1 GiB patternDevice with the default
// Options on the unix socket sock, says "ready", and answers each "stat" line on stdin with
// the connections, the request bytes reserved server-wide and the goroutines, until stdin closes.
func rssHelper(sock string) int {
	delay, _ := time.ParseDuration(os.Getenv(rssWriteDelayEnv))
	s, err := NewServer(Export{Name: "vol", Device: patternDevice{size: 1 << 30, writeDelay: delay}}, Options{})
	if err != nil {
		fmt.Println("server:", err)
		return 1
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	go s.Serve(l)
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Printf("%d %d %d\n", s.Connections(), s.budget.inUse(), runtime.NumGoroutine())
	}
	l.Close()
	return 0
}

// rssChild is the parent's handle on the helper process.
type rssChild struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

type rssStat struct{ conns, buffered, goroutines int }

func (c *rssChild) stat() rssStat {
	c.t.Helper()
	_, err := io.WriteString(c.in, "stat\n")
	require.NoError(c.t, err)
	line, err := c.out.ReadString('\n')
	require.NoError(c.t, err, "helper: %q", line)
	var s rssStat
	_, err = fmt.Sscan(line, &s.conns, &s.buffered, &s.goroutines)
	require.NoError(c.t, err, "helper: %q", line)
	return s
}

// memory returns the child's VmRSS and VmHWM (peak RSS) in bytes, from /proc/PID/status.
func (c *rssChild) memory() (rss, hwm int64) {
	c.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	require.NoError(c.t, err)
	for line := range strings.Lines(string(b)) {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(val) // "12345 kB"
		require.Len(c.t, f, 2, "%q", line)
		kb, err := strconv.ParseInt(f[0], 10, 64)
		require.NoError(c.t, err)
		if name == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	require.NotZero(c.t, rss, "no VmRSS in /proc/%d/status", c.cmd.Process.Pid)
	return rss, hwm
}

func startRSSChild(t *testing.T, sock string, writeDelay time.Duration) *rssChild {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), rssHelperEnv+"="+sock, rssWriteDelayEnv+"="+writeDelay.String())
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := &rssChild{t: t, cmd: cmd, in: in, out: bufio.NewReader(out)}
	line, err := c.out.ReadString('\n')
	require.NoError(t, err, "helper: %q", line)
	require.Equal(t, "ready\n", line)
	return c
}

// greedyClient negotiates and then pipelines n requests of 1 MiB (reads, or writes with
// their payload) without ever reading a reply.
func greedyClient(t *testing.T, sock string, n int, write bool) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, nc: nc}
	require.NoError(t, nc.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.ReadFull(nc, make([]byte, 18))
	require.NoError(t, err)
	c.write(binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	c.goExport("")
	require.NoError(t, nc.SetDeadline(time.Time{}))
	payload := make([]byte, 1<<20)
	go func() {
		for i := range n {
			typ, data := uint16(cmdRead), []byte(nil)
			if write {
				typ, data = cmdWrite, payload
			}
			b := binary.BigEndian.AppendUint32(nil, magicRequest)
			b = binary.BigEndian.AppendUint16(b, 0)
			b = binary.BigEndian.AppendUint16(b, typ)
			b = binary.BigEndian.AppendUint64(b, uint64(i))
			b = binary.BigEndian.AppendUint64(b, uint64(i)<<20)
			b = binary.BigEndian.AppendUint32(b, 1<<20)
			if _, err := nc.Write(append(b, data...)); err != nil {
				return // closed by the test, or by the server
			}
		}
	}()
	return nc
}

// TestMemoryBoundedUnderGreedyClients: 64 clients that pipeline 1 MiB requests and never
// read a reply keep the server process under 512 MiB (its peak RSS, read from
// /proc/PID/status), and once they leave the memory and the goroutines are given back.
func TestMemoryBoundedUnderGreedyClients(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads the server process's RSS from /proc")
	}
	type attack struct {
		name     string
		clients  int
		requests int // per client
		writes   bool
		rounds   int
	}
	attacks := []attack{{name: "64 readers", clients: 64, requests: 8, rounds: 1}}
	if tooltest.Long() {
		attacks = append(attacks,
			attack{name: "64 readers, deep pipelines, 3 rounds", clients: 64, requests: 64, rounds: 3},
			attack{name: "64 writers, 2 rounds", clients: 64, requests: 16, writes: true, rounds: 2})
	}
	const (
		peakBound = 512 << 20 // the bound the issue asks for
		leftBound = 64 << 20  // above the idle process, once the clients have left
		reqCost   = 1<<20 + requestCost
	)
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "nbdrss") // short: sun_path holds 108 bytes
			require.NoError(t, err)
			t.Cleanup(func() { os.RemoveAll(dir) })
			sock := filepath.Join(dir, "s")
			var writeDelay time.Duration
			if a.writes {
				writeDelay = 2 * time.Second // long enough for the writes to pile up
			}
			child := startRSSChild(t, sock, writeDelay)
			idle := child.stat()
			idleRSS, _ := child.memory()
			for round := range a.rounds {
				conns := make([]net.Conn, a.clients)
				for i := range conns {
					conns[i] = greedyClient(t, sock, a.requests, a.writes)
				}
				// Wait until the server buffers all it will: every request, or all that
				// its server-wide budget lets it (less than one more request).
				demanded := a.clients * a.requests * reqCost
				deadline := time.Now().Add(60 * time.Second)
				var st rssStat
				for {
					st = child.stat()
					_, hwm := child.memory()
					require.Less(t, hwm, int64(peakBound), "round %d: peak RSS with %d bytes buffered", round, st.buffered)
					if st.buffered >= demanded || st.buffered > defaultMaxBufferedBytes-reqCost {
						break
					}
					require.True(t, time.Now().Before(deadline), "round %d: server buffers only %d bytes", round, st.buffered)
					time.Sleep(20 * time.Millisecond)
				}
				assert.LessOrEqual(t, st.buffered, defaultMaxBufferedBytes, "round %d", round)
				rss, hwm := child.memory()
				t.Logf("round %d: %d clients, %d MiB buffered, RSS %d MiB, peak %d MiB (idle %d MiB)",
					round, st.conns, st.buffered>>20, rss>>20, hwm>>20, idleRSS>>20)
				assert.Less(t, hwm, int64(peakBound), "round %d: peak RSS", round)

				for _, nc := range conns {
					nc.Close()
				}
				require.Eventually(t, func() bool { return child.stat().conns == 0 }, 30*time.Second, 20*time.Millisecond,
					"round %d: the connections close", round)
				require.Eventually(t, func() bool { return child.stat().goroutines <= idle.goroutines }, 10*time.Second, 20*time.Millisecond,
					"round %d: the goroutines end (%d before the clients came)", round, idle.goroutines)
				rss, _ = child.memory()
				t.Logf("round %d: RSS %d MiB after the clients left", round, rss>>20)
				assert.Less(t, rss, idleRSS+leftBound, "round %d: RSS %d MiB after the clients left (idle %d MiB)", round, rss>>20, idleRSS>>20)
			}
		})
	}
}
