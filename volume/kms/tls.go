package kms

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
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

// withStop returns ctx with a cancel function that certGuard calls on a certificate error,
// and that function, for the caller to release (with nil) when the call ends.
func withStop(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	ctx, stop := context.WithCancelCause(ctx)
	return context.WithValue(ctx, stopKey{}, stop), stop
}

// certGuard is the http.RoundTripper under each of Remote's clients (and under their
// retrying transports, which never retry an error). It marks a certificate
// error with ErrCertificate, and ends the call it belongs to by cancelling the request's
// context with that error as the cause (when the context came from withStop).
//
// The cancellation is what stops the official client from retrying: its retry policy
// (kpCheckRetry under go-retryablehttp, fixed per request and not configurable) retries every
// transport error, after waits of seconds, unless the request's context is done. Remote then
// reports the cause, not the cancellation.
type certGuard struct{ next http.RoundTripper }

// RoundTrip implements http.RoundTripper.
func (g certGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.next.RoundTrip(req)
	if err != nil && certificateError(err) {
		err = fmt.Errorf("%w: %s: %w", ErrCertificate, req.URL.Host, err)
		if stop, ok := req.Context().Value(stopKey{}).(context.CancelCauseFunc); ok && stop != nil {
			stop(err)
		}
	}
	return resp, err
}

// stopped returns the certificate error that ended a call's context, or nil.
func stopped(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrCertificate) {
		return cause
	}
	return nil
}
