package console

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/tooltest"
)

// fixture is a console over a fresh state directory with one API key.
type fixture struct {
	t       *testing.T
	tenants *kpapi.Tenants
	h       *Handler
	srv     *httptest.Server
	apiKey  string
	inst    string
	logs    *tooltest.SyncBuffer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	tenants, err := kpapi.OpenTenants(t.TempDir(), crk.Options{MasterKey: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tenants.Close() })
	inst, _ := tenants.Default()
	key, err := tenants.CreateAPIKey(inst)
	if err != nil {
		t.Fatal(err)
	}
	logs := &tooltest.SyncBuffer{}
	h, err := New(tenants, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{t: t, tenants: tenants, h: h, srv: srv, apiKey: key, inst: inst, logs: logs}
}

// client is a browser: a cookie jar, no automatic redirects.
func (f *fixture) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var hiddenCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// get fetches path and returns the response and body.
func (f *fixture) get(c *http.Client, path string) (*http.Response, string) {
	f.t.Helper()
	resp, err := c.Get(f.srv.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// post posts a form.
func (f *fixture) post(c *http.Client, path string, form url.Values) (*http.Response, string) {
	f.t.Helper()
	resp, err := c.PostForm(f.srv.URL+path, form)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// signIn signs c in with apiKey and returns the response of the sign-in POST.
func (f *fixture) signIn(c *http.Client, apiKey string) (*http.Response, string) {
	f.t.Helper()
	_, body := f.get(c, "/ui/signin")
	m := hiddenCSRF.FindStringSubmatch(body)
	if m == nil {
		f.t.Fatalf("sign-in page without a csrf field:\n%s", body)
	}
	return f.post(c, "/ui/signin", url.Values{"csrf": {m[1]}, "apikey": {apiKey}})
}

func TestSmoke(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	resp, _ := f.signIn(c, f.apiKey)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %s", resp.Status)
	}
	resp, body := f.get(c, "/ui/i/"+f.inst+"/keys")
	if resp.StatusCode != 200 || !strings.Contains(body, "Create key") {
		t.Fatalf("keys page: %s\n%s", resp.Status, body)
	}
}
