// Package chrometest runs crkvol's real-browser tests: it starts Debian's chromium headless
// for one test, hands the test a chromedp context on a fresh tab, and watches the page for
// what a browser test must never let pass silently: a Content Security Policy violation or
// a JavaScript error.
//
// # Starting a browser
//
// [Start] looks for chromium at [ChromiumPath] (Debian's package `chromium`), then on PATH.
// Without it a test is skipped with the package to install, or fails when CI=true
// ([tooltest.CIEnv]), as a missing tool does in [tooltest.Require]. The browser runs
// headless with a fresh user data directory under t.TempDir(), no sandbox (CI runs as root),
// and with the background traffic a test must not depend on turned off (no QUIC, no
// component updates, no sync, no first-run pages): it talks only to the server the test
// names. It is stopped when the test ends.
//
// # What fails a test
//
// Every message the page writes is collected. An uncaught exception, a console.error call
// and any Content Security Policy violation (blocked inline script, inline style, style=""
// attribute, foreign image...) fail the test when it ends, listed one per line, unless the
// test took them with [Browser.TakeProblems] to check them itself. Failed resource loads
// (a 4xx page) are not problems: a refusal page is a legitimate response.
//
// # Screenshots
//
// [Browser.Screenshot] writes the viewport as a PNG; [Browser.FullScreenshot] the whole page.
// The viewport is [DesktopWidth]×[DesktopHeight] unless the test sets another with
// [Browser.Viewport] or [Browser.Phone].
//
// The package is meant for tests only.
package chrometest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"crkvol/internal/tooltest"
)

// ChromiumPath is where Debian's chromium package installs the browser.
const ChromiumPath = "/usr/bin/chromium"

// The default viewport, a laptop screen, and the phone-sized one of [Browser.Phone].
const (
	DesktopWidth  = 1280
	DesktopHeight = 800
	PhoneWidth    = 390
	PhoneHeight   = 844
)

// DefaultTimeout bounds a whole browser test when [Start] is given no timeout.
const DefaultTimeout = 2 * time.Minute

// Browser is one headless chromium with one tab, for one test.
type Browser struct {
	t   testing.TB
	ctx context.Context

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage // everything the page wrote, in order
	problems []string                  // the messages that fail the test, not yet taken
}

// Start starts chromium for t and opens a tab with the desktop viewport. Every action the
// test runs on [Browser.Context] must finish within timeout (counted from now; zero means
// [DefaultTimeout]). The browser is stopped, and the collected problems reported, when t
// ends.
func Start(t testing.TB, timeout time.Duration) *Browser {
	t.Helper()
	path := findChromium(t)
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	out := &tooltest.SyncBuffer{}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.UserDataDir(filepath.Join(t.TempDir(), "chromium-profile")),
		chromedp.WindowSize(DesktopWidth, DesktopHeight),
		chromedp.CombinedOutput(out),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	b := &Browser{t: t}
	// The first Run starts the browser and the tab; its context must not carry the
	// deadline (a deadline on it would stop the browser), so the timeout goes on a
	// context derived afterwards.
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("starting chromium (%s): %v\nits output:\n%s", path, err, out.String())
	}
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			b.record(m)
		}
	}()
	tctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	b.ctx = tctx
	t.Cleanup(func() {
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
		<-done
		b.mu.Lock()
		problems := b.problems
		b.mu.Unlock()
		if len(problems) > 0 {
			t.Errorf("the browser reported %d problem(s):\n%s", len(problems), strings.Join(problems, "\n"))
		}
	})
	b.Viewport(DesktopWidth, DesktopHeight)
	return b
}

// findChromium returns the browser's path, or skips t (fails it under CI=true).
func findChromium(t testing.TB) string {
	t.Helper()
	if fi, err := os.Stat(ChromiumPath); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return ChromiumPath
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(tooltest.CIEnv) == "true" {
		t.Fatalf("chromium required in CI but not installed (apt-get install chromium fonts-dejavu-core)")
	}
	t.Skipf("chromium not installed (apt-get install chromium fonts-dejavu-core); skipping this browser test")
	return "" // not reached: Skipf stops the test
}

// record keeps a page message and classifies it.
func (b *Browser) record(m chromedp.ConsoleMessage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.messages = append(b.messages, m)
	if p, bad := Problem(m); bad {
		b.problems = append(b.problems, p)
	}
}

// Problem reports whether a page message must fail a test, and describes it: an uncaught
// exception, a console.error or console.assert call, or a Content Security Policy violation,
// whatever its level and source.
func Problem(m chromedp.ConsoleMessage) (string, bool) {
	where := m.URL
	if where != "" {
		where = fmt.Sprintf(" (%s:%d)", m.URL, m.Line+1)
	}
	switch {
	case IsCSPViolation(m):
		return "CSP violation: " + m.Text + where, true
	case m.IsException():
		return "JavaScript error: " + m.Text + where, true
	case m.Source == "" && (m.Type == chromedp.ConsoleError || m.Type == "assert"):
		return "console.error: " + m.Text + where, true
	}
	return "", false
}

// IsCSPViolation reports whether a page message is the browser reporting a Content Security
// Policy violation.
func IsCSPViolation(m chromedp.ConsoleMessage) bool {
	return strings.Contains(m.Text, "Content Security Policy")
}

// Context returns the context every chromedp action of the test runs on: the browser's tab,
// with the test's deadline.
func (b *Browser) Context() context.Context { return b.ctx }

// Do runs actions on the tab in order and fails the test at the first error, naming what
// the test was doing (what, a short description) and the page it was on.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v%s", what, err, b.where())
	}
}

// where names the page the tab is on, for a failure message.
func (b *Browser) where() string {
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || loc == "" {
		return ""
	}
	return " (page " + loc + ")"
}

// Viewport sets the tab's viewport to width×height CSS pixels at scale 1.
func (b *Browser) Viewport(width, height int) {
	b.t.Helper()
	b.Do(fmt.Sprintf("setting the viewport to %d×%d", width, height), chromedp.EmulateViewport(int64(width), int64(height)))
}

// Desktop sets the viewport to [DesktopWidth]×[DesktopHeight].
func (b *Browser) Desktop() { b.t.Helper(); b.Viewport(DesktopWidth, DesktopHeight) }

// Phone sets the viewport to [PhoneWidth]×[PhoneHeight], a phone held upright.
func (b *Browser) Phone() { b.t.Helper(); b.Viewport(PhoneWidth, PhoneHeight) }

// Screenshot writes what the viewport shows as a PNG to path (0644; its directory is
// created).
func (b *Browser) Screenshot(path string) {
	b.t.Helper()
	b.screenshot(path, chromedp.CaptureScreenshot())
}

// FullScreenshot writes the whole page, beyond the viewport, as a PNG to path.
func (b *Browser) FullScreenshot(path string) {
	b.t.Helper()
	b.screenshot(path, chromedp.FullScreenshot(100))
}

func (b *Browser) screenshot(path string, shot chromedp.Action[[]byte]) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, shot)
	if err != nil {
		b.t.Fatalf("screenshot for %s: %v%s", path, err, b.where())
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
}

// Messages returns every message the page wrote so far, in order.
func (b *Browser) Messages() []chromedp.ConsoleMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]chromedp.ConsoleMessage(nil), b.messages...)
}

// TakeProblems returns the problems collected so far (see [Problem]) and forgets them, so
// that they no longer fail the test: for a test that provokes one on purpose. Messages
// arrive asynchronously; settle waits for that long for at least one to arrive (zero: do
// not wait).
func (b *Browser) TakeProblems(settle time.Duration) []string {
	deadline := time.Now().Add(settle)
	for {
		b.mu.Lock()
		n := len(b.problems)
		b.mu.Unlock()
		if n > 0 || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.problems
	b.problems = nil
	return p
}

// CheckProblems fails the test now, rather than when it ends, when the page has reported a
// problem: to name the step that caused it.
func (b *Browser) CheckProblems(step string) {
	b.t.Helper()
	b.mu.Lock()
	p := b.problems
	b.problems = nil
	b.mu.Unlock()
	if len(p) > 0 {
		b.t.Fatalf("%s: the browser reported %d problem(s):\n%s", step, len(p), strings.Join(p, "\n"))
	}
}
