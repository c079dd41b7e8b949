package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"crkvol/volume"
)

// signalCause is the cause of the root context's cancellation when a signal arrives.
type signalCause struct{ sig os.Signal }

func (s signalCause) Error() string { return fmt.Sprintf("interrupted by %v", s.sig) }

// exitCode is the conventional status of a process stopped by the signal: 128 + its number
// (130 for SIGINT, 143 for SIGTERM).
func (s signalCause) exitCode() int {
	if n, ok := s.sig.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 1
}

// name is the signal's conventional name, SIGINT or SIGTERM.
func (s signalCause) name() string {
	switch s.sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.sig.String()
}

// interruptContext returns a context cancelled (with a signalCause) at the first SIGINT or
// SIGTERM. After that first signal the handler is removed, so a second one stops the
// process the default way, at once. stop releases the handler.
func interruptContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			signal.Stop(ch)
			cancel(signalCause{s})
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// interrupted is the error of a long command stopped by a signal at a clean point: its text
// says what was done, what remains and how to resume.
type interrupted struct{ msg string }

func (i interrupted) Error() string { return i.msg }

// interruptedf builds an interrupted error.
func interruptedf(format string, args ...any) error {
	return interrupted{fmt.Sprintf(format, args...)}
}

// interruption reports whether ctx was cancelled by a signal, and which.
func interruption(ctx context.Context) (signalCause, bool) {
	var s signalCause
	ok := errors.As(context.Cause(ctx), &s)
	return s, ok
}

// ctxReader stops a copy once ctx ends: the reads of io.Copy are the chunks of a long
// command. A read blocked on its source (a stalled pipe) is abandoned when ctx ends: the
// copy stops at once, and what that read brings later is dropped (nothing after it is
// reported as copied). After an error it must not be read again.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	buf []byte
}

// newCtxReader returns a ctxReader of r.
func newCtxReader(ctx context.Context, r io.Reader) *ctxReader { return &ctxReader{ctx: ctx, r: r} }

// Read reads from the source on another goroutine, into its own buffer (p may be reused by
// the caller after an abandoned read).
func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	buf := c.buf[:len(p)]
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		n, err := c.r.Read(buf)
		ch <- result{n, err}
	}()
	select {
	case r := <-ch:
		return copy(p, buf[:r.n]), r.err
	case <-c.ctx.Done():
		c.buf = nil // the abandoned read still owns it
		return 0, c.ctx.Err()
	}
}

// writeInterrupted syncs what an interrupted `volume write` wrote (n bytes at offset) and
// says how to write the rest: from a regular --input file with a tail command that works, or
// (stdin, a pipe) by skipping the bytes written.
func writeInterrupted(v interface{ Sync() error }, img, input string, offset, n int64) error {
	if err := v.Sync(); err != nil {
		return fmt.Errorf("interrupted after %d bytes at offset %d, and syncing them failed: %w", n, offset, err)
	}
	input = absName(input)
	if st, err := os.Stat(input); input != "" && err == nil && st.Mode().IsRegular() {
		return interruptedf("%s: wrote the first %d bytes of %s at offset %d (synced); the rest was not written; to resume: tail -c +%d %s | crkvol volume write %s --offset %d",
			img, n, input, offset, n+1, shellArg(input), shellArg(img), offset+n)
	}
	return interruptedf("%s: wrote the first %d bytes of the input at offset %d (synced); the rest was not written; to resume, skip the first %d bytes of the input and write the rest with: crkvol volume write %s --offset %d",
		img, n, offset, n, shellArg(img), offset+n)
}

// absName is the absolute form of the file name p, or p itself if it is "" or has none.
func absName(p string) string {
	if p == "" {
		return p
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// shellArg quotes s for a POSIX shell when it holds anything but plain path characters.
func shellArg(s string) string {
	plain := s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+=:,@%", r))
	})
	if plain {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// readInterrupted flushes what an interrupted `volume read` read (got of want bytes from
// offset) and says how to read the rest.
func readInterrupted(w interface{ Flush() error }, img, output string, offset, got, want int64) error {
	ferr := w.Flush()
	to := "stdout"
	if output != "" {
		to = absName(output)
	}
	if ferr != nil {
		return fmt.Errorf("interrupted after %d bytes, and writing them to %s failed: %w", got, to, ferr)
	}
	return interruptedf("%s: read %d of %d bytes from offset %d to %s, which is incomplete; to read the rest: crkvol volume read %s --offset %d --length %d",
		img, got, want, offset, to, shellArg(img), offset+got, want-got)
}

// rewrapInterrupted describes rewrap passes stopped by a signal (key rotate, key sync,
// volume rewrap): what each did, what remains and how to resume. ok is false if there were
// none.
func rewrapInterrupted(reps []*volume.Report) (msg string, ok bool) {
	var parts []string
	for _, r := range reps {
		parts = append(parts, fmt.Sprintf("rewrapped %d of %d volumes of key %s to version %s (already current %d); %d not done keep their old, still valid wrapping; run crkvol key sync %s to rewrap them",
			r.Rewrapped, r.Volumes, r.KeyID, shown(r.NewVersion), r.AlreadyCurrent, len(r.Failed)+r.NotStarted, r.KeyID))
	}
	return strings.Join(parts, "; "), len(parts) > 0
}
