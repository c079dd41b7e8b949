package kms

import (
	"context"
	"net/http"
)

// Authorized runs call, one or more requests of an official Key Protect client of the
// caller's own (one whose transport is [Remote.Transport]), with the Authorization header
// value auth ("Bearer " and a token) to give it through kp.NewContextWithAuth: Remote's
// token cache, its one retry with a fresh token after a 401, and its certificate guard (a
// certificate error or a redirect ends the call with an error matching [ErrCertificate] or
// [ErrRedirect]) apply, as they do to Remote's own calls; so does [Remote.Client]'s. The errors are call's, unmapped (map the client's with
// [ClientError]).
func (r *Remote) Authorized(ctx context.Context, call func(ctx context.Context, auth string) error) error {
	return r.authorized(ctx, call)
}

// Transport returns the transport of Remote's own requests: the configured TLS trust
// (RemoteConfig.CAFile, RootCAs) and the certificate guard that ends the call of
// [Remote.Authorized] on a certificate error. It retries nothing.
func (r *Remote) Transport() http.RoundTripper { return r.http.Transport }
