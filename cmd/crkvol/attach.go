package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"crkvol/volume"
	"crkvol/volume/nbd"
)

// attachment is the record an attach process keeps in <state>/attached/<uuid>.json while it
// serves, so that detach can find it.
type attachment struct {
	PID      int       `json:"pid"`
	Image    string    `json:"image"`
	CRN      string    `json:"crn"`
	Listen   string    `json:"listen"`
	URI      string    `json:"uri"`
	ReadOnly bool      `json:"readOnly"`
	Since    time.Time `json:"since"`
}

func (a *app) attachCommands() (*cobra.Command, *cobra.Command) {
	var listen string
	var readOnly bool
	attach := &cobra.Command{Use: "attach IMG", Short: "Serve a volume's plaintext as a block device over NBD until SIGINT/SIGTERM or detach", Args: args(cobra.ExactArgs(1)),
		Long: `attach unwraps the volume's passphrase, opens the volume and serves it with the Network Block
Device protocol, so that qemu-img, nbdcopy, nbd-client or a VM can use it as a disk, for example
  nbdinfo 'nbd+unix:///?socket=/path/to/socket'
It serves until SIGINT or SIGTERM, or until "crkvol volume detach IMG"; then it lets requests in
flight finish, flushes, closes the image and clears the key. The volume stays attached to one
process at a time; its key can still be rotated (the header is rewrapped) while it is attached.

--listen takes unix:PATH (default: a socket in the state directory) or tcp:HOST:PORT on a
loopback address: NBD has no authentication, so plaintext is never served to the network.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runAttach(cmd.Context(), args[0], listen, readOnly)
		}}
	attach.Flags().StringVar(&listen, "listen", "", "unix:PATH or tcp:127.0.0.1:PORT (default unix:<state>/attached/<uuid>.sock)")
	attach.Flags().BoolVar(&readOnly, "read-only", false, "refuse writes (the export is read-only)")

	var timeout time.Duration
	detach := &cobra.Command{Use: "detach IMG", Short: "Stop the process that serves an attached volume, and wait for it", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runDetach(cmd.Context(), args[0], timeout)
		}}
	detach.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the attach process to flush and exit")
	return attach, detach
}

// listenAddr parses --listen into a network and an address.
func listenAddr(spec, defaultSock string) (network, addr string, err error) {
	if spec == "" {
		return "unix", defaultSock, nil
	}
	network, addr, ok := strings.Cut(spec, ":")
	switch {
	case !ok || addr == "":
	case network == "unix":
		return network, addr, nil
	case network == "tcp":
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", "", usagef("--listen %q: %v", spec, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return "", "", usagef("--listen %q: NBD has no authentication or encryption, so crkvol serves plaintext only on a loopback address (127.0.0.1, ::1) or a unix socket", spec)
		}
		return network, addr, nil
	}
	return "", "", usagef("--listen %q: want unix:PATH or tcp:127.0.0.1:PORT", spec)
}

// nbdURI is the NBD URI (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md) of
// an export.
func nbdURI(network, addr, export string) string {
	if network == "unix" {
		return "nbd+unix:///" + url.PathEscape(export) + "?socket=" + url.QueryEscape(addr)
	}
	return "nbd://" + addr + "/" + url.PathEscape(export)
}

func (a *app) attachDir() (string, error) {
	dir, err := a.stateDirectory()
	if err != nil {
		return "", err
	}
	d := filepath.Join(dir, "attached")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	return d, nil
}

func (a *app) runAttach(ctx context.Context, path, listen string, readOnly bool) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	info, err := volume.Describe(abs)
	if err != nil {
		return err
	}
	dir, err := a.attachDir()
	if err != nil {
		return err
	}
	network, addr, err := listenAddr(listen, filepath.Join(dir, info.UUID+".sock"))
	if err != nil {
		return err
	}
	if err := a.open(ctx); err != nil {
		return err
	}
	// An exclusive lock on the data area: a second attach (or a writer) fails here, at once.
	v, err := a.mgr.OpenWith(ctx, abs, volume.OpenOptions{ReadOnly: readOnly, Exclusive: true})
	if err != nil {
		return fmt.Errorf("volume attach: %w", err)
	}
	// The key service and registry are not needed while serving: release their locks so that
	// other commands (a rotation, say) run meanwhile.
	a.close()
	closeVolume := func() error {
		serr := v.Sync()
		cerr := v.Close() // clears the master key
		return errors.Join(serr, cerr)
	}

	l, err := listenNBD(network, addr)
	if err != nil {
		closeVolume()
		return fmt.Errorf("volume attach: %w", err)
	}
	if network == "tcp" {
		addr = l.Addr().String() // the port chosen for :0
	}
	export := filepath.Base(abs)
	rec := attachment{PID: os.Getpid(), Image: abs, CRN: v.CRN(), Listen: network + ":" + addr,
		URI: nbdURI(network, addr, ""), ReadOnly: readOnly, Since: time.Now().UTC()}
	recPath := filepath.Join(dir, info.UUID+".json")
	srv, err := nbd.NewServer(nbd.Export{Name: export, Description: v.CRN(), Device: v, ReadOnly: readOnly,
		PreferredBlockSize: v.SectorSize()}, nbd.Options{Logger: slog.New(slog.NewTextHandler(a.stderr, nil))})
	if err == nil {
		err = writeRecord(recPath, rec)
	}
	if err != nil {
		l.Close()
		closeVolume()
		return fmt.Errorf("volume attach: %w", err)
	}
	defer os.Remove(recPath)
	if network == "unix" {
		defer os.Remove(addr)
	}

	if a.asJSON {
		if err := a.emit(rec); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(a.stdout, rec.URI)
	}
	fmt.Fprintf(a.stderr, "attached %s (%d bytes%s) at %s; stop with SIGINT, SIGTERM or crkvol volume detach\n",
		path, v.Size(), map[bool]string{true: ", read-only"}[readOnly], rec.URI)

	sigctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var serveErr error
	select {
	case <-sigctx.Done():
	case serveErr = <-served:
	}
	shctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shErr := srv.Shutdown(shctx)
	if err := closeVolume(); err != nil {
		return fmt.Errorf("volume attach: closing %s: %w", path, err)
	}
	if serveErr != nil && !errors.Is(serveErr, nbd.ErrServerClosed) {
		return fmt.Errorf("volume attach: %w", serveErr)
	}
	if shErr != nil {
		fmt.Fprintf(a.stderr, "crkvol: some NBD clients were cut off after 30 s: %v\n", shErr)
	}
	fmt.Fprintf(a.stderr, "detached %s: flushed, closed, key cleared\n", path)
	return nil
}

// listenNBD listens on a unix socket (mode 0600, replacing a stale socket file) or on TCP.
func listenNBD(network, addr string) (net.Listener, error) {
	if network != "unix" {
		return net.Listen(network, addr)
	}
	if len(addr) > 107 { // sun_path holds 108 bytes with the terminating NUL
		return nil, fmt.Errorf("unix socket path %s is %d bytes, more than the 107 the kernel allows; pass a shorter --listen unix:PATH", addr, len(addr))
	}
	if _, err := os.Lstat(addr); err == nil {
		if c, err := net.Dial("unix", addr); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: a server is already listening there", addr)
		}
		if err := os.Remove(addr); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", addr)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // removed by the caller, after shutdown
	return l, nil
}

// writeRecord writes the attachment record atomically, mode 0600.
func writeRecord(path string, rec attachment) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (a *app) runDetach(ctx context.Context, path string, timeout time.Duration) error {
	info, err := volume.Describe(path)
	if err != nil {
		return err
	}
	dir, err := a.attachDir()
	if err != nil {
		return err
	}
	recPath := filepath.Join(dir, info.UUID+".json")
	b, err := os.ReadFile(recPath)
	if errors.Is(err, os.ErrNotExist) {
		if busy, _ := volume.InUse(path); busy {
			return fmt.Errorf("volume detach: %s is in use by a process this state directory has no record of (another --state, or a writer)", path)
		}
		return fmt.Errorf("volume detach: %s is not attached", path)
	}
	if err != nil {
		return fmt.Errorf("volume detach: %w", err)
	}
	var rec attachment
	if err := json.Unmarshal(b, &rec); err != nil || rec.PID <= 0 {
		return fmt.Errorf("volume detach: %s: unreadable attachment record", recPath)
	}
	if busy, err := volume.InUse(path); err == nil && !busy {
		os.Remove(recPath) // the attach process died without cleaning up
		return fmt.Errorf("volume detach: %s is not attached (removed the stale record of process %d)", path, rec.PID)
	}
	if err := syscall.Kill(rec.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("volume detach: signalling process %d: %w", rec.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		busy, err := volume.InUse(path)
		if err != nil {
			return fmt.Errorf("volume detach: %w", err)
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("volume detach: process %d still holds %s after %s", rec.PID, path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if a.asJSON {
		return a.emit(map[string]any{"path": path, "detached": true, "pid": rec.PID})
	}
	fmt.Fprintf(a.stderr, "detached %s (process %d)\n", path, rec.PID)
	return nil
}

// attachmentOf reads the attachment record of the volume with this UUID, or nil.
func (a *app) attachmentOf(uuid string) *attachment {
	dir, err := a.stateDirectory()
	if err != nil {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "attached", uuid+".json"))
	if err != nil {
		return nil
	}
	var rec attachment
	if json.Unmarshal(b, &rec) != nil {
		return nil
	}
	return &rec
}
