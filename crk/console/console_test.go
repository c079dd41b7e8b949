package console

import (
	"bytes"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/tooltest"
)

// t0 is the service clock's start.
var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// fixture is a console over a fresh state directory: the default instance with an API key,
// and a second instance "team-b" with a key of its own.
type fixture struct {
	t       *testing.T
	tenants *kpapi.Tenants
	clock   *crk.ManualClock
	srv     *httptest.Server
	apiKey  string // of the default instance
	inst    string // the default instance
	other   string // team-b
	otherKe string // team-b's API key
	logs    *tooltest.SyncBuffer
	// seen collects every response body, for the no-secrets check.
	seen *bytes.Buffer
}

func newFixture(t *testing.T, tlsServer bool, opts ...func(*Options)) *fixture {
	t.Helper()
	clock := crk.NewManualClock(t0)
	tenants, err := kpapi.OpenTenants(t.TempDir(), crk.Options{MasterKey: bytes.Repeat([]byte{7}, 32), Clock: clock})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	inst, _ := tenants.Default()
	key, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	other, err := tenants.CreateInstance("team-b")
	require.NoError(t, err)
	otherKey, err := tenants.CreateAPIKey(other)
	require.NoError(t, err)
	logs := &tooltest.SyncBuffer{}
	o := Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Now: clock.Now}
	for _, opt := range opts {
		opt(&o)
	}
	h, err := New(tenants, o)
	require.NoError(t, err)
	var srv *httptest.Server
	if tlsServer {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return &fixture{t: t, tenants: tenants, clock: clock, srv: srv, apiKey: key, inst: inst, other: other, otherKe: otherKey, logs: logs, seen: &bytes.Buffer{}}
}

// client is a browser: a cookie jar, no automatic redirects.
func (f *fixture) client() *http.Client {
	jar, err := cookiejar.New(nil)
	require.NoError(f.t, err)
	c := *f.srv.Client() // a copy: the server's client is shared
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

var (
	hiddenCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	flashText  = regexp.MustCompile(`(?s)<p class="flash" role="status" id="flash">(.*?)</p>`)
	alertText  = regexp.MustCompile(`(?s)<p class="alert" role="alert" id="(?:alert|error-message|signin-message)">(.*?)</p>`)
)

func (f *fixture) do(c *http.Client, req *http.Request) (*http.Response, string) {
	f.t.Helper()
	resp, err := c.Do(req)
	require.NoError(f.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(f.t, err)
	f.seen.Write(b)
	return resp, string(b)
}

func (f *fixture) get(c *http.Client, path string) (*http.Response, string) {
	f.t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	require.NoError(f.t, err)
	return f.do(c, req)
}

func (f *fixture) post(c *http.Client, path string, form url.Values) (*http.Response, string) {
	f.t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
	require.NoError(f.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return f.do(c, req)
}

// follow GETs the Location of a redirect.
func (f *fixture) follow(c *http.Client, resp *http.Response) (*http.Response, string) {
	f.t.Helper()
	require.Equal(f.t, http.StatusSeeOther, resp.StatusCode, "a redirect")
	loc, err := resp.Location()
	require.NoError(f.t, err)
	return f.get(c, loc.RequestURI())
}

// signIn signs c in with apiKey and returns the response of the sign-in POST.
func (f *fixture) signIn(c *http.Client, apiKey string) (*http.Response, string) {
	f.t.Helper()
	_, body := f.get(c, "/ui/signin")
	m := hiddenCSRF.FindStringSubmatch(body)
	require.NotNil(f.t, m, "sign-in page without a csrf field")
	return f.post(c, "/ui/signin", url.Values{"csrf": {m[1]}, "apikey": {apiKey}})
}

// browser returns a client signed in with the default instance's API key.
func (f *fixture) browser() *http.Client {
	f.t.Helper()
	c := f.client()
	resp, body := f.signIn(c, f.apiKey)
	require.Equal(f.t, http.StatusSeeOther, resp.StatusCode, body)
	return c
}

// csrf returns the CSRF token of the page at path.
func (f *fixture) csrf(c *http.Client, path string) string {
	f.t.Helper()
	_, body := f.get(c, path)
	m := hiddenCSRF.FindStringSubmatch(body)
	require.NotNil(f.t, m, "no csrf field in %s", path)
	return m[1]
}

func (f *fixture) keysPath() string { return "/ui/i/" + f.inst + "/keys" }

func (f *fixture) svc() *crk.Service {
	f.t.Helper()
	s, err := f.tenants.Service(f.inst)
	require.NoError(f.t, err)
	return s
}

// action posts a key action with the page's CSRF token and returns the response.
func (f *fixture) action(c *http.Client, id, action string, form url.Values) (*http.Response, string) {
	f.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	form.Set("csrf", f.csrf(c, f.keysPath()))
	return f.post(c, f.keysPath()+"/"+id+"/"+action, form)
}

// flashOf follows a successful action's redirect and returns the page's flash message.
func (f *fixture) flashOf(c *http.Client, resp *http.Response, body string) (string, string) {
	f.t.Helper()
	require.Equal(f.t, http.StatusSeeOther, resp.StatusCode, "action refused: %s", alertOf(body))
	_, page := f.follow(c, resp)
	m := flashText.FindStringSubmatch(page)
	require.NotNil(f.t, m, "no flash message")
	return html.UnescapeString(m[1]), page
}

func alertOf(body string) string {
	m := alertText.FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

// dialogOf returns the open dialog of a page, "" when none.
func dialogOf(body string) string {
	i := strings.Index(body, "<dialog ")
	j := strings.Index(body, "</dialog>")
	if i < 0 || j < i {
		return ""
	}
	return body[i:j]
}

// cookieOf returns the Set-Cookie of name in resp.
func cookieOf(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// TestSignIn: a good API key gets a session cookie with the flags; a bad one, the static
// token, a bearer token, an empty key and a form without its double-submit token do not.
func TestSignIn(t *testing.T) {
	t.Parallel()
	for _, tlsServer := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsServer), func(t *testing.T) {
			f := newFixture(t, tlsServer)
			f.tenants.SetStaticToken("static-test-token")
			bearer, _, err := f.tenants.Exchange(f.apiKey)
			require.NoError(t, err)

			c := f.client()
			resp, _ := f.signIn(c, f.apiKey)
			require.Equal(t, http.StatusSeeOther, resp.StatusCode)
			name, path := sessionCookie, "/ui/"
			if tlsServer {
				name, path = "__Host-crkvol_session", "/"
			}
			ck := cookieOf(resp, name)
			require.NotNil(t, ck, "session cookie %s", name)
			assert.True(t, ck.HttpOnly, "HttpOnly")
			assert.Equal(t, http.SameSiteStrictMode, ck.SameSite)
			assert.Equal(t, path, ck.Path)
			assert.Empty(t, ck.Domain)
			assert.Equal(t, tlsServer, ck.Secure, "Secure exactly under TLS")
			assert.Zero(t, ck.MaxAge, "a browser-session cookie: the server decides when the session ends")
			assert.True(t, ck.Expires.IsZero())
			if tlsServer {
				assert.Contains(t, resp.Header.Get("Strict-Transport-Security"), "max-age=")
			} else {
				assert.Empty(t, resp.Header.Get("Strict-Transport-Security"))
			}
			resp, body := f.follow(c, resp) // /ui/ → the default instance's keys
			require.Equal(t, http.StatusSeeOther, resp.StatusCode, body)
			assert.Equal(t, f.keysPath(), resp.Header.Get("Location"))

			tests := []struct {
				name, key string
				status    int
				msg       string
			}{
				{"unknown key", "crkvol-not-a-key", http.StatusUnauthorized, "unknown or revoked"},
				{"static token", "static-test-token", http.StatusUnauthorized, "unknown or revoked"},
				{"bearer token", bearer, http.StatusUnauthorized, "unknown or revoked"},
				{"empty", "", http.StatusBadRequest, "Enter an API key"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					c := f.client()
					resp, body := f.signIn(c, tc.key)
					assert.Equal(t, tc.status, resp.StatusCode)
					assert.Nil(t, cookieOf(resp, sessionCookie), "no session")
					assert.Nil(t, cookieOf(resp, "__Host-"+sessionCookie), "no session")
					assert.Contains(t, alertOf(body), tc.msg)
					resp, _ = f.get(c, f.keysPath())
					assert.Equal(t, "/ui/signin", resp.Header.Get("Location"))
				})
			}
			assert.Contains(t, f.logs.String(), "sign-in refused")
			assert.NotContains(t, f.logs.String(), "crkvol-not-a-key")

			t.Run("no double-submit token", func(t *testing.T) {
				c := f.client()
				f.get(c, "/ui/signin")
				for _, tok := range []string{"", "forged"} {
					resp, body := f.post(c, "/ui/signin", url.Values{"csrf": {tok}, "apikey": {f.apiKey}})
					assert.Equal(t, http.StatusForbidden, resp.StatusCode)
					assert.Nil(t, cookieOf(resp, sessionCookie))
					assert.Contains(t, alertOf(body), "CSRF")
				}
			})
		})
	}
}

// TestSecurityHeaders: every response — pages, redirects, static files, errors — carries
// the CSP and the other headers; pages load no inline script or style.
func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	k, err := f.svc().CreateRootKey(t.Context(), "headers")
	require.NoError(t, err)
	paths := []string{
		"/ui/", "/ui/signin", "/ui/static/console.css", "/ui/static/console.js", "/ui/nothing",
		f.keysPath(), f.keysPath() + "/" + k.ID, f.keysPath() + "/" + k.ID + "?dialog=rotate",
		f.keysPath() + "/" + k.ID + "?tab=resources", "/ui/i/" + f.inst + "/events", "/ui/i/" + f.inst + "/fleet",
	}
	inline := regexp.MustCompile(`<script(?:\s[^>]*)?>[^<]|<script>|\sstyle=|\son[a-z]+=`)
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			resp, body := f.get(c, p)
			h := resp.Header
			assert.Equal(t, contentSecurityPolicy, h.Get("Content-Security-Policy"))
			assert.Equal(t, "nosniff", h.Get("X-Content-Type-Options"))
			assert.Equal(t, "no-referrer", h.Get("Referrer-Policy"))
			assert.Equal(t, "DENY", h.Get("X-Frame-Options"))
			if !strings.HasPrefix(p, "/ui/static/") {
				assert.Equal(t, "no-store", h.Get("Cache-Control"))
			}
			if resp.StatusCode != http.StatusSeeOther && strings.Contains(h.Get("Content-Type"), "text/html") {
				assert.NotRegexp(t, inline, body, "no inline script, style or handler")
				assert.Contains(t, body, `<html lang="en">`)
				assert.Contains(t, body, `<title>`)
				assert.Contains(t, body, `href="#main"`, "skip link")
			}
		})
	}
	resp, _ := f.get(c, "/ui/static/")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "no directory listing")
	resp, _ = f.get(c, "/ui/signin")
	assert.Equal(t, "/ui/", resp.Header.Get("Location"), "signed in already")
	assert.Contains(t, contentSecurityPolicy, "script-src 'self'")
	assert.Contains(t, contentSecurityPolicy, "connect-src 'self'", "console.js fetches pages for live refresh")
	assert.NotContains(t, contentSecurityPolicy, "unsafe-inline")
}

// TestCSRF: a form post without the CSRF token, or with another session's, is refused with
// 403 and changes nothing.
func TestCSRF(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	other := f.browser()
	otherToken := f.csrf(other, f.keysPath())
	k, err := f.svc().CreateRootKey(t.Context(), "protected")
	require.NoError(t, err)
	tests := []struct {
		name, path string
		form       url.Values
	}{
		{"create without token", f.keysPath(), url.Values{"name": {"sneaky"}, "type": {"root"}}},
		{"create with another session's token", f.keysPath(), url.Values{"name": {"sneaky"}, "type": {"root"}, "csrf": {otherToken}}},
		{"disable without token", f.keysPath() + "/" + k.ID + "/disable", url.Values{}},
		{"disable with a forged token", f.keysPath() + "/" + k.ID + "/disable", url.Values{"csrf": {"AAAA"}}},
		{"delete with another session's token", f.keysPath() + "/" + k.ID + "/delete", url.Values{"confirm": {"protected"}, "csrf": {otherToken}}},
		{"sign out without token", "/ui/signout", url.Values{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.post(c, tc.path, tc.form)
			assert.Equal(t, http.StatusForbidden, resp.StatusCode)
			assert.Contains(t, alertOf(body), "CSRF")
		})
	}
	t.Run("oversized form", func(t *testing.T) {
		form := url.Values{"name": {"big"}, "type": {"root"}, "csrf": {f.csrf(c, f.keysPath())}, "description": {strings.Repeat("x", maxForm)}}
		resp, body := f.post(c, f.keysPath(), form)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.Contains(t, alertOf(body), "could not be read")
	})
	ks, err := f.svc().ListKeys(t.Context(), crk.ListOptions{})
	require.NoError(t, err)
	require.Len(t, ks, 1, "no key created")
	assert.Equal(t, crk.StateActive, ks[0].State, "not disabled, not deleted")
	resp, _ := f.get(c, f.keysPath())
	assert.Equal(t, http.StatusOK, resp.StatusCode, "still signed in")
}

// TestSignOut: signing out ends the session in the store: the old cookie replayed is sent
// to the sign-in page; an expired session too, with a message.
func TestSignOut(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	u, _ := url.Parse(f.srv.URL + "/ui/")
	old := c.Jar.Cookies(u)
	require.Len(t, old, 1)
	resp, _ := f.post(c, "/ui/signout", url.Values{"csrf": {f.csrf(c, f.keysPath())}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	ck := cookieOf(resp, sessionCookie)
	require.NotNil(t, ck)
	assert.Less(t, ck.MaxAge, 0, "cookie cleared")
	n, err := f.tenants.SessionCount()
	require.NoError(t, err)
	assert.Zero(t, n, "the session is gone from the store")

	replay := f.client()
	replay.Jar.SetCookies(u, old)
	resp, _ = f.get(replay, f.keysPath())
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/ui/signin?ended=1", resp.Header.Get("Location"))
	_, body := f.follow(replay, resp)
	assert.Contains(t, alertOf(body), "expired or was ended")

	t.Run("expired", func(t *testing.T) {
		f.tenants.SetSessionLifetime(time.Millisecond)
		defer f.tenants.SetSessionLifetime(0)
		c := f.browser()
		time.Sleep(10 * time.Millisecond)
		resp, _ := f.get(c, f.keysPath())
		assert.Equal(t, "/ui/signin?ended=1", resp.Header.Get("Location"))
	})
}

// TestCrossInstance: a session sees only its API key's instances; another instance's pages
// answer 404 without a word of their keys, and the switcher offers only its own.
func TestCrossInstance(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	otherSvc, err := f.tenants.Service(f.other)
	require.NoError(t, err)
	secret, err := otherSvc.CreateRootKey(t.Context(), "team-b-secret-name")
	require.NoError(t, err)
	c := f.browser()
	for _, p := range []string{
		"/ui/i/" + f.other + "/keys", "/ui/i/" + f.other + "/keys/" + secret.ID, "/ui/i/" + f.other + "/events",
		"/ui/i/" + f.other + "/fleet", f.keysPath() + "/" + secret.ID, "/ui/?instance=" + f.other,
	} {
		t.Run(p, func(t *testing.T) {
			resp, body := f.get(c, p)
			assert.Equal(t, http.StatusNotFound, resp.StatusCode)
			assert.NotContains(t, body, "team-b-secret-name")
			assert.NotContains(t, body, `value="`+f.other+`"`, "the switcher does not offer it")
		})
	}
	resp, body := f.post(c, "/ui/i/"+f.other+"/keys/"+secret.ID+"/disable", url.Values{"csrf": {f.csrf(c, f.keysPath())}})
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Contains(t, alertOf(body), "no such instance")
	k, err := otherSvc.GetKeyMetadata(t.Context(), secret.ID)
	require.NoError(t, err)
	assert.Equal(t, crk.StateActive, k.State)

	t.Run("a key of two instances switches", func(t *testing.T) {
		both, err := f.tenants.CreateAPIKey(f.inst, f.other)
		require.NoError(t, err)
		c := f.client()
		f.signIn(c, both)
		_, body := f.get(c, f.keysPath())
		assert.Contains(t, body, `<option value="`+f.other+`">team-b</option>`)
		resp, _ := f.get(c, "/ui/?instance="+f.other)
		assert.Equal(t, "/ui/i/"+f.other+"/keys", resp.Header.Get("Location"))
		_, body = f.get(c, "/ui/i/"+f.other+"/keys")
		assert.Contains(t, body, "team-b-secret-name")
	})
}

// TestSecureCookies: behind a TLS-terminating proxy (Options.SecureCookies, plain HTTP to the
// server) the cookies are Secure, __Host- prefixed with Path=/, and pages carry HSTS; a
// planted unprefixed cookie is not read, and X-Forwarded-Proto changes nothing without the
// option.
func TestSecureCookies(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false, func(o *Options) { o.SecureCookies = true })
	c := f.client() // its jar keeps Secure cookies from plain HTTP, so each is sent by hand
	c.Jar = nil
	resp, body := f.get(c, "/ui/signin")
	tok := cookieOf(resp, "__Host-crkvol_signin")
	require.NotNil(t, tok, "the double-submit cookie is prefixed too")
	assert.True(t, tok.Secure)
	assert.Equal(t, "/", tok.Path)
	assert.Contains(t, resp.Header.Get("Strict-Transport-Security"), "max-age=")
	m := hiddenCSRF.FindStringSubmatch(body)
	require.NotNil(t, m)
	signin := func(cookieName string) *http.Response {
		req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/ui/signin", strings.NewReader(url.Values{"csrf": {m[1]}, "apikey": {f.apiKey}}.Encode()))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: cookieName, Value: tok.Value})
		resp, _ := f.do(c, req)
		return resp
	}
	assert.Equal(t, http.StatusForbidden, signin("crkvol_signin").StatusCode, "an unprefixed cookie is not the console's")
	resp = signin("__Host-crkvol_signin")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	ck := cookieOf(resp, "__Host-crkvol_session")
	require.NotNil(t, ck)
	assert.True(t, ck.Secure)
	assert.Equal(t, "/", ck.Path)
	assert.Zero(t, ck.MaxAge)
	get := func(cookieName string) *http.Response {
		req, err := http.NewRequest(http.MethodGet, f.srv.URL+f.keysPath(), nil)
		require.NoError(t, err)
		req.AddCookie(&http.Cookie{Name: cookieName, Value: ck.Value})
		resp, _ := f.do(c, req)
		return resp
	}
	assert.Equal(t, http.StatusOK, get("__Host-crkvol_session").StatusCode)
	assert.Equal(t, "/ui/signin", get("crkvol_session").Header.Get("Location"), "a planted unprefixed cookie is not read")

	// Without the option a forwarded-proto header is not trusted.
	plain := newFixture(t, false)
	req, err := http.NewRequest(http.MethodGet, plain.srv.URL+"/ui/signin", nil)
	require.NoError(t, err)
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, _ = plain.do(plain.client(), req)
	require.NotNil(t, cookieOf(resp, "crkvol_signin"))
	assert.False(t, cookieOf(resp, "crkvol_signin").Secure)
	assert.Empty(t, resp.Header.Get("Strict-Transport-Security"))
}

// TestExpiredSession: the session cookie outlives the session (it has no Max-Age), so the
// user who comes back is told the session expired.
func TestExpiredSession(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	f.tenants.SetSessionLifetime(time.Millisecond) // sessions expire by the wall clock
	c := f.client()
	resp, _ := f.signIn(c, f.apiKey)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	time.Sleep(5 * time.Millisecond)
	resp, _ = f.get(c, f.keysPath())
	require.Equal(t, "/ui/signin?ended=1", resp.Header.Get("Location"))
	_, body := f.follow(c, resp)
	assert.Contains(t, alertOf(body), "Your session has expired or was ended")
}

// TestSignInLog: sign-in and sign-out are logged at Info with the API key's id and the
// remote address, never the key or the session id; refused sign-ins are logged at most once a
// second, the rest counted in one line.
func TestSignInLog(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.client()
	resp, _ := f.signIn(c, f.apiKey)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	session := cookieOf(resp, sessionCookie).Value
	resp, _ = f.post(c, "/ui/signout", url.Values{"csrf": {csrfToken(session)}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	logs := f.logs.String()
	id := kpapi.APIKeyID(f.apiKey)
	assert.Regexp(t, `level=INFO msg="console: signed in" apikey=`+id+` remote=127\.0\.0\.1:\d+`, logs)
	assert.Regexp(t, `level=INFO msg="console: signed out" apikey=`+id+` remote=127\.0\.0\.1:\d+`, logs)
	assert.NotContains(t, logs, f.apiKey)
	assert.NotContains(t, logs, session)

	for range 5 {
		resp, _ := f.signIn(f.client(), "crkvol-guess")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	assert.Equal(t, 1, strings.Count(f.logs.String(), "sign-in refused"), "one line within the second")
	f.clock.Advance(2 * time.Second)
	f.signIn(f.client(), "crkvol-guess")
	logs = f.logs.String()
	assert.Contains(t, logs, `msg="console: 4 more sign-in failures since 2026-12-01T`)
	assert.Equal(t, 2, strings.Count(logs, "sign-in refused"))
	assert.NotContains(t, logs, "crkvol-guess")
}

// TestMethodsAndNotFound: a console path asked with a method it does not take answers 405
// with Allow (the console's error page), an unknown path or static file the console's 404
// page.
func TestMethodsAndNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	k, err := f.svc().CreateRootKey(t.Context(), "methods")
	require.NoError(t, err)
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodPost, "/ui/", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodGet, "/ui/signout", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPut, "/ui/signin", http.StatusMethodNotAllowed, "GET, HEAD, POST"},
		{http.MethodDelete, f.keysPath(), http.StatusMethodNotAllowed, "GET, HEAD, POST"},
		{http.MethodGet, f.keysPath() + "/" + k.ID + "/rotate", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPost, "/ui/i/" + f.inst + "/events", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodPost, "/ui/static/console.css", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodGet, "/ui/nothing", http.StatusNotFound, ""},
		{http.MethodDelete, "/ui/nothing", http.StatusNotFound, ""},
		{http.MethodGet, "/ui/static/nothing.css", http.StatusNotFound, ""},
		{http.MethodGet, "/ui/static/", http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, f.srv.URL+tc.path, nil)
			require.NoError(t, err)
			resp, body := f.do(c, req)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Equal(t, tc.allow, resp.Header.Get("Allow"))
			assert.Contains(t, resp.Header.Get("Content-Type"), "text/html")
			assert.Contains(t, body, `<html lang="en">`, "the console's own page")
			assertReadable(t, alertOf(body))
			assert.Equal(t, contentSecurityPolicy, resp.Header.Get("Content-Security-Policy"))
		})
	}
}

// TestPagePastLast: a Keys page number past the last page says so and links to the last.
func TestPagePastLast(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	_, err := f.svc().CreateRootKey(t.Context(), "only")
	require.NoError(t, err)
	resp, body := f.get(c, f.keysPath()+"?page=99")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "Page 99 is past the last page (1).", alertOf(body))
	assert.Contains(t, body, `1 key matches; none on this page.`)
	assert.Contains(t, body, `<a href="/ui/i/`+f.inst+`/keys" rel="prev">`)
}

// TestInstanceSwitcher: an API key of one instance gets the instance's name, not a switcher;
// an API key of two gets the switcher.
func TestInstanceSwitcher(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	_, body := f.get(f.browser(), f.keysPath())
	assert.NotContains(t, body, `id="instance-switch"`)
	assert.Contains(t, body, `<p class="switcher" id="instance-name">Instance: <strong>default</strong></p>`)
	both, err := f.tenants.CreateAPIKey(f.inst, f.other)
	require.NoError(t, err)
	c := f.client()
	resp, _ := f.signIn(c, both)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	_, body = f.get(c, f.keysPath())
	assert.Contains(t, body, `id="instance-switch"`)
	assert.Contains(t, body, `>team-b</option>`)
	assert.NotContains(t, body, `id="instance-name"`)
}
