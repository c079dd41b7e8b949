package console

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"crkvol/crk/kpapi"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is the path under which the console is served.
const Prefix = "/ui/"

// maxForm caps a form body: imported key material (at most 7168 bytes, in base64) fits with
// room to spare.
const maxForm = 64 << 10

// contentSecurityPolicy allows only the console's own script, styles and images, no inline
// script or style, no framing and no form posts elsewhere; connect-src lets console.js fetch
// its own pages for live refresh.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Options configure a [Handler].
type Options struct {
	// Logger receives sign-ins and sign-outs (Info, with the API key's id and the remote
	// address) and warnings (refused sign-ins, at most one line a second; failures behind a
	// generic message); nil discards them. No API key or session id is logged.
	Logger *slog.Logger
	// Now is the clock of pages and flash messages; nil means time.Now.
	Now func() time.Time
	// SecureCookies treats every request as one that came over HTTPS, for a console behind
	// a TLS-terminating proxy: cookies are Secure and take the __Host- prefix, and responses
	// carry Strict-Transport-Security. Without it only requests that reached this server
	// over TLS do. X-Forwarded-* headers are never trusted.
	SecureCookies bool
}

// Handler serves the console under [Prefix]. It is safe for concurrent use.
type Handler struct {
	t      *kpapi.Tenants
	secure bool // Options.SecureCookies
	log    *slog.Logger
	now    func() time.Time
	mux    *http.ServeMux
	pages  map[string]*template.Template
	// failures rate-limits the log of refused sign-ins.
	failures failureLog
}

// New returns the console for the instances of t.
func New(t *kpapi.Tenants, opts Options) (*Handler, error) {
	if t == nil {
		return nil, errors.New("console: no tenants")
	}
	h := &Handler{t: t, log: opts.Logger, now: opts.Now, secure: opts.SecureCookies, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	h.pages = pages
	if err := h.routes(); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *Handler) routes() error {
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return fmt.Errorf("console: static files: %w", err)
	}
	files := http.StripPrefix(Prefix+"static/", http.FileServerFS(static))
	h.mux.Handle("GET /ui/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, Prefix+"static/")
		if st, err := fs.Stat(static, name); err != nil || st.IsDir() || !fs.ValidPath(name) {
			h.notFoundPage(w, r) // no directory listings, and the console's own 404 page
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=300")
		files.ServeHTTP(w, r)
	}))
	h.mux.HandleFunc("GET /ui/{$}", h.root)
	h.mux.HandleFunc("GET /ui/signin", h.signinPage)
	h.mux.HandleFunc("POST /ui/signin", h.signin)
	h.mux.HandleFunc("POST /ui/signout", h.signout)
	h.mux.HandleFunc("GET /ui/i/{instance}/keys", h.instance("keys", h.keys))
	h.mux.HandleFunc("POST /ui/i/{instance}/keys", h.instance("keys", h.createKey))
	h.mux.HandleFunc("GET /ui/i/{instance}/keys/{id}", h.instance("keys", h.key))
	h.mux.HandleFunc("POST /ui/i/{instance}/keys/{id}/{action}", h.instance("keys", h.keyAction))
	h.mux.HandleFunc("GET /ui/i/{instance}/events", h.instance("events", h.events))
	h.mux.HandleFunc("GET /ui/i/{instance}/fleet", h.instance("fleet", h.fleet))
	h.mux.HandleFunc("/ui/", h.noRoute)
	return nil
}

// noRoute answers a request no route takes: 405 with Allow when the path is a console page
// of other methods, else the not-found page.
func (h *Handler) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := h.mux.Handler(probe); pattern != "" && pattern != "/ui/" {
			allow = append(allow, m)
			if m == http.MethodGet {
				allow = append(allow, http.MethodHead)
			}
		}
	}
	if len(allow) == 0 {
		h.notFoundPage(w, r)
		return
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	s, err := h.current(r)
	var sp *session
	if err == nil {
		sp = &s
	}
	h.errorPage(w, r, sp, http.StatusMethodNotAllowed, "Method not allowed",
		fmt.Sprintf("This page does not take %s requests (it takes %s).", r.Method, strings.Join(allow, ", ")))
}

// ServeHTTP serves a console request; every response carries the security headers.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
	if h.secureRequest(r) {
		hd.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	}
	h.mux.ServeHTTP(w, r)
}
