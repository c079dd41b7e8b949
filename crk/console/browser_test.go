package console

import (
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/chrometest"
	"crkvol/internal/tooltest"
)

// TestBrowserConsoleScript drives the console in chromium (long test): live refresh runs
// under the page's CSP and swaps a [data-refresh] element; a refusal inside a dialog takes
// the focus; the Create key panel leaves the heading at the top and its radios at their size;
// the Versions table stacks on a phone. The browser fails the test on any CSP violation or
// script error.
func TestBrowserConsoleScript(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("browser test: set CRKVOL_LONG_TESTS=1")
	}
	f := newFixture(t, false)
	ctx := t.Context()
	k, err := f.svc().CreateRootKey(ctx, "first-root")
	require.NoError(t, err)
	b := chrometest.Start(t, 0)
	eval := func(expr string, opts ...chromedp.EvaluateOption) any {
		t.Helper()
		v, err := chromedp.Run(b.Context(), chromedp.Evaluate[any](expr, opts...))
		require.NoError(t, err, "evaluating %s", expr)
		return v
	}
	open := func(path string) {
		t.Helper()
		b.Do("opening "+path, chromedp.Navigate(f.srv.URL+path), chromedp.WaitReady(chromedp.CSS("main")))
	}
	open("/ui/signin")
	b.Do("signing in",
		chromedp.SendKeys(chromedp.CSS("#apikey"), f.apiKey),
		chromedp.Click(chromedp.CSS(`#signin-form button[type="submit"]`)),
		chromedp.WaitReady(chromedp.CSS("#keys-table")))

	// Live refresh: a key created elsewhere appears after one refresh, without a reload.
	assert.Equal(t, "function", eval(`typeof window.crkvolRefresh`))
	eval(`window.crkvolMarker = true`)
	second, err := f.svc().CreateRootKey(ctx, "second-root")
	require.NoError(t, err)
	assert.Equal(t, false, eval(`document.querySelector('#keys-table tr[data-key-id="`+second.ID+`"]') !== null`))
	assert.Equal(t, true, eval(`window.crkvolRefresh()`, chromedp.EvalAwaitPromise))
	assert.Equal(t, true, eval(`document.querySelector('#keys-table tr[data-key-id="`+second.ID+`"]') !== null`))
	assert.Equal(t, true, eval(`window.crkvolMarker === true`), "the page was not reloaded")
	b.CheckProblems("live refresh")

	// The Create key panel open at 1280×800: the heading stays at the top, radios keep
	// their size.
	b.Do("opening the create form", chromedp.Click(chromedp.CSS("#create-key > summary")))
	top := eval(`document.querySelector(".heading-row h1").getBoundingClientRect().top`).(float64)
	summaryTop := eval(`document.querySelector("#create-key > summary").getBoundingClientRect().top`).(float64)
	assert.Less(t, top-summaryTop, 20.0, "the heading sits beside the button, not down the open panel")
	radio := eval(`document.querySelector('#create-key input[type="radio"]').getBoundingClientRect().width`).(float64)
	assert.Less(t, radio, 40.0, "a radio is not stretched to the panel's width")

	// A refusal inside a dialog: the dialog stays open, shows it, and it has the focus.
	_, err = f.svc().RotateKey(ctx, k.ID, nil)
	require.NoError(t, err)
	open(f.keysPath() + "/" + k.ID + "?dialog=rotate")
	b.Do("rotating again within the hour",
		chromedp.Click(chromedp.CSS(`dialog#dialog-rotate button[type="submit"]`)),
		chromedp.WaitReady(chromedp.CSS("dialog#dialog-rotate #alert")))
	assert.Equal(t, "alert", eval(`document.activeElement.id`))
	assert.Equal(t, true, eval(`document.activeElement.closest("dialog[open]") !== null`))

	// The Versions table stacks on a phone: nothing is cut off at the right.
	for range 2 {
		f.clock.Advance(2 * time.Hour)
		_, err = f.svc().RotateKey(ctx, k.ID, nil)
		require.NoError(t, err)
	}
	b.Phone()
	open(f.keysPath() + "/" + k.ID + "?tab=versions")
	assert.Equal(t, "grid", eval(`getComputedStyle(document.querySelector("table.versions td")).display`))
	right := eval(`Math.max(...[...document.querySelectorAll('table.versions td[data-label="Status"]')].map(e => e.getBoundingClientRect().right))`).(float64)
	assert.LessOrEqual(t, right, float64(chrometest.PhoneWidth), "the Status column fits the screen")
}
