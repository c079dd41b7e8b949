package console

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"time"
	"unicode/utf8"

	"crkvol/crk"
	"crkvol/crk/kpapi"
)

// sessionCookie holds the session id; signinCookie the sign-in form's double-submit token.
// Over HTTPS (or with Options.SecureCookies) their names take the __Host- prefix: a browser
// then accepts them only when Secure, with Path=/ and no Domain, so a sibling origin (another
// port or subdomain of the host) cannot plant one for the console.
const (
	sessionCookie = "crkvol_session"
	signinCookie  = "crkvol_signin"
	hostPrefix    = "__Host-"
)

// secureRequest reports whether r's cookies must be Secure: r came over TLS, or the console
// is behind a TLS-terminating proxy (Options.SecureCookies).
func (h *Handler) secureRequest(r *http.Request) bool { return r.TLS != nil || h.secure }

// cookie returns the console's cookie name (sessionCookie or signinCookie) for r with value
// and maxAge (0: none, a browser-session cookie; negative: delete), with the attributes every
// console cookie has.
func (h *Handler) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	c := &http.Cookie{
		Name: name, Value: value, Path: Prefix, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
	}
	if h.secureRequest(r) {
		c.Name, c.Path, c.Secure = hostPrefix+name, "/", true
	}
	return c
}

// readCookie returns the value of the console's cookie name in r ("" when absent): the
// __Host- one for a secure request, never the unprefixed one then.
func (h *Handler) readCookie(r *http.Request, name string) string {
	if h.secureRequest(r) {
		name = hostPrefix + name
	}
	c, err := r.Cookie(name)
	if err != nil {
		return ""
	}
	return c.Value
}

// session is a signed-in browser's session.
type session struct {
	id        string // never shown in a page nor logged
	apiKeyID  string
	instances []string
	expires   time.Time
}

// startSession exchanges an API key for a session.
func (h *Handler) startSession(apiKey string) (session, error) {
	id, ks, err := h.t.StartSession(apiKey)
	if err != nil {
		return session{}, err
	}
	return session{id: id, apiKeyID: ks.APIKeyID, instances: ks.Instances, expires: ks.Expires}, nil
}

// checkSession returns the live session with this id.
func (h *Handler) checkSession(id string) (session, error) {
	ks, err := h.t.CheckSession(id)
	if err != nil {
		return session{}, err
	}
	return session{id: id, apiKeyID: ks.APIKeyID, instances: ks.Instances, expires: ks.Expires}, nil
}

// endSession ends a session in the store, for every replica.
func (h *Handler) endSession(id string) error { return h.t.EndSession(id) }

// mac is an HMAC keyed by the session id of purpose and msg: the CSRF token of the session's
// forms and the signature of its flash messages. The session id never leaves the cookie, so
// nobody else can compute it; and it holds on every replica without shared state.
func mac(sessionID, purpose, msg string) string {
	m := hmac.New(sha256.New, []byte(sessionID))
	m.Write([]byte("crkvol console " + purpose + "\x00" + msg))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfToken is the CSRF token of a session's forms.
func csrfToken(sessionID string) string { return mac(sessionID, "csrf", "") }

// validMAC reports whether got is mac(sessionID, purpose, msg), in constant time.
func validMAC(got, sessionID, purpose, msg string) bool {
	return hmac.Equal([]byte(got), []byte(mac(sessionID, purpose, msg)))
}

// setSessionCookie gives the browser the session's cookie. It has no Max-Age: it lasts the
// browser session, so that a session that expired on the server still reaches it and the
// user is told so; the server alone decides when a session ends.
func (h *Handler) setSessionCookie(w http.ResponseWriter, r *http.Request, s session) {
	http.SetCookie(w, h.cookie(r, sessionCookie, s.id, 0))
}

// clearCookie removes a cookie of the console.
func (h *Handler) clearCookie(w http.ResponseWriter, r *http.Request, name string) {
	http.SetCookie(w, h.cookie(r, name, "", -1))
}

// errNoSession means the request carries no session cookie.
var errNoSession = errors.New("no session")

// current returns the request's live session. It wraps errNoSession without a cookie and
// kpapi.ErrUnauthorized for an unknown, expired or ended session.
func (h *Handler) current(r *http.Request) (session, error) {
	id := h.readCookie(r, sessionCookie)
	if id == "" {
		return session{}, errNoSession
	}
	return h.checkSession(id)
}

// signedIn returns the request's session, or answers with a redirect to the sign-in page
// (with a message when the session has expired or ended) and returns false.
func (h *Handler) signedIn(w http.ResponseWriter, r *http.Request) (session, bool) {
	s, err := h.current(r)
	switch {
	case err == nil:
		return s, true
	case errors.Is(err, errNoSession):
		http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
	case errors.Is(err, kpapi.ErrUnauthorized):
		h.clearCookie(w, r, sessionCookie)
		http.Redirect(w, r, Prefix+"signin?ended=1", http.StatusSeeOther)
	default:
		h.log.Error("console: checking a session", "err", err)
		h.failurePage(w, r, http.StatusServiceUnavailable, "The key service is unavailable; try again later.")
	}
	return session{}, false
}

// instance wraps a page of one instance: it requires a session that sees the instance (else
// 404, which tells nothing of other instances), a valid CSRF token on a POST (else 403), and
// gives the page its context.
func (h *Handler) instance(nav string, fn func(w http.ResponseWriter, r *http.Request, p *page)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.signedIn(w, r)
		if !ok {
			return
		}
		id := r.PathValue("instance")
		if !slices.Contains(s.instances, id) {
			h.errorPage(w, r, &s, http.StatusNotFound, "No such instance", "no such instance")
			return
		}
		if r.Method == http.MethodPost && r.ParseForm() != nil {
			h.errorPage(w, r, &s, http.StatusBadRequest, "Bad request", fmt.Sprintf("The form could not be read (a form holds at most %d KiB); nothing was changed.", maxForm>>10))
			return
		}
		if r.Method == http.MethodPost {
			if name, ok := invalidUTF8(r.PostForm); ok {
				h.errorPage(w, r, &s, http.StatusBadRequest, "Bad request", fmt.Sprintf("The form field %q is not valid UTF-8 text; nothing was changed.", short(name)))
				return
			}
		}
		if r.Method == http.MethodPost && !validCSRF(r, s) {
			h.errorPage(w, r, &s, http.StatusForbidden, "Forbidden", "The form was stale or not sent by this console (missing or wrong CSRF token); nothing was changed. Reload the page and try again.")
			return
		}
		svc, err := h.t.Service(id)
		if err != nil {
			h.log.Error("console: opening an instance", "instance", id, "err", err)
			h.errorPage(w, r, &s, http.StatusServiceUnavailable, "Unavailable", "The key service is unavailable; try again later.")
			return
		}
		ctx := crk.WithInitiator(r.Context(), crk.PrincipalConsole+s.apiKeyID)
		if err := svc.CheckNetwork(ctx, kpapi.PrivateAddr(r.RemoteAddr)); err != nil {
			h.networkRefused(w, r, &s, err)
			return
		}
		p := h.newPage(r, &s, nav)
		p.svc = svc
		p.ctx = ctx
		fn(w, r, p)
	}
}

// networkRefused answers a request refused by the allowedNetwork policy of its instance
// (crk.ErrNetworkNotAllowed) with 403, as the API does; any other failure to read the
// policy with 503.
func (h *Handler) networkRefused(w http.ResponseWriter, r *http.Request, s *session, err error) {
	if errors.Is(err, crk.ErrNetworkNotAllowed) {
		h.errorPage(w, r, s, http.StatusForbidden, "Forbidden", "This instance accepts requests from private networks only (its allowedNetwork policy is private-only), and this request came from a public address. Use the console from a private network.")
		return
	}
	h.log.Error("console: checking the allowedNetwork policy", "err", err)
	h.errorPage(w, r, s, http.StatusServiceUnavailable, "Unavailable", "The key service is unavailable; try again later.")
}

// publicRefused reports whether a sign-in from r must be refused by allowedNetwork: it came
// from a public address and every instance of session s is private-only (each refusal is
// audited by its instance). A session that sees some instance from here signs in; the
// pages of its private-only instances refuse it one by one.
func (h *Handler) publicRefused(r *http.Request, s session) (bool, error) {
	if kpapi.PrivateAddr(r.RemoteAddr) || len(s.instances) == 0 {
		return false, nil
	}
	ctx := crk.WithInitiator(r.Context(), crk.PrincipalConsole+s.apiKeyID)
	for _, id := range s.instances {
		svc, err := h.t.Service(id)
		if err != nil {
			return false, err
		}
		err = svc.CheckNetwork(ctx, false)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, crk.ErrNetworkNotAllowed) {
			return false, err
		}
	}
	return true, nil
}

// validCSRF checks the csrf field of a POST form against the session's token.
func validCSRF(r *http.Request, s session) bool {
	if err := r.ParseForm(); err != nil {
		return false
	}
	return validMAC(r.PostForm.Get("csrf"), s.id, "csrf", "")
}

// flashURL returns target with a signed flash message for the session.
func flashURL(target string, s *session, msg string) string {
	return fmt.Sprintf("%s%sflash=%s&fs=%s", target, querySep(target), queryEscape(msg), mac(s.id, "flash", msg))
}

// invalidUTF8 returns the name of the first form field (in name order) whose name or value
// is not valid UTF-8.
func invalidUTF8(form url.Values) (string, bool) {
	for _, name := range slices.Sorted(maps.Keys(form)) {
		if !utf8.ValidString(name) {
			return name, true
		}
		for _, v := range form[name] {
			if !utf8.ValidString(v) {
				return name, true
			}
		}
	}
	return "", false
}
