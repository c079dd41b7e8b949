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
	// Logger receives the console's warnings (failed sign-ins, failures behind a generic
	// message); nil discards them. Nothing secret is logged.
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
		if strings.HasSuffix(r.URL.Path, "/") {
			h.notFoundPage(w, r) // no directory listings
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
	h.mux.HandleFunc("/ui/", h.notFoundPage)
	return nil
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
