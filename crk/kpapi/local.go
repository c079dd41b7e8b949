package kpapi

import (
	"context"
	"log/slog"
	"net/http"

	"crkvol/crk"
)

// NewLocalServer returns a server of the Key Protect API v2 for the one service svc, for a
// caller in the same process: an http.RoundTripper that hands its requests to the server's
// ServeHTTP, with no socket in between (the CLI's embedded key service). Every request for
// svc's instance is authorized, whatever its Authorization header, and its operations are
// audited as done by principal (such as "cli:alice"), so that dual authorization tells two
// local users apart. A request for another instance is refused as one for an instance the
// caller has no access to (401). The server has no token endpoint: a local caller has no API
// key to exchange. Its requests count as private for the allowedNetwork policy (see
// PrivateAddr).
func NewLocalServer(svc *crk.Service, principal string, opts ...ServerOption) *Server {
	s := &Server{mux: http.NewServeMux(), log: slog.New(slog.DiscardHandler),
		authorize: func(_, instance string) (*crk.Service, string, error) {
			if instance != svc.Instance() {
				return nil, "", errNoInstance(instance)
			}
			return svc, principal, nil
		}, local: true, reauthEvery: ReauthorizeInterval}
	for _, o := range opts {
		o(s)
	}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.routes()
	return s
}

// principal authorizes a request with [Tenants.Authorize] for a server of t: its operations
// are audited as done by "kpapi:" and the caller's id.
func (t *Tenants) principal(token, instance string) (*crk.Service, string, error) {
	svc, caller, err := t.Authorize(token, instance)
	if err != nil {
		return nil, "", err
	}
	return svc, crk.PrincipalAPIKey + caller, nil
}
