package chrometest

import (
	"bytes"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"crkvol/internal/tooltest"
)

func TestProblem(t *testing.T) {
	tests := []struct {
		name string
		msg  chromedp.ConsoleMessage
		want string // prefix of the description; "" when not a problem
	}{
		{"log", chromedp.ConsoleMessage{Type: chromedp.ConsoleLog, Text: "hello"}, ""},
		{"warning", chromedp.ConsoleMessage{Type: chromedp.ConsoleWarning, Text: "deprecated"}, ""},
		{"console.error", chromedp.ConsoleMessage{Type: chromedp.ConsoleError, Text: "boom"}, "console.error: boom"},
		{"console.assert", chromedp.ConsoleMessage{Type: "assert", Text: "Assertion failed"}, "console.error: Assertion failed"},
		{"exception", chromedp.ConsoleMessage{Type: chromedp.ConsoleException, Text: "Error: x", URL: "http://h/a.js", Line: 2}, "JavaScript error: Error: x (http://h/a.js:3)"},
		{"csp violation logged as error", chromedp.ConsoleMessage{Type: chromedp.ConsoleError, Source: "security", Text: "Executing inline script violates the following Content Security Policy directive"}, "CSP violation: "},
		{"csp report-only as warning", chromedp.ConsoleMessage{Type: chromedp.ConsoleWarning, Source: "other", Text: "[Report Only] Refused to apply inline style because it violates the following Content Security Policy directive"}, "CSP violation: "},
		{"failed resource load", chromedp.ConsoleMessage{Type: chromedp.ConsoleError, Source: "network", Text: "Failed to load resource: the server responded with a status of 409 (Conflict)"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bad := Problem(tt.msg)
			if bad != (tt.want != "") || !strings.HasPrefix(got, tt.want) {
				t.Errorf("Problem = %q, %v; want prefix %q, %v", got, bad, tt.want, tt.want != "")
			}
		})
	}
}

const testCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'"

// testSite serves pages under the console's CSP: a clean one with its own script and style,
// and pages that break the policy or throw.
func testSite(t *testing.T) *httptest.Server {
	page := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Security-Policy", testCSP)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, `<!doctype html><html lang="en"><head><title>t</title><link rel="stylesheet" href="/s.css"></head><body>%s</body></html>`, body)
		}
	}
	asset := func(ctype, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ctype)
			fmt.Fprint(w, body)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /s.css", asset("text/css", "body{background:#fff;color:#111} .big{font-size:40px}"))
	mux.Handle("GET /ok.js", asset("text/javascript", `document.getElementById("out").textContent = "script ran";`))
	mux.Handle("GET /throw.js", asset("text/javascript", `throw new Error("thrown on purpose");`))
	mux.Handle("GET /err.js", asset("text/javascript", `console.error("logged on purpose");`))
	mux.Handle("GET /clean", page(`<p id="out" class="big">waiting</p><script src="/ok.js"></script>`))
	mux.Handle("GET /inline-script", page(`<p id="out">x</p><script>document.title = "inline ran";</script>`))
	mux.Handle("GET /style-attr", page(`<p id="out" style="color:red">x</p>`))
	mux.Handle("GET /throws", page(`<p id="out">x</p><script src="/throw.js"></script>`))
	mux.Handle("GET /console-error", page(`<p id="out">x</p><script src="/err.js"></script>`))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestBrowser(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("starts chromium; runs with " + tooltest.LongEnv + "=1")
	}
	srv := testSite(t)
	b := Start(t, time.Minute)

	t.Run("clean page", func(t *testing.T) {
		b.Do("opening the clean page",
			chromedp.Navigate(srv.URL+"/clean"),
			chromedp.WaitVisible(chromedp.CSS("#out")),
		)
		if _, err := chromedp.Run(b.Context(), chromedp.Poll[bool](`document.getElementById("out").textContent === "script ran"`)); err != nil {
			t.Fatal(err)
		}
		text, err := chromedp.Run(b.Context(), chromedp.Text(chromedp.CSS("#out")))
		if err != nil || text != "script ran" {
			t.Fatalf("text = %q, %v; want the external script to have run", text, err)
		}
		if p := b.TakeProblems(300 * time.Millisecond); len(p) != 0 {
			t.Errorf("a page within its CSP reported problems: %q", p)
		}
	})

	for _, tt := range []struct{ path, want string }{
		{"/inline-script", "CSP violation"},
		{"/style-attr", "CSP violation"},
		{"/throws", "JavaScript error: Uncaught Error: thrown on purpose"},
		{"/console-error", "console.error: logged on purpose"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			b.Do("opening "+tt.path, chromedp.Navigate(srv.URL+tt.path), chromedp.WaitReady(chromedp.CSS("#out")))
			p := b.TakeProblems(5 * time.Second)
			if len(p) == 0 || !strings.Contains(strings.Join(p, "\n"), tt.want) {
				t.Errorf("problems = %q; want one containing %q", p, tt.want)
			}
		})
	}

	t.Run("screenshots", func(t *testing.T) {
		b.Do("opening the clean page", chromedp.Navigate(srv.URL+"/clean"), chromedp.WaitVisible(chromedp.CSS("#out")))
		dir := t.TempDir()
		checkPNG := func(name string, w, h int) {
			t.Helper()
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := png.DecodeConfig(bytes.NewReader(data))
			if err != nil {
				t.Fatalf("%s is not a PNG: %v", name, err)
			}
			if cfg.Width != w || cfg.Height != h {
				t.Errorf("%s is %d×%d; want %d×%d", name, cfg.Width, cfg.Height, w, h)
			}
		}
		b.Screenshot(filepath.Join(dir, "desktop.png"))
		checkPNG("desktop.png", DesktopWidth, DesktopHeight)
		b.Phone()
		width, err := chromedp.Run(b.Context(), chromedp.Evaluate[int]("window.innerWidth"))
		if err != nil || width != PhoneWidth {
			t.Errorf("innerWidth on a phone = %d, %v; want %d", width, err, PhoneWidth)
		}
		b.Screenshot(filepath.Join(dir, "phone.png"))
		checkPNG("phone.png", PhoneWidth, PhoneHeight)
		b.FullScreenshot(filepath.Join(dir, "full.png"))
		b.Desktop()
	})
}
