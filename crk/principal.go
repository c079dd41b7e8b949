package crk

import "strings"

// Principals: the initiator an operation is recorded as done by (see WithInitiator) names
// who acts. Dual authorization compares principals with SamePrincipal, never as strings,
// because one caller reaches the service by several routes.
const (
	// PrincipalAPIKey prefixes the id of an API key acting through the HTTP API
	// ("kpapi:<API key id>").
	PrincipalAPIKey = "kpapi:"
	// PrincipalConsole prefixes the id of an API key acting through the web console
	// ("console:<API key id>").
	PrincipalConsole = "console:"
	// PrincipalLocalUser prefixes a named local user of the CLI's embedded key service
	// ("cli:<user>").
	PrincipalLocalUser = "cli:"
	// PrincipalLocal is the CLI's embedded key service acting for a local user it does not
	// name (the older key commands, such as crkvol key delete).
	PrincipalLocal = "crkvol-cli"
)

// NormalPrincipal returns the principal who (an initiator as recorded in events) stands
// for: an API key is one principal whatever the route, so "kpapi:<id>" and "console:<id>"
// both become "apikey:<id>"; any other initiator is its own principal.
func NormalPrincipal(who string) string {
	for _, p := range []string{PrincipalAPIKey, PrincipalConsole} {
		if id, ok := strings.CutPrefix(who, p); ok {
			return "apikey:" + id
		}
	}
	return who
}

// SamePrincipal reports whether initiators a and b may be the same principal, which dual
// authorization counts as one person: equal after NormalPrincipal, or one of them is the
// unnamed local initiator PrincipalLocal and the other PrincipalLocal or a named local user
// ("cli:…"): the unnamed local user may be any of them, so it is never the second one.
func SamePrincipal(a, b string) bool {
	if NormalPrincipal(a) == NormalPrincipal(b) {
		return true
	}
	local := func(w string) bool { return w == PrincipalLocal || strings.HasPrefix(w, PrincipalLocalUser) }
	return (a == PrincipalLocal && local(b)) || (b == PrincipalLocal && local(a))
}
