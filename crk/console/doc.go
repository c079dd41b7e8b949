// Package console is crkvol's web console: the key management UI a Key Protect user knows
// (Keys table, a key's overflow menu, rotation dialogs, associated resources, events), served
// by `crkvol kms serve` at /ui/ beside the Key Protect API v2.
//
// # Pages
//
//	GET  /ui/                              the sign-in page, or the first instance's Keys page
//	GET  /ui/signin, POST /ui/signin       sign in with an API key
//	POST /ui/signout                       end the session
//	GET  /ui/i/{instance}/keys             the Keys table (filters and paging by query)
//	POST /ui/i/{instance}/keys             create a key
//	GET  /ui/i/{instance}/keys/{id}        a key's page; ?tab=versions|resources, ?dialog=...
//	POST /ui/i/{instance}/keys/{id}/{action}  rotate, policy, disable, enable, delete, restore, sync
//	GET  /ui/i/{instance}/events           the audit trail
//	GET  /ui/i/{instance}/fleet            versions and lockouts across the fleet
//	GET  /ui/static/...                    embedded CSS, JavaScript and images
//
// Every page is rendered on the server with html/template and works without JavaScript;
// console.js only enhances (Escape closes a dialog, outside clicks close menus, the Keys table
// refreshes itself). Every asset is embedded in the binary.
//
// # Security
//
// Signing in exchanges an API key for a session ([kpapi.Tenants.StartSession]); the browser
// holds only the session id, in the cookie crkvol_session (HttpOnly, SameSite=Strict,
// Path=/ui/, Secure under TLS), and the tenants store keeps only its hash, so every replica
// on a shared database accepts it. Signing out ends the session in the store. The static test
// token of `kms serve --static-token` is never a session.
//
// Every form carries a CSRF token: on signed-in pages an HMAC of the session id (keyed by the
// session id itself, which the page never shows: stateless and valid on every replica); on
// the sign-in form a double-submit cookie. A POST without the right token is refused with 403
// and changes nothing. Every response carries a Content Security Policy that allows only the
// console's own script and styles (no inline script), forbids framing, and is not cached.
// A session sees only the instances of its API key: another instance's pages answer 404.
//
// Flash messages after an action travel in the redirect's query with an HMAC keyed by the
// session id, and are shown as text; a forged or stale one is ignored.
//
// Errors from crk are shown as readable messages: a refusal's own text (the message the API
// gives), a failure as a generic message whose details stay in the server's log.
//
// # Concurrency
//
// A [Handler] is safe for concurrent use.
package console
