package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"crkvol/keyslot"
	"crkvol/nbd"
	"crkvol/volume"
)

// NBDOptions tune RunNBD.
type NBDOptions struct {
	// Quick copies 64 MiB once per case instead of 128 MiB three times (unless Size and
	// Rounds say otherwise).
	Quick bool
	// Size is the bytes copied per measurement; 128 MiB (Quick: 64 MiB) if zero: sequential
	// copies through the page cache reach their rate within a few MiB, and 128 MiB keeps
	// the section within its share of crkvol bench --all.
	Size int64
	// Rounds is how many times each case is measured (best kept); 3 (Quick: 1) if zero.
	Rounds int
	// Dir is where the run makes its temporary directory for the images and sockets,
	// os.TempDir() if empty. The directory is removed at the end.
	Dir string
	// Unix serves on unix sockets instead of TCP on 127.0.0.1.
	Unix bool
	// Progress, if set, is told what is being measured.
	Progress func(string)
}

// NBDResult is one measured case of RunNBD.
type NBDResult struct {
	Server string  `json:"server"` // "crkvol", "crkvol-raw" or "qemu-nbd"
	Op     string  `json:"op"`     // "write" or "read"
	MiBps  float64 `json:"mibps"`  // 2^20 bytes per second
}

// NBDReport is a whole RunNBD run.
type NBDReport struct {
	Transport string      `json:"transport"` // "tcp 127.0.0.1" or "unix socket"
	Size      int64       `json:"size"`
	Rounds    int         `json:"rounds"`
	Results   []NBDResult `json:"results"`
}

// nbdServers names the servers RunNBD compares, in table order.
var nbdServers = []struct{ name, what string }{
	{"crkvol", "crkvol attach: encrypted LUKS2 volume (aes-xts-plain64)"},
	{"crkvol-raw", "crkvol's NBD server on the raw file (no encryption)"},
	{"qemu-nbd", "qemu-nbd -f raw on the raw file (the reference)"},
}

// RunNBD measures sequential writes and reads through NBD on loopback TCP (or unix sockets), with nbdcopy as
// the client, against three servers on this machine: crkvol serving an encrypted volume,
// crkvol's server on a raw file, and qemu-nbd serving the raw file. It needs nbdcopy
// (libnbd-bin) and qemu-nbd (qemu-utils).
func RunNBD(ctx context.Context, opts NBDOptions) (*NBDReport, error) {
	if opts.Size <= 0 {
		opts.Size = 128 << 20
		if opts.Quick {
			opts.Size = 64 << 20
		}
	}
	if opts.Rounds <= 0 {
		opts.Rounds = 3
		if opts.Quick {
			opts.Rounds = 1
		}
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	nbdcopy, err := exec.LookPath("nbdcopy")
	if err != nil {
		return nil, fmt.Errorf("bench nbd: %w: nbdcopy (Debian package libnbd-bin): %v", ErrToolMissing, err)
	}
	qemuNBD, err := exec.LookPath("qemu-nbd")
	if err != nil {
		return nil, fmt.Errorf("bench nbd: %w: qemu-nbd (Debian package qemu-utils): %v", ErrToolMissing, err)
	}
	base := opts.Dir
	if base == "" {
		base = os.TempDir()
	}
	base, absErr := filepath.Abs(base)
	if absErr != nil {
		return nil, fmt.Errorf("bench nbd: %w", absErr)
	}
	// Absolute paths: qemu-nbd and nbdcopy would read "-x" as an option and "null:x" as a
	// protocol.
	dir, err := os.MkdirTemp(base, "crkvol-bench-nbd")
	if err != nil {
		return nil, fmt.Errorf("bench nbd: %w", err)
	}
	defer os.RemoveAll(dir)
	progress(fmt.Sprintf("writing a %d MiB source file and formatting the volume", opts.Size>>20))
	src := filepath.Join(dir, "src.bin")
	if err := writeRandom(src, opts.Size); err != nil {
		return nil, err
	}

	// crkvol on an encrypted volume.
	vol, err := newBenchVolume(filepath.Join(dir, "vol.img"), opts.Size)
	if err != nil {
		return nil, err
	}
	defer vol.Close()
	volURI, stopVol, err := serveNBD(opts.Unix, filepath.Join(dir, "vol.sock"), vol)
	if err != nil {
		return nil, err
	}
	defer stopVol()

	// crkvol's server and qemu-nbd on raw files.
	raw := map[string]string{}
	for _, name := range []string{"crkvol-raw", "qemu-nbd"} {
		raw[name] = filepath.Join(dir, name+".raw")
		if err := os.WriteFile(raw[name], nil, 0o600); err != nil {
			return nil, err
		}
		if err := os.Truncate(raw[name], opts.Size); err != nil {
			return nil, err
		}
	}
	rf, err := os.OpenFile(raw["crkvol-raw"], os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer rf.Close()
	fdev, err := nbd.NewFile(rf)
	if err != nil {
		return nil, err
	}
	rawURI, stopRaw, err := serveNBD(opts.Unix, filepath.Join(dir, "raw.sock"), fdev)
	if err != nil {
		return nil, err
	}
	defer stopRaw()
	qsock := filepath.Join(dir, "qemu.sock")
	qargs := []string{"--format=raw", "--persistent", "--shared=16", "--cache=writeback"}
	qemuURI := "nbd+unix:///?socket=" + qsock
	if opts.Unix {
		qargs = append(qargs, "--socket="+qsock)
	} else {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		qargs = append(qargs, "--bind=127.0.0.1", fmt.Sprintf("--port=%d", port))
		qemuURI = fmt.Sprintf("nbd://127.0.0.1:%d/", port)
	}
	qemu := exec.CommandContext(ctx, qemuNBD, append(qargs, raw["qemu-nbd"])...)
	var qemuErr bytes.Buffer
	qemu.Stderr = &qemuErr
	if err := qemu.Start(); err != nil {
		return nil, fmt.Errorf("bench nbd: qemu-nbd: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = qemu.Wait(); close(exited) }()
	defer func() { _ = qemu.Process.Kill(); <-exited }()
	if err := waitListening(ctx, qemuURI, qsock, exited); err != nil {
		return nil, fmt.Errorf("bench nbd: qemu-nbd did not start: %w: %s", err, qemuErr.String())
	}

	uris := map[string]string{"crkvol": volURI, "crkvol-raw": rawURI, "qemu-nbd": qemuURI}
	r := &NBDReport{Transport: "tcp 127.0.0.1", Size: opts.Size, Rounds: opts.Rounds}
	if opts.Unix {
		r.Transport = "unix socket"
	}
	best := map[[2]string]float64{}
	for round := range opts.Rounds {
		progress(fmt.Sprintf("round %d of %d: nbdcopy writes and reads %d MiB through each server", round+1, opts.Rounds, opts.Size>>20))
		for _, s := range nbdServers {
			for _, op := range []string{"write", "read"} {
				args := []string{src, uris[s.name]}
				if op == "read" {
					args = []string{uris[s.name], "null:"}
				}
				start := time.Now()
				out, err := exec.CommandContext(ctx, nbdcopy, args...).CombinedOutput()
				if err != nil {
					return nil, fmt.Errorf("bench nbd: nbdcopy %s (%s): %w: %s", op, s.name, err, out)
				}
				mibps := float64(opts.Size) / (1 << 20) / time.Since(start).Seconds()
				k := [2]string{s.name, op}
				best[k] = max(best[k], mibps)
			}
		}
	}
	for _, s := range nbdServers {
		for _, op := range []string{"write", "read"} {
			r.Results = append(r.Results, NBDResult{Server: s.name, Op: op, MiBps: best[[2]string{s.name, op}]})
		}
	}
	return r, ctx.Err()
}

// newBenchVolume formats a LUKS2 image with a random passphrase (PBKDF2, cheap: the benchmark
// measures I/O, not unlocking) and opens it.
func newBenchVolume(path string, size int64) (*volume.Volume, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const dataOff = 16 << 20
	if err := f.Truncate(dataOff + size); err != nil {
		return nil, err
	}
	pass := make([]byte, 32)
	if _, err := rand.Read(pass); err != nil {
		return nil, err
	}
	defer clear(pass)
	_, vk, err := keyslot.Format(f, uint64(dataOff+size), pass, keyslot.FormatOptions{KDF: keyslot.PBKDF2("sha256", 1000)})
	if err != nil {
		return nil, fmt.Errorf("bench nbd: formatting %s: %w", path, err)
	}
	clear(vk)
	return volume.OpenWithPassphrase(path, pass)
}

// serveNBD serves dev on a unix socket (or TCP on 127.0.0.1) until the returned function is
// called, and returns its URI.
func serveNBD(unix bool, sock string, dev nbd.Device) (string, func(), error) {
	srv, err := nbd.NewServer(nbd.Export{Device: dev}, nbd.Options{})
	if err != nil {
		return "", nil, err
	}
	var l net.Listener
	uri := "nbd+unix:///?socket=" + sock
	if unix {
		l, err = net.Listen("unix", sock)
	} else if l, err = net.Listen("tcp", "127.0.0.1:0"); err == nil {
		uri = "nbd://" + l.Addr().String() + "/"
	}
	if err != nil {
		return "", nil, err
	}
	go srv.Serve(l)
	return uri, func() { _ = srv.Shutdown(context.Background()) }, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits for the server at uri (a unix socket at sock, or nbd://host:port/),
// until it listens, exited closes (the server process ended) or 20 s passed.
func waitListening(ctx context.Context, uri, sock string, exited <-chan struct{}) error {
	network, addr := "unix", sock
	if strings.HasPrefix(uri, "nbd://") {
		network, addr = "tcp", strings.TrimSuffix(strings.TrimPrefix(uri, "nbd://"), "/")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		select {
		case <-exited:
			return errors.New("the server exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writeRandom writes n random bytes to path.
func writeRandom(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (r *NBDReport) find(server, op string) float64 {
	for _, x := range r.Results {
		if x.Server == server && x.Op == op {
			return x.MiBps
		}
	}
	return 0
}

// Ratios returns crkvol's servers (on the encrypted volume and on the raw file) against
// qemu-nbd on the raw file, writing and reading.
func (r *NBDReport) Ratios() []Ratio {
	var out []Ratio
	for _, x := range r.Results {
		if q := r.find("qemu-nbd", x.Op); q > 0 && x.Server != "qemu-nbd" && x.MiBps > 0 {
			name := "encrypted volume " + x.Op
			if x.Server == "crkvol-raw" {
				name = "raw file " + x.Op
			}
			out = append(out, Ratio{Section: "nbd", Name: name, Value: x.MiBps / q, Against: "qemu-nbd"})
		}
	}
	return out
}

// WriteTable prints the NBD report: MiB/s per server and operation, and the ratio to
// qemu-nbd on the raw file.
func (r *NBDReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "NBD over %s, nbdcopy as the client, %d MiB sequential, best of %d:\n", r.Transport, r.Size>>20, r.Rounds)
	for _, s := range nbdServers {
		fmt.Fprintf(w, "  %-10s  %s\n", s.name, s.what)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\top\tMiB/s\tvs qemu-nbd\t")
	for _, x := range r.Results {
		ratio := "-"
		if q := r.find("qemu-nbd", x.Op); q > 0 {
			ratio = fmt.Sprintf("%.2fx", x.MiBps/q)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t\n", x.Server, x.Op, x.MiBps, ratio)
	}
	return tw.Flush()
}
