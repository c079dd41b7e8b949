package main

// The browser acceptance test of issue 21: a real `crkvol kms serve` on loopback, its web
// console driven by headless chromium (crkvol/internal/chrometest), the CLI and a host agent
// against the same server, and an attached volume that locks out when the console disables
// its key.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"crkvol/internal/chrometest"
	"crkvol/internal/tooltest"
)

// updateScreenshots asks TestConsoleBrowser to write the README's screenshots of the console
// to docs/console/; CRKVOL_UPDATE_SCREENSHOTS=1 does the same.
var updateScreenshots = flag.Bool("update-screenshots", false, "write the console screenshots to docs/console/")

// screenshotDir is where the README's console screenshots live, from this package.
const screenshotDir = "../../docs/console"

// consoleUI drives one browser tab through the console of one kms serve.
type consoleUI struct {
	t      *testing.T
	b      *chrometest.Browser
	srv    *kmsProc
	apiKey string
	shots  string // the screenshot directory; "" when screenshots are not updated
}

// page is the console URL of path under the server's default instance.
func (u *consoleUI) page(path string) string {
	return u.srv.url + "/ui/i/" + u.srv.instance + path
}

// eval evaluates a JavaScript expression in the page; a failure fails the test.
func eval[T any](u *consoleUI, expr string) T {
	u.t.Helper()
	v, err := chromedp.Run(u.b.Context(), chromedp.Evaluate[T](expr))
	require.NoError(u.t, err, "evaluating %s", expr)
	return v
}

// exists reports whether a CSS selector matches an element of the page now.
func (u *consoleUI) exists(sel string) bool {
	u.t.Helper()
	return eval[bool](u, fmt.Sprintf("document.querySelector(%q) !== null", sel))
}

// text returns the text of the first element sel matches.
func (u *consoleUI) text(sel string) string {
	u.t.Helper()
	s, err := chromedp.Run(u.b.Context(), chromedp.Text(chromedp.CSS(sel)))
	require.NoError(u.t, err, "reading %s", sel)
	return strings.TrimSpace(s)
}

// open navigates to url and waits for the page.
func (u *consoleUI) open(url string) {
	u.t.Helper()
	u.b.Do("opening "+url, chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS("main")))
}

// loads runs actions that make the tab load a new page (a link followed, a form
// submitted) and waits until that page has loaded.
func (u *consoleUI) loads(what string, actions ...chromedp.Action[chromedp.Void]) {
	u.t.Helper()
	eval[bool](u, "window.crkvolOldPage = true")
	u.b.Do(what, actions...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(u.b.Context(), 2*time.Second)
		done, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.crkvolOldPage !== true && document.readyState === "complete"`))
		cancel()
		if err == nil && done {
			return
		}
		require.True(u.t, time.Now().Before(deadline), "%s: no new page within 30 s (last error %v)", what, err)
		time.Sleep(30 * time.Millisecond)
	}
}

// signIn signs in with the API key on the sign-in page the tab is on, or goes there first.
func (u *consoleUI) signIn() {
	u.t.Helper()
	if !u.exists("#signin-form") {
		u.open(u.srv.url + "/ui/signin")
	}
	u.loads("signing in",
		chromedp.SendKeys(chromedp.CSS("#apikey"), u.apiKey),
		chromedp.Click(chromedp.CSS(`#signin-form button[type="submit"]`)),
	)
	require.False(u.t, u.exists("#signin-form"), "still on the sign-in page: %s", u.bodyText())
}

// openPage opens a console page of a signed-in tab: landing on the sign-in page instead
// fails the test (a session never ends by itself in this test but where it says so).
func (u *consoleUI) openPage(url string) {
	u.t.Helper()
	u.open(url)
	require.False(u.t, u.exists("#signin-form"), "opening %s shows the sign-in page: the session ended unexpectedly: %s", url, u.bodyText())
}

// refreshNow runs one live refresh of the page (console.js's window.crkvolRefresh) and
// returns whether it replaced anything; the page itself must stay (no navigation).
func (u *consoleUI) refreshNow() bool {
	u.t.Helper()
	require.True(u.t, eval[bool](u, `typeof window.crkvolRefresh === "function"`), "the page has no live refresh (window.crkvolRefresh)")
	eval[bool](u, `(window.crkvolStay = true, window.crkvolRefreshed = undefined,
		window.crkvolRefresh().then(function (r) { window.crkvolRefreshed = r; }), true)`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if done := eval[bool](u, `window.crkvolRefreshed !== undefined`); done {
			break
		}
		require.True(u.t, time.Now().Before(deadline), "the live refresh did not finish within 10 s")
		time.Sleep(50 * time.Millisecond)
	}
	require.True(u.t, eval[bool](u, `window.crkvolStay === true`), "a live refresh loaded a new page")
	return eval[bool](u, `window.crkvolRefreshed === true`)
}

func (u *consoleUI) bodyText() string {
	u.t.Helper()
	return eval[string](u, "document.body.innerText")
}

// shot writes a viewport screenshot to the screenshot directory, when updating them.
func (u *consoleUI) shot(name string) {
	u.t.Helper()
	u.b.CheckProblems("before screenshot " + name)
	if u.shots == "" {
		return
	}
	u.b.Screenshot(filepath.Join(u.shots, name))
	u.t.Logf("wrote %s", filepath.Join(u.shots, name))
}

// keyAction runs a key action through the key page's overflow menu and its dialog, with the
// mouse: open the menu, follow the action's entry, fill the dialog (fill may be nil),
// submit it with submit (a CSS selector in the dialog).
func (u *consoleUI) keyAction(keyID, action string, fill func(), submit string) {
	u.t.Helper()
	u.openPage(u.page("/keys/" + keyID))
	u.b.Do("opening the overflow menu", chromedp.Click(chromedp.CSS("details.menu > summary")))
	u.loads("choosing "+action, chromedp.Click(chromedp.CSS(fmt.Sprintf(`details.menu a[data-action=%q]`, action))))
	require.True(u.t, u.exists("dialog#dialog-"+action), "the %s dialog is not shown: %s", action, u.bodyText())
	if fill != nil {
		fill()
	}
	u.loads("confirming "+action, chromedp.Click(chromedp.CSS("dialog#dialog-"+action+" "+submit)))
}

// waitFor reloads url until cond holds, for at most d.
func (u *consoleUI) waitFor(url string, d time.Duration, what string, cond func() bool) {
	u.t.Helper()
	deadline := time.Now().Add(d)
	for {
		u.openPage(url)
		if cond() {
			return
		}
		require.True(u.t, time.Now().Before(deadline), "after %v: %s\n%s", d, what, u.bodyText())
		time.Sleep(250 * time.Millisecond)
	}
}

// sessionCookie returns the browser's console session cookie, or nil.
func (u *consoleUI) sessionCookie() *network.Cookie {
	u.t.Helper()
	res, err := chromedp.Call(u.b.Context(), network.GetCookies, network.GetCookiesParams{URLs: []string{u.srv.url + "/ui/"}})
	require.NoError(u.t, err)
	for _, c := range res.Cookies {
		if c.Name == "crkvol_session" {
			return c
		}
	}
	return nil
}

// TestConsoleBrowser is issue 21's acceptance in a real browser: sign in; create a root key;
// one volume on each of two hosts made by the CLI, which the Fleet page's live refresh
// (window.crkvolRefresh, no reload, no CSP violation) shows; on the Keys page the key's
// overflow menu, Rotate, confirm (keyboard only); the key page shows a new version id and
// date with the same name and id, and the Associated resources tab both volumes on the new
// version once the hosts' agents rewrapped them; the Versions tab fits a 390×844 screen; a
// 3-month policy; a disable shows the key suspended and locks the attached volume out, and
// the Fleet page lists both hosts (the one whose volume was attached and the one whose was
// not) as having confirmed the lockout of their one volume, with the API key that reported
// it; the server restarts and the console, whose sessions lived in the server's memory, asks
// to sign in again and says why; enable; delete refused with the registrations listed inside
// the dialog; the Events page lists every step; signing out ends the session on the server
// (its cookie put back is refused). Along the way: the Keys and Fleet pages at 390×844 (menu
// reachable, chart labels readable), the session cookie's flags, the CSP header, and no CSP
// violation or JavaScript error on any page (chrometest fails the test on either). With
// -update-screenshots (or CRKVOL_UPDATE_SCREENSHOTS=1) it writes the README's screenshots to
// docs/console/. Long test: CRKVOL_LONG_TESTS=1.
func TestConsoleBrowser(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set CRKVOL_LONG_TESTS=1")
	}
	bin, err := exec.LookPath("crkvol")
	require.NoError(t, err, "testscript puts crkvol in PATH")
	dir := t.TempDir()

	srv := newKMS(t, bin, dir)
	// The API key is made before the server starts: the state directory's stores are the
	// server's while it runs.
	cmd := exec.Command(bin, "--json", "kms", "apikey", "create")
	cmd.Env = srv.env()
	out, err := cmd.Output()
	require.NoError(t, err, "kms apikey create: %s", out)
	var made struct {
		APIKey string `json:"apikey"`
	}
	require.NoError(t, json.Unmarshal(out, &made))
	require.NotEmpty(t, made.APIKey)
	srv.start(time.Now().UTC())

	u := &consoleUI{t: t, b: chrometest.Start(t, 5*time.Minute), srv: srv, apiKey: made.APIKey}
	if *updateScreenshots || os.Getenv("CRKVOL_UPDATE_SCREENSHOTS") == "1" {
		u.shots = screenshotDir
	}
	step := func(name string, f func()) {
		t.Logf("step: %s", name)
		start := time.Now()
		f()
		u.b.CheckProblems(name)
		t.Logf("step done in %v: %s", time.Since(start).Round(time.Millisecond), name)
	}

	step("sign in: a session cookie with HttpOnly, SameSite=Strict, Path=/ui/; the CSP header", func() {
		u.open(srv.url + "/ui/")
		require.True(t, u.exists("#signin-form"), "/ui/ signed out is the sign-in page: %s", u.bodyText())
		u.signIn()
		session := u.sessionCookie()
		require.NotNil(t, session, "no crkvol_session cookie after signing in")
		require.True(t, session.HTTPOnly, "the session cookie is HttpOnly")
		require.Equal(t, network.CookieSameSiteStrict, session.SameSite, "the session cookie is SameSite=Strict")
		require.Equal(t, "/ui/", session.Path)
		require.False(t, session.Secure, "no Secure flag over plain HTTP (the browser would not send it back)")
		resp, err := chromedp.RunResponse(u.b.Context(), chromedp.Navigate(u.page("/keys")))
		require.NoError(t, err)
		require.Equal(t, int64(http.StatusOK), resp.Status)
		csp := ""
		for k, v := range resp.Headers {
			if strings.EqualFold(k, "Content-Security-Policy") {
				csp = fmt.Sprint(v)
			}
		}
		require.Contains(t, csp, "script-src 'self'")
		require.Contains(t, csp, "style-src 'self'")
		require.NotContains(t, csp, "unsafe-inline")
	})

	var keyID, v1, v1Date string
	step("create a root key in the console", func() {
		u.open(u.page("/keys"))
		u.b.Do("opening the create form", chromedp.Click(chromedp.CSS("#create-key > summary")))
		u.loads("creating backup-crk",
			chromedp.SendKeys(chromedp.CSS("#create-name"), "backup-crk"),
			chromedp.Click(chromedp.CSS(`#create-key input[name="type"][value="root"]`)),
			chromedp.Click(chromedp.CSS(`#create-key button[type="submit"]`)),
		)
		require.Equal(t, "backup-crk", u.text("#key-name"))
		keyID = u.text("#key-id")
		v1, v1Date = u.text("#key-version"), u.text("#key-version-date")
		require.NotEmpty(t, keyID)
		require.Contains(t, u.text("#flash"), "Key created")
	})

	// Two hosts with one volume of the key each: h1's will be attached when the key is
	// disabled, h2's not; both are locked out, and both hosts' agents say so.
	h1 := newHost(t, bin, dir, "h1", srv)
	h2 := newHost(t, bin, dir, "h2", srv)
	step("a volume on each of two hosts through the CLI, their agents; the Fleet page's live refresh shows them", func() {
		fleet := u.page("/fleet?key=" + keyID)
		row := fmt.Sprintf(`#fleet-keys tr[data-key-id=%q]`, keyID)
		u.openPage(fleet)
		require.Equal(t, "0", u.text(row+" td.registrations"), "no registration yet")
		require.NoError(t, h1.createVolumes(1, keyID))
		require.NoError(t, h2.createVolumes(1, keyID))
		h1.startAgent()
		h2.startAgent()
		// No reload: window.crkvolRefresh() (what console.js runs every 30 s) swaps the
		// table in place; the step fails on any CSP violation (a blocked fetch is one).
		deadline := time.Now().Add(30 * time.Second)
		for {
			replaced := u.refreshNow()
			if u.text(row+" td.registrations") == "2" {
				require.True(t, replaced, "the refresh replaced the table")
				break
			}
			require.True(t, time.Now().Before(deadline), "30 s of live refreshes and the Fleet page still shows %s registrations", u.text(row+" td.registrations"))
			time.Sleep(250 * time.Millisecond)
		}
		u.waitFor(u.page("/keys/"+keyID+"?tab=resources"), 30*time.Second, "both volumes registered", func() bool {
			return eval[int](u, fmt.Sprintf(`document.querySelectorAll('#resources tr[data-version-id=%q]').length`, v1)) == 2
		})
	})

	step("Keys page at 1280×800 and at 390×844: the overflow menu is reachable", func() {
		u.open(u.page("/keys"))
		row := fmt.Sprintf(`tr[data-key-id=%q]`, keyID)
		require.True(t, u.exists(row), "the key's row on the Keys page")
		require.Equal(t, "2", u.text(row+` td[data-label="Registrations"]`))
		u.shot("keys.png")

		u.b.Phone()
		u.open(u.page("/keys"))
		summary := row + " details.menu > summary"
		u.b.Do("opening the menu at 390×844", chromedp.ScrollIntoView(chromedp.CSS(summary)), chromedp.Click(chromedp.CSS(summary)))
		rotate := row + ` details.menu a[data-action="rotate"]`
		inView := eval[bool](u, fmt.Sprintf(`(() => { const r = document.querySelector(%q).getBoundingClientRect();
			return r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= window.innerWidth; })()`, rotate))
		if !inView {
			u.b.Screenshot(filepath.Join(os.TempDir(), "crkvol-phone-menu.png"))
		}
		require.True(t, inView, "at 390×844 the menu's Rotate entry is visible within the viewport's width: %s (innerWidth %d)",
			eval[string](u, fmt.Sprintf(`JSON.stringify(document.querySelector(%q).getBoundingClientRect())`, rotate)), eval[int](u, "window.innerWidth"))
		overflow := eval[bool](u, `document.documentElement.scrollWidth > window.innerWidth + 1`)
		require.False(t, overflow, "at 390×844 the Keys page does not scroll sideways")
		u.b.Desktop()
	})

	var v2 string
	step("Keys page → overflow menu → Rotate → confirm, keyboard only", func() {
		u.open(u.page("/keys"))
		row := fmt.Sprintf(`tr[data-key-id=%q]`, keyID)
		// Tab from the top of the page to the key's menu button, then Enter opens it.
		summary := row + " details.menu > summary"
		found := false
		for range 60 {
			u.b.Do("pressing Tab", chromedp.KeyEvent("\t"))
			if eval[bool](u, fmt.Sprintf(`document.activeElement === document.querySelector(%q)`, summary)) {
				found = true
				break
			}
		}
		require.True(t, found, "Tab reaches the key's overflow menu button")
		require.NotEqual(t, "none", eval[string](u, `getComputedStyle(document.activeElement).outlineStyle`), "the focused menu button shows its focus")
		u.b.Do("opening the menu with Enter", chromedp.KeyEvent("\r"))
		require.True(t, eval[bool](u, fmt.Sprintf(`document.querySelector(%q).open`, row+" details.menu")), "Enter opens the overflow menu")
		u.b.Do("moving to Rotate with Tab", chromedp.KeyEvent("\t"))
		require.Equal(t, "rotate", eval[string](u, `document.activeElement.dataset.action || ""`), "Tab moves to the menu's first entry, Rotate")
		u.loads("choosing Rotate with Enter", chromedp.KeyEvent("\r"))
		require.True(t, u.exists("dialog#dialog-rotate"), "the rotate dialog: %s", u.bodyText())
		require.Contains(t, u.text("dialog#dialog-rotate"), v1, "the dialog names the current version")
		u.shot("rotate-dialog.png")
		// The confirmation button has the focus (autofocus) or is reached with Tab; Space
		// presses it.
		confirm := `dialog#dialog-rotate button[type="submit"]`
		for range 10 {
			if eval[bool](u, fmt.Sprintf(`document.activeElement === document.querySelector(%q)`, confirm)) {
				break
			}
			u.b.Do("pressing Tab", chromedp.KeyEvent("\t"))
		}
		require.True(t, eval[bool](u, fmt.Sprintf(`document.activeElement === document.querySelector(%q)`, confirm)), "the dialog's Rotate key button takes the focus")
		u.loads("confirming with Space", chromedp.KeyEvent(" "))

		require.Equal(t, "backup-crk", u.text("#key-name"), "the name stays")
		require.Equal(t, keyID, u.text("#key-id"), "the id stays")
		v2 = u.text("#key-version")
		require.NotEqual(t, v1, v2, "a new version id")
		require.NotEqual(t, v1Date, u.text("#key-version-date"), "a new version date")
		require.NotEqual(t, "—", u.text("#key-rotated"))
	})

	step("the key page's Versions tab at 390×844: every column within the screen", func() {
		u.b.Phone()
		u.openPage(u.page("/keys/" + keyID + "?tab=versions"))
		require.Equal(t, 2, eval[int](u, `document.querySelectorAll("#versions tbody tr").length`), "two versions")
		require.False(t, eval[bool](u, `document.documentElement.scrollWidth > window.innerWidth + 1`), "at 390×844 the key page does not scroll sideways")
		outside := eval[string](u, `Array.from(document.querySelectorAll("#versions td")).filter(function (td) {
			var r = td.getBoundingClientRect();
			return !(r.width > 0 && r.left >= 0 && r.right <= window.innerWidth + 1);
		}).map(function (td) { return td.dataset.label; }).join(", ")`)
		require.Empty(t, outside, "at 390×844 these cells of the Versions table are cut off or outside the screen")
		require.True(t, eval[bool](u, `(function () { var w = document.querySelector("#versions").closest(".table-wrap"); return w.scrollWidth <= w.clientWidth + 1; })()`),
			"at 390×844 the Versions table fits its box without scrolling sideways")
		u.b.Desktop()
	})

	step("Associated resources: both volumes on the new version", func() {
		u.waitFor(u.page("/keys/"+keyID+"?tab=resources"), 30*time.Second, "both volumes rewrapped to "+v2, func() bool {
			return eval[int](u, fmt.Sprintf(`document.querySelectorAll('#resources tr[data-version-id=%q]').length`, v2)) == 2
		})
		require.False(t, u.exists(`#resources tr[data-behind="true"]`))
		require.Contains(t, u.text("#behind-count"), "0 of 2")
	})

	step("set a 3-month rotation policy (the key page's menu open in a screenshot)", func() {
		u.open(u.page("/keys/" + keyID))
		u.b.Do("opening the overflow menu", chromedp.Click(chromedp.CSS("details.menu > summary")))
		u.shot("key-menu.png")
		u.keyAction(keyID, "policy", func() {
			u.b.Do("choosing 3 months", chromedp.SetValue(chromedp.CSS("#dialog-months"), "3"))
		}, `button[name="enabled"][value="true"]`)
		require.Equal(t, "every 3 months", u.text("#key-policy"))
	})

	sock := filepath.Join(h1.dir, "v00.sock") // h1's one volume
	var attached *bgProc
	var conn *e2eNBD
	step("attach one volume", func() {
		attached = h1.attach(h1.vols[0], sock)
		var err error
		conn, err = e2eDialNBD(sock)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		_, err = conn.read(0, 4096)
		require.NoError(t, err, "a read before the disable")
	})

	step("disable: the key suspended, the attached volume locked out", func() {
		u.keyAction(keyID, "disable", nil, `button[type="submit"]`)
		require.Equal(t, "suspended", u.text("#key-state"))
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := conn.read(0, 4096); err != nil {
				t.Logf("the attached volume stopped reading: %v", err)
				break
			}
			require.True(t, time.Now().Before(deadline), "reads still succeed 30 s after the disable: %s", attached.stderr)
			time.Sleep(50 * time.Millisecond)
		}
		require.Equal(t, 1, attached.exitCode(t, 30*time.Second), "the locked-out attach exits 1: %s", attached.stderr)
	})

	step("Fleet page: the chart, and both hosts' confirmed lockout (h1's volume was attached, h2's not)", func() {
		fleet := u.page("/fleet?key=" + keyID)
		row := fmt.Sprintf(`#fleet-keys tr[data-key-id=%q]`, keyID)
		u.waitFor(fleet, 30*time.Second, "h1 and h2 confirm the lockout", func() bool {
			return u.exists(row+` li.host-confirmed[data-host="h1"]`) && u.exists(row+` li.host-confirmed[data-host="h2"]`)
		})
		require.Contains(t, u.text(row+" .lockout"), "Locked out on 2 of 2 reporting hosts")
		for _, host := range []string{"h1", "h2"} {
			hr := fmt.Sprintf(`#fleet-host-table tr[data-host=%q]`, host)
			require.True(t, u.exists(hr+`[data-confirmed="true"]`), "%s confirmed in the host table: %s", host, u.bodyText())
			require.Equal(t, "suspended", u.text(hr+` td[data-label="State"]`))
			// Volumes counts the host's volumes of the key the lockout applies to: attached
			// or not, each host's one volume.
			require.Equal(t, "1", u.text(hr+" td.volumes"), "%s's lockout acknowledgement counts its one volume of the key", host)
			require.True(t, strings.HasPrefix(u.text(hr+" td.reporter"), "kpapi:"), "%s's acknowledgement names who reported it through the API: %q", host, u.text(hr+" td.reporter"))
		}
		// h1's attach stopped: by itself on the feed, or told by the agent (then counted).
		require.Contains(t, []string{"0", "1"}, u.text(`#fleet-host-table tr[data-host="h1"] td.stopped`))
		require.Equal(t, "0", u.text(`#fleet-host-table tr[data-host="h2"] td.stopped`), "h2 had no attach to stop")
		require.True(t, u.exists(`svg#fleet-chart[role="img"]`), "the chart")
		require.Contains(t, eval[string](u, `document.querySelector("#fleet-chart").getAttribute("aria-label")`), "backup-crk")
		require.Contains(t, eval[string](u, `document.querySelector("#fleet-chart-desc").textContent`), "2 on the latest version "+v2[:8])
		require.True(t, u.exists(fmt.Sprintf(`#fleet-legend li[data-version=%q]`, v2)))
		require.Equal(t, "2", u.text(row+" td.registrations"))
		require.Equal(t, "none", strings.Fields(u.text(row + " td.behind-count"))[0])
		u.shot("fleet.png")
		u.b.Phone()
		u.openPage(fleet)
		require.False(t, eval[bool](u, `document.documentElement.scrollWidth > window.innerWidth + 1`), "at 390×844 the Fleet page does not scroll sideways")
		require.Equal(t, "none", eval[string](u, `getComputedStyle(document.querySelector("#fleet-chart")).display`), "at 390×844 the wide chart is hidden")
		require.True(t, eval[bool](u, `(() => { const r = document.querySelector("#fleet-chart-narrow").getBoundingClientRect(); return r.width > 0 && r.left >= 0 && r.right <= window.innerWidth; })()`), "at 390×844 the narrow chart shows and fits the screen")
		// The axis labels keep a readable size (the wide chart shrunk to the phone made them
		// about 6 px tall).
		smallest := eval[float64](u, `Math.min.apply(null, Array.from(document.querySelectorAll("#fleet-chart-narrow text")).map(function (t) { return t.getBoundingClientRect().height; }))`)
		require.GreaterOrEqual(t, smallest, 10.0, "at 390×844 the chart's smallest label is %.1f px tall", smallest)
		u.b.Desktop()
	})

	step("the server restarts, its clock 31 s on: its sessions lived in memory (a state directory), so the console asks to sign in again; enable (after the 30 s cooldown)", func() {
		before := u.sessionCookie()
		require.NotNil(t, before)
		srv.restart(31 * time.Second)
		u.open(u.page("/keys/" + keyID))
		require.True(t, u.exists("#signin-form"), "after the restart the old session is unknown: the sign-in page, not %s", u.bodyText())
		require.Contains(t, u.text("#signin-message"), "expired or was ended", "the sign-in page says why")
		require.Nil(t, u.sessionCookie(), "the unknown session's cookie is cleared")
		u.signIn()
		after := u.sessionCookie()
		require.True(t, after != nil && after.Value != before.Value, "a new session")
		u.keyAction(keyID, "enable", nil, `button[type="submit"]`)
		require.Equal(t, "active", u.text("#key-state"))
	})

	step("delete is refused, with the registrations listed", func() {
		u.keyAction(keyID, "delete", func() {
			u.b.Do("typing the key's name", chromedp.SendKeys(chromedp.CSS("#dialog-confirm"), "backup-crk"))
		}, `button[type="submit"]`)
		require.True(t, u.exists("dialog#dialog-delete #alert"), "a refusal message inside the reopened dialog: %s", u.bodyText())
		alert := u.text("#alert")
		require.NotContains(t, alert, "{", "no raw JSON")
		require.True(t, u.exists("dialog#dialog-delete #blocking"), "the blocking registrations inside the dialog: %s", u.bodyText())
		blocking := u.text("#blocking")
		require.Equal(t, 2, eval[int](u, `document.querySelectorAll("#blocking li").length`), "both registrations listed: %s", blocking)
		require.Equal(t, "active", u.text("#key-state"))
	})

	step("the Events page lists every step", func() {
		for _, ev := range []struct{ action, outcome string }{
			{"kms.secrets.create", "success"},
			{"kms.secrets.rotate", "success"},
			{"kms.policies.write", "success"},
			{"kms.secrets.disable", "success"},
			{"kms.secrets.enable", "success"},
			{"kms.secrets.delete", "failure"},
		} {
			u.openPage(u.page("/events?key=" + keyID + "&action=" + ev.action + "&outcome=" + ev.outcome))
			sel := fmt.Sprintf(`#events tr[data-action=%q][data-outcome=%q]`, ev.action, ev.outcome)
			require.True(t, u.exists(sel), "the Events page lists %s (%s): %s", ev.action, ev.outcome, u.bodyText())
			require.Contains(t, u.text(sel+` td[data-label="Initiator"]`), "console:", "%s was made in the console", ev.action)
		}
		// Unfiltered but for the key, the newest first: the refused delete is there too.
		u.open(u.page("/events?key=" + keyID))
		require.True(t, u.exists(`#events tr[data-action="kms.secrets.delete"][data-outcome="failure"]`), "the key's events list the refused delete: %s", u.bodyText())
	})

	step("sign out ends the session on the server: its cookie put back is refused", func() {
		u.openPage(u.page("/keys"))
		old := u.sessionCookie()
		require.NotNil(t, old)
		u.loads("signing out", chromedp.Click(chromedp.CSS(`form.signout button[type="submit"]`)))
		require.True(t, u.exists("#signin-form"), "signing out shows the sign-in page: %s", u.bodyText())
		_, err := chromedp.Call(u.b.Context(), network.SetCookie, network.SetCookieParams{
			Name: old.Name, Value: old.Value, URL: srv.url + "/ui/", Path: "/ui/",
			HTTPOnly: &old.HTTPOnly, SameSite: network.CookieSameSiteStrict,
		})
		require.NoError(t, err)
		back := u.sessionCookie()
		require.True(t, back != nil && back.Value == old.Value, "the old session cookie is back in the browser")
		u.open(u.page("/keys"))
		require.True(t, u.exists("#signin-form"), "the ended session's cookie still opens the Keys page: %s", u.bodyText())
		require.False(t, u.exists(fmt.Sprintf(`tr[data-key-id=%q]`, keyID)))
	})
}
