package kms

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// ErrInsecureURL means a key service URL (or token endpoint URL) is plain http to a host that
// is not loopback, without RemoteConfig.Insecure.
var ErrInsecureURL = errors.New("plain http to a host that is not loopback")

// ErrBadURL means a key service URL (or token endpoint URL) is not an http or https URL with
// a host.
var ErrBadURL = errors.New("not an http or https URL with a host")

// ErrCAFile means RemoteConfig.CAFile holds no PEM certificate.
var ErrCAFile = errors.New("no PEM certificate in the CA file")

// ErrCertificate means the key service's TLS certificate was not accepted: signed by an
// authority not trusted (see RemoteConfig.RootCAs and CAFile), not for the URL's host,
// expired or otherwise invalid. Such a call fails at once: it is never retried.
var ErrCertificate = errors.New("the key service's TLS certificate is not trusted")

// checkURL refuses raw, the URL of what ("service URL", "token URL"), unless it is https, or
// http to a loopback host, or http anywhere with insecure. The error names the URL's host,
// never its user information.
func checkURL(what, raw string, insecure bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			// url.Error's text repeats the URL, user information included.
			err = uerr.Err
		}
		return fmt.Errorf("kms: the %s: %w: %w", what, ErrBadURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("kms: the %s (scheme %q, host %q): %w", what, u.Scheme, u.Host, ErrBadURL)
	}
	if u.Scheme == "http" && !insecure && !loopback(u.Hostname()) {
		// The text names no Go field and no flag: the CLI and library callers see it alike
		// (the CLI adds its flags in a hint).
		return fmt.Errorf("kms: the %s: %w: %q; the API key, the tokens and the wrapped keys would "+
			"cross the network in clear: use https, or allow plain http explicitly (the insecure "+
			"setting)", what, ErrInsecureURL, u.Host)
	}
	return nil
}

// loopback reports whether host is the name localhost or a loopback address. Names are not
// resolved: a resolver could answer anything.
func loopback(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// tlsConfig returns the TLS client configuration of cfg: TLS 1.2 or later, trusting
// cfg.RootCAs (nil: the system's) and the certificates of cfg.CAFile.
func tlsConfig(cfg RemoteConfig) (*tls.Config, error) {
	pool := cfg.RootCAs
	if cfg.CAFile != "" {
		pemData, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kms: CA file: %w", err)
		}
		if pool == nil {
			pool = x509.NewCertPool()
		} else {
			pool = pool.Clone()
		}
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("kms: CA file %s: %w", cfg.CAFile, ErrCAFile)
		}
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

// certificateError reports whether err is a failure to verify the server's certificate.
func certificateError(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		authority x509.UnknownAuthorityError
		host      x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	return errors.As(err, &verify) || errors.As(err, &authority) || errors.As(err, &host) || errors.As(err, &invalid)
}

// stopKey is the context key of the function that ends a call of Remote's at once: see
// certGuard.
type stopKey struct{}

// withStop returns ctx with a cancel function that certGuard calls on a certificate error or
// a redirect, and that function, for the caller to release (with nil) when the call ends.
func withStop(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	ctx, stop := context.WithCancelCause(ctx)
	return context.WithValue(ctx, stopKey{}, stop), stop
}

// ErrRedirect means the key service answered a call with a redirect (301, 302, 303, 307 or
// 308). Remote never follows one: a redirect would carry the API key, the bearer token or a
// passphrase being wrapped to wherever the answer points, past the checks of the service URL
// (https, or loopback). Such a call fails at once: it is never retried.
var ErrRedirect = errors.New("the key service answered with a redirect, which is not followed")

// ErrAnswerTooLarge means an answer's body was longer than maxAnswerBody: reading stops there
// rather than holding an endless answer in memory.
var ErrAnswerTooLarge = errors.New("the key service's answer is too large")

// maxAnswerBody caps the body of every answer read through Remote's transports, the official
// client's included (which reads whole bodies with no limit of its own): far above any list
// the API pages (a page of 5,000 keys is about 5 MiB).
const maxAnswerBody = 64 << 20

// certGuard is the http.RoundTripper under each of Remote's clients (and under their
// retrying transports, which never retry an error). It marks a certificate
// error with ErrCertificate, and ends the call it belongs to by cancelling the request's
// context with that error as the cause (when the context came from withStop). It turns a
// redirect into an error (ErrRedirect) the same way, so that no client above it follows one,
// and caps every answer's body at maxAnswerBody (ErrAnswerTooLarge).
//
// The cancellation is what stops the official client from retrying: its retry policy
// (kpCheckRetry under go-retryablehttp, fixed per request and not configurable) retries every
// transport error, after waits of seconds, unless the request's context is done. Remote then
// reports the cause, not the cancellation.
type certGuard struct{ next http.RoundTripper }

// RoundTrip implements http.RoundTripper.
func (g certGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.next.RoundTrip(req)
	switch {
	case err != nil && certificateError(err):
		err = fmt.Errorf("%w: %s: %w", ErrCertificate, req.URL.Host, err)
	case err == nil && isRedirect(resp.StatusCode):
		code, loc := resp.StatusCode, resp.Header.Get("Location")
		resp.Body.Close()
		resp = nil
		err = fmt.Errorf("%w: %s %s was answered %d to %s", ErrRedirect, req.Method, req.URL.Path, code, quoteLocation(loc))
	case err == nil:
		resp.Body = &cappedBody{rc: resp.Body, left: maxAnswerBody}
		return resp, nil
	default:
		return resp, err
	}
	if stop, ok := req.Context().Value(stopKey{}).(context.CancelCauseFunc); ok && stop != nil {
		stop(err)
	}
	return resp, err
}

// isRedirect reports whether an answer of status code is one net/http would follow.
func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// quoteLocation returns a redirect's Location for a message: quoted (it is the server's
// text), at most 200 bytes of it, its user information and query left out.
func quoteLocation(loc string) string {
	if loc == "" {
		return "no location"
	}
	if u, err := url.Parse(loc); err == nil {
		u.User, u.RawQuery, u.ForceQuery, u.Fragment = nil, "", false, ""
		loc = u.String()
	} else {
		loc = "an unparsable location"
	}
	if len(loc) > 200 {
		loc = loc[:200] + "..."
	}
	return strconv.Quote(loc)
}

// cappedBody is an answer's body that fails with ErrAnswerTooLarge once more than left bytes
// have been read from it.
type cappedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("%w: over %d MiB", ErrAnswerTooLarge, maxAnswerBody>>20)
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1] // one byte more than allowed shows the body goes on
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%w: over %d MiB", ErrAnswerTooLarge, maxAnswerBody>>20)
	}
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// stopped returns the certificate or redirect error that ended a call's context, or nil.
func stopped(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrCertificate) || errors.Is(cause, ErrRedirect) {
		return cause
	}
	return nil
}
