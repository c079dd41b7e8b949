package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"crkvol/crk/kpapi"
)

// signinData is the sign-in page's data.
type signinData struct {
	// Token is the double-submit token of the form (also in the signin cookie).
	Token string
	// Message says why the user is here (session ended) or why sign-in failed.
	Message string
}

// root sends a signed-in user to an instance's Keys page (?instance=ID picks one of the
// session's, as the instance switcher does), and anyone else to the sign-in page.
func (h *Handler) root(w http.ResponseWriter, r *http.Request) {
	s, ok := h.signedIn(w, r)
	if !ok {
		return
	}
	if len(s.instances) == 0 {
		h.errorPage(w, r, &s, http.StatusNotFound, "No such instance", "This API key sees no instance.")
		return
	}
	id := s.instances[0]
	if want := r.URL.Query().Get("instance"); want != "" {
		found := false
		for _, in := range s.instances {
			if in == want {
				id, found = in, true
			}
		}
		if !found {
			h.errorPage(w, r, &s, http.StatusNotFound, "No such instance", "no such instance")
			return
		}
	}
	http.Redirect(w, r, Prefix+"i/"+url.PathEscape(id)+"/keys", http.StatusSeeOther)
}

// signinPage shows the sign-in form with a fresh double-submit token.
func (h *Handler) signinPage(w http.ResponseWriter, r *http.Request) {
	if _, err := h.current(r); err == nil {
		http.Redirect(w, r, Prefix, http.StatusSeeOther) // signed in already
		return
	}
	msg := ""
	if r.URL.Query().Get("ended") != "" {
		msg = "Your session has expired or was ended. Sign in again."
	}
	h.signinForm(w, r, http.StatusOK, msg)
}

func (h *Handler) signinForm(w http.ResponseWriter, r *http.Request, status int, msg string) {
	var b [24]byte
	_, _ = rand.Read(b[:])
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	http.SetCookie(w, h.cookie(r, signinCookie, tok, 3600))
	p := h.newPage(r, nil, "")
	p.Title = "Sign in"
	p.Data = signinData{Token: tok, Message: msg}
	h.render(w, status, "signin", p)
}

// signin exchanges the posted API key for a session.
func (h *Handler) signin(w http.ResponseWriter, r *http.Request) {
	tok := h.readCookie(r, signinCookie)
	if err := r.ParseForm(); err != nil {
		h.signinForm(w, r, http.StatusBadRequest, "The form could not be read. Try again.")
		return
	}
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(r.PostForm.Get("csrf"))) != 1 {
		h.failurePage(w, r, http.StatusForbidden, "The sign-in form was stale or not sent by this console (missing or wrong CSRF token). Open the sign-in page and try again.")
		return
	}
	if name, bad := invalidUTF8(r.PostForm); bad {
		h.signinForm(w, r, http.StatusBadRequest, fmt.Sprintf("The form field %q is not valid UTF-8 text.", short(name)))
		return
	}
	key := r.PostForm.Get("apikey")
	if key == "" {
		h.signinForm(w, r, http.StatusBadRequest, "Enter an API key.")
		return
	}
	s, err := h.startSession(key)
	if err != nil {
		if errors.Is(err, kpapi.ErrUnauthorized) {
			// The key itself is never logged.
			h.failures.refused(h.log, h.now(), r.RemoteAddr)
			h.signinForm(w, r, http.StatusUnauthorized, "Sign-in failed: this API key is unknown or revoked.")
			return
		}
		h.log.Error("console: starting a session", "err", err)
		h.signinForm(w, r, http.StatusServiceUnavailable, "The key service is unavailable; try again later.")
		return
	}
	if refused, err := h.publicRefused(r, s); refused || err != nil {
		if eerr := h.endSession(s.id); eerr != nil {
			h.log.Error("console: ending a refused session", "err", eerr)
		}
		if err != nil {
			h.log.Error("console: checking the allowedNetwork policy", "err", err)
			h.signinForm(w, r, http.StatusServiceUnavailable, "The key service is unavailable; try again later.")
			return
		}
		h.signinForm(w, r, http.StatusForbidden, "Sign-in refused: the instances of this API key accept requests from private networks only (allowedNetwork private-only), and this request came from a public address.")
		return
	}
	h.failures.flush(h.log)
	h.log.Info("console: signed in", "apikey", s.apiKeyID, "remote", r.RemoteAddr)
	h.clearCookie(w, r, signinCookie)
	h.setSessionCookie(w, r, s)
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

// signout ends the session (in the store, so that its cookie replayed is refused) and
// clears its cookie.
func (h *Handler) signout(w http.ResponseWriter, r *http.Request) {
	s, err := h.current(r)
	if err != nil {
		h.clearCookie(w, r, sessionCookie)
		http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
		return
	}
	if !validCSRF(r, s) {
		h.errorPage(w, r, &s, http.StatusForbidden, "Forbidden", "The form was stale or not sent by this console (missing or wrong CSRF token); you are still signed in.")
		return
	}
	if err := h.endSession(s.id); err != nil {
		h.log.Error("console: ending a session", "err", err)
		h.errorPage(w, r, &s, http.StatusServiceUnavailable, "Unavailable", "The session could not be ended; try again.")
		return
	}
	h.log.Info("console: signed out", "apikey", s.apiKeyID, "remote", r.RemoteAddr)
	h.clearCookie(w, r, sessionCookie)
	http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
}

// failureLog rate-limits the log lines of refused sign-ins, so that guessing API keys cannot
// flood the log: at most one line per second, then one line counting those left out.
type failureLog struct {
	mu         sync.Mutex
	last       time.Time // when the last line was written
	suppressed int       // refusals since then not logged
	since      time.Time // the first of them
}

// refused logs a refused sign-in from remote at now, or counts it when a line was written
// less than a second ago.
func (f *failureLog) refused(log *slog.Logger, now time.Time, remote string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.last.IsZero() && now.Sub(f.last) < time.Second && now.Sub(f.last) >= 0 {
		if f.suppressed == 0 {
			f.since = now
		}
		f.suppressed++
		return
	}
	f.flushLocked(log)
	f.last = now
	log.Warn("console: sign-in refused", "remote", remote)
}

// flush logs the count of refusals left out, if any.
func (f *failureLog) flush(log *slog.Logger) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushLocked(log)
}

func (f *failureLog) flushLocked(log *slog.Logger) {
	if f.suppressed > 0 {
		log.Warn(fmt.Sprintf("console: %d more sign-in failures since %s", f.suppressed, f.since.UTC().Format(time.RFC3339)))
		f.suppressed = 0
	}
}
