package console

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

var eventRow = regexp.MustCompile(`<tr data-action="([^"]+)" data-outcome="([^"]+)"(?: data-key-id="([^"]+)")?>`)

// rows returns the action, outcome and key of each event row of a page.
func rows(page string) [][]string {
	var out [][]string
	for _, m := range eventRow.FindAllStringSubmatch(page, -1) {
		out = append(out, m[1:])
	}
	return out
}

// TestEventsPage: the audit trail newest first, filtered by key, action, outcome and time
// range, paged by crk's cursor with the filters kept.
func TestEventsPage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	ctx := t.Context()
	svc := f.svc()
	a, err := svc.CreateRootKey(ctx, "alpha")
	require.NoError(t, err)
	f.clock.Advance(time.Hour)
	b, err := svc.CreateRootKey(ctx, "beta")
	require.NoError(t, err)
	_, err = svc.EnableKey(ctx, a.ID) // refused: active
	require.Error(t, err)
	f.clock.Advance(time.Hour)
	for range 60 {
		_, err := svc.Wrap(ctx, b.ID, []byte("dek"), nil)
		require.NoError(t, err)
	}
	base := "/ui/i/" + f.inst + "/events"

	page := f.mustGet(c, base+"?key="+a.ID)
	got := rows(page)
	require.Len(t, got, 2)
	assert.Equal(t, []string{crk.ActionEnable, crk.OutcomeFailure, a.ID}, got[0], "newest first")
	assert.Equal(t, []string{crk.ActionCreate, crk.OutcomeSuccess, a.ID}, got[1])

	tests := []struct {
		name, query string
		want        func(row []string) bool
		count       int
	}{
		{"failures", "?outcome=failure", func(r []string) bool { return r[1] == crk.OutcomeFailure }, 1},
		{"creates", "?action=" + crk.ActionCreate, func(r []string) bool { return r[0] == crk.ActionCreate }, 2},
		{"successes of alpha", "?outcome=success&key=" + a.ID, func(r []string) bool { return r[2] == a.ID && r[1] == crk.OutcomeSuccess }, 1},
		{"first hour", "?from=2026-12-01T09:00&to=2026-12-01T10:00", func(r []string) bool { return r[2] == a.ID }, 1},
		{"second hour", "?from=2026-12-01T10:00&to=2026-12-01T10:59:59", func(r []string) bool { return r[0] != crk.ActionWrap }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := rows(f.mustGet(c, base+tc.query))
			assert.Len(t, got, tc.count)
			for _, r := range got {
				assert.True(t, tc.want(r), "%v", r)
			}
		})
	}

	// Paging: 50 per page, the cursor carries over with the filters.
	page = f.mustGet(c, base+"?key="+b.ID)
	require.Len(t, rows(page), eventsPerPage)
	next := regexp.MustCompile(`<a href="([^"]+)" rel="next">Older events</a>`).FindStringSubmatch(page)
	require.NotNil(t, next)
	u, err := url.Parse(strings.ReplaceAll(next[1], "&amp;", "&"))
	require.NoError(t, err)
	assert.Equal(t, b.ID, u.Query().Get("key"), "the filter is kept")
	page = f.mustGet(c, u.RequestURI())
	got = rows(page)
	assert.Len(t, got, 11, "60 wraps and the create")
	assert.Equal(t, crk.ActionCreate, got[len(got)-1][0])
	assert.Contains(t, page, "Newest events")
	assert.NotContains(t, page, `rel="next"`)

	// Bad filters are named; the page still answers.
	bad := []struct {
		query, msg string
		status     int
	}{
		{"?outcome=maybe", `outcome "maybe"`, 0},
		{"?action=kms.nothing", `Unknown action "kms.nothing"`, 0},
		{"?from=yesterday", `From: "yesterday" is not a date`, 0},
		{"?from=2026-12-02T00:00&to=2026-12-01T00:00", "from must be before to", 0},
		{"?cursor=zz", `Cursor "zz"`, 0},
		{"?action=kms.nothing&outcome=success", `Unknown action "kms.nothing"`, 0},
		{"?key=11111111-1111-4111-8111-111111111111", "no key with this id", http.StatusOK},
	}
	for _, tc := range bad {
		t.Run(tc.query, func(t *testing.T) {
			resp, body := f.get(c, base+tc.query)
			if tc.status == 0 {
				tc.status = http.StatusBadRequest
			}
			assert.Equal(t, tc.status, resp.StatusCode)
			assertReadable(t, alertOf(body))
			assert.Contains(t, alertOf(body), tc.msg)
			assert.Empty(t, rows(body), "a filter that could not be read lists no events")
			if tc.status == http.StatusBadRequest {
				assert.NotContains(t, body, "No event matches", "nor says that none matched")
			}
		})
	}
	// Host acknowledgements are an action the filter offers.
	resp, body := f.get(c, base+"?action="+crk.ActionEventAck)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `<option value="`+crk.ActionEventAck+`" selected>`)

	// A junk value next to good ones: still no events (not the list of the good ones).
	resp, body = f.get(c, base+"?key="+b.ID+"&outcome=maybe")
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Empty(t, rows(body))
}

// TestFlash: a flash message shows only with the session's signature; a forged one, or one
// signed for another session, is ignored, and any text is escaped.
func TestFlash(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	p := f.keysPath()
	resp, body := f.get(c, p+"?flash="+url.QueryEscape("<b>Key rotated</b>")+"&fs=forged")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotContains(t, body, `id="flash"`)
	assert.NotContains(t, body, "Key rotated")

	other := &session{id: "another-session"}
	signed := flashURL(p, other, "Key rotated: fake")
	_, body = f.get(c, signed)
	assert.NotContains(t, body, "Key rotated: fake")

	// The session's own signature: shown, as text.
	ck := c.Jar.Cookies(mustURL(t, f.srv.URL+"/ui/"))
	require.Len(t, ck, 1)
	own := flashURL(p, &session{id: ck[0].Value}, "<b>done</b>")
	_, body = f.get(c, own)
	assert.Contains(t, body, `<p class="flash" role="status" id="flash">&lt;b&gt;done&lt;/b&gt;</p>`)
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

// TestNoSecrets: no page or log line carries an API key or a session id, across a session
// that signs in, acts, fails and signs out.
func TestNoSecrets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.client()
	f.signIn(c, "crkvol-wrong-key-for-the-log")
	f.signIn(c, f.apiKey)
	sid := c.Jar.Cookies(mustURL(t, f.srv.URL+"/ui/"))[0].Value
	k, err := f.svc().CreateRootKey(t.Context(), "secrets")
	require.NoError(t, err)
	for _, p := range []string{f.keysPath(), f.keysPath() + "/" + k.ID + "?dialog=delete", "/ui/i/" + f.inst + "/events", "/ui/i/" + f.inst + "/fleet", "/ui/nothing"} {
		f.get(c, p)
	}
	f.action(c, k.ID, "enable", nil) // refused
	f.post(c, f.keysPath(), url.Values{"name": {"x"}})
	f.post(c, "/ui/signout", url.Values{"csrf": {f.csrf(c, f.keysPath())}})
	seen, logs := f.seen.String(), f.logs.String()
	for _, secret := range []string{f.apiKey, sid, "crkvol-wrong-key-for-the-log"} {
		assert.NotContains(t, seen, secret)
		assert.NotContains(t, logs, secret)
	}
	assert.Contains(t, logs, "sign-in refused")
}

// TestEventActionsComplete: the events page offers every action crk records (its Action*
// constants, read from crk's source), so a new action cannot be left out of the filter.
func TestEventActionsComplete(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, "..", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	require.NoError(t, err)
	offered := map[string]bool{}
	for _, a := range eventActions() {
		offered[a] = true
	}
	n := 0
	ast.Inspect(pkgs["crk"], func(node ast.Node) bool {
		vs, ok := node.(*ast.ValueSpec)
		if !ok {
			return true
		}
		for i, name := range vs.Names {
			if !strings.HasPrefix(name.Name, "Action") || i >= len(vs.Values) {
				continue
			}
			lit, ok := vs.Values[i].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				continue
			}
			v, err := strconv.Unquote(lit.Value)
			require.NoError(t, err)
			n++
			assert.True(t, offered[v], "crk.%s (%s) is not offered by the events filter", name.Name, v)
		}
		return true
	})
	assert.Equal(t, len(offered), n, "the filter offers exactly crk's actions")
}

// TestEventsPageCorrelationID: an event made under a correlation id (an API request's
// Correlation-Id header) shows it in its row, so a user can match a client's request to its
// audit record; an event made without one shows a dash.
func TestEventsPageCorrelationID(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	c := f.browser()
	svc := f.svc()
	k, err := svc.CreateRootKey(t.Context(), "alpha")
	require.NoError(t, err)
	f.clock.Advance(time.Minute)
	ctx, err := crk.WithCorrelationID(t.Context(), "req-7f3a:batch_2")
	require.NoError(t, err)
	_, err = svc.Wrap(ctx, k.ID, []byte("dek"), nil)
	require.NoError(t, err)

	page := f.mustGet(c, "/ui/i/"+f.inst+"/events?key="+k.ID)
	require.Len(t, rows(page), 2)
	cells := regexp.MustCompile(`<td data-label="Correlation id">(.*?)</td>`).FindAllStringSubmatch(page, -1)
	require.Len(t, cells, 2)
	assert.Equal(t, "<code>req-7f3a:batch_2</code>", cells[0][1], "the wrap, newest first")
	assert.Equal(t, "—", cells[1][1], "the create had no correlation id")
	assert.Contains(t, page, `<th scope="col">Correlation id</th>`)
}
