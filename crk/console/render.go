package console

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"crkvol/crk"
)

// page is what every page template gets: the layout's data (title, navigation, instance
// switcher, CSRF token, flash and alert messages) and the page's own Data.
type page struct {
	// Title is the page's title, before " · crkvol console".
	Title string
	// Nav is the active navigation entry: "keys", "events" or "fleet" ("" when signed out).
	Nav string
	// Instance is the instance shown, and Instances those the session may switch to.
	Instance  instanceChoice
	Instances []instanceChoice
	// CSRF is the token every form of the page posts in its csrf field.
	CSRF string
	// Flash is a signed message of the action just done; Alert a refusal or error.
	Flash, Alert string
	// InDialog is true when a dialog is open: the dialog shows Alert, where the user is, not
	// the page behind it.
	InDialog bool
	// Data is the page's own data.
	Data any
	// Now is when the page was made (Options.Now).
	Now time.Time

	sess  *session
	svc   *crk.Service
	ctx   context.Context
	keyID string // the key of a key page
}

// Service is the crk service of the page's instance.
func (p *page) Service() *crk.Service { return p.svc }

// Context is the request's context, with the session's API key as the initiator of the
// events the page's calls record.
func (p *page) Context() context.Context { return p.ctx }

// Base is the path of the page's instance: /ui/i/{instance}.
func (p *page) Base() string { return Prefix + "i/" + url.PathEscape(p.Instance.ID) }

// instanceChoice is one entry of the instance switcher.
type instanceChoice struct {
	ID, Name string
	Current  bool
}

// newPage returns the page of a request by session s (nil when signed out), with the flash
// message of the query when its signature is the session's.
func (h *Handler) newPage(r *http.Request, s *session, nav string) *page {
	p := &page{Nav: nav, sess: s, ctx: r.Context(), Now: h.now()}
	if s == nil {
		return p
	}
	p.CSRF = csrfToken(s.id)
	q := r.URL.Query()
	if msg := q.Get("flash"); msg != "" && len(msg) <= 300 && validMAC(q.Get("fs"), s.id, "flash", msg) {
		p.Flash = msg
	}
	names := map[string]string{}
	if ins, err := h.t.ListInstances(); err == nil {
		for _, in := range ins {
			names[in.ID] = in.Name
		}
	}
	cur := r.PathValue("instance")
	for _, id := range s.instances {
		c := instanceChoice{ID: id, Name: names[id], Current: id == cur}
		if c.Name == "" {
			c.Name = id
		}
		if c.Current {
			p.Instance = c
		}
		p.Instances = append(p.Instances, c)
	}
	return p
}

// funcs are the template functions of every page.
func funcs() template.FuncMap {
	f := template.FuncMap{
		"date":     fmtDate,
		"datetime": fmtDateTime,
		"add":      func(a, b int) int { return a + b },
		"pathesc":  url.PathEscape,
		"policy":   policyText,
		"menuOf":   menuOf,
		"months":   func() []int { return []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12} },
	}
	for k, v := range fleetFuncs() {
		f[k] = v
	}
	return f
}

func fmtDate(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02")
}

func fmtDateTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// policyText describes a rotation policy.
func policyText(p *crk.RotationPolicy) string {
	switch {
	case p == nil:
		return "none"
	case !p.Enabled:
		return fmt.Sprintf("disabled (was every %d month%s)", p.IntervalMonths, plural(p.IntervalMonths))
	}
	return fmt.Sprintf("every %d month%s", p.IntervalMonths, plural(p.IntervalMonths))
}

// menuData is a key's overflow menu.
type menuData struct {
	Key     *crk.Key
	Actions []keyAction
	// URL is the key page's path, whose ?dialog= links the menu's entries are.
	URL string
}

// menuOf returns the overflow menu of key k on page p.
func menuOf(p *page, k *crk.Key) menuData {
	return menuData{Key: k, Actions: actionsFor(k), URL: p.keyURL(k.ID)}
}

// parsePages parses each page template of templates/ (not the partials, whose names begin
// with "_") with the layout and the partials.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" || strings.HasPrefix(base, "_") {
			continue
		}
		t, err := template.New(base).Funcs(funcs()).ParseFS(templateFS, "templates/layout.html", "templates/_*.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", base, err)
		}
		pages[strings.TrimSuffix(base, ".html")] = t
	}
	return pages, nil
}

// render writes page name (templates/name.html, in the layout) with status.
func (h *Handler) render(w http.ResponseWriter, status int, name string, p *page) {
	t, ok := h.pages[name]
	if !ok {
		h.log.Error("console: no such template", "template", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
		h.log.Error("console: rendering a page", "template", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorData is the data of the error page.
type errorData struct {
	Status  int
	Heading string
	Message string
}

// errorPage answers with the error page.
func (h *Handler) errorPage(w http.ResponseWriter, r *http.Request, s *session, status int, heading, msg string) {
	p := h.newPage(r, s, "")
	p.Title = heading
	p.Data = errorData{Status: status, Heading: heading, Message: msg}
	h.render(w, status, "error", p)
}

// failurePage answers with the error page, signed out.
func (h *Handler) failurePage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h.errorPage(w, r, nil, status, http.StatusText(status), msg)
}

// notFoundPage answers a path the console does not have.
func (h *Handler) notFoundPage(w http.ResponseWriter, r *http.Request) {
	s, err := h.current(r)
	var sp *session
	if err == nil {
		sp = &s
	}
	h.errorPage(w, r, sp, http.StatusNotFound, "Not found", "There is no such page.")
}

// message returns the readable text of an error from crk for a page: a refusal's own text
// (as the API reports it), else a generic message, the error itself going to the log.
func (h *Handler) message(err error) string {
	info, ok := crk.LookupError(err)
	if ok && info.Class == crk.Refusal {
		return sentence(err.Error())
	}
	h.log.Error("console: a key service call failed", "err", err)
	if ok && info.Err == crk.ErrUnavailable {
		return "The key service's store is unavailable; try again later."
	}
	return "The key service failed to do this (internal error); see the server's log."
}

// sentence capitalises msg's first letter.
func sentence(msg string) string {
	if msg == "" {
		return msg
	}
	return strings.ToUpper(msg[:1]) + msg[1:]
}

// querySep is the separator before a new query parameter of u.
func querySep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

func queryEscape(s string) string { return url.QueryEscape(s) }
