// Package kpapi serves the crk key service over HTTP with the Key Protect API v2: the paths,
// JSON bodies, status codes, error envelope and reason codes that the official
// keyprotect-go-client (v0.15.1) sends and expects, so storage prototypes can test their Key
// Protect code offline against real key semantics.
//
// Every request needs a bearer token ("Authorization: Bearer <token>", the scheme in any
// letter case as RFC 7235 has it) and a bluemix-instance header naming a service instance;
// instances are isolated tenants, each with its own crk store. API keys are exchanged for
// short-lived tokens at POST /identity/token (and /oidc/token), as IAM does. Tokens expire on
// the wall clock after [TokenLifetime], at most [MaxTokens] are held, [MaxTokensPerKey] per API
// key (a key past its share evicts its own oldest; the oldest overall is evicted when the
// table is full), and revoking an API key ([Tenants.RevokeAPIKey]) ends its tokens at
// once. An API key sees one or more instances ([Tenants.CreateAPIKey]); its tokens are
// accepted for each of them and for no other. The crk core never imports net/http; this
// package is the only HTTP layer.
//
// For a web console, an API key also starts console sessions ([Tenants.StartSession],
// [Tenants.CheckSession], [Tenants.EndSession]): random ids kept as hashes like tokens, with
// an absolute lifetime ([SessionLifetime]), ended by sign-out or by revoking the key, and
// never interchangeable with bearer tokens.
//
// Tenants — instances, API-key hashes, token and session hashes — live either in a state
// directory ([OpenTenants]: tenants.json, tokens and sessions in memory, one server process)
// or in PostgreSQL ([OpenTenantsPostgres]: tables shared by any number of server replicas,
// each of which accepts the tokens and sessions of all; their wall clocks must agree within
// seconds). A database out of
// reach, after the retries of each transaction, is answered 503 with reason code
// SERVICE_UNAVAILABLE_ERR ([crk.ErrUnavailable]), at the token endpoint too: an outage is
// never a refusal of the credential (401, 400) nor an internal error (500). The server needs
// no restart when the database comes back.
//
// Beside Key Protect's API, each instance's lifecycle feed ([crk.Service.Lifecycle]: the
// rotations, disables, deletions and other lifecycle events of keys with registrations) is
// served at GET [LifecyclePath], a crkvol path that Key Protect's API never uses, with the
// same authorisation; a long poll waits up to a minute for the next event, and
// [Server.StopWaiting] ends the waits of a server shutting down. Hosts report what they did
// for those events at POST [AcksPath] ([crk.Service.Acknowledge], recorded with the request's
// API key as reporter), GET [AcksPath] lists each host's latest acknowledgement of a key, and
// DELETE [AcksPath] forgets one host's.
//
// Batch calls, for clients that rewrap or re-register many resources of one key (a fleet
// rotation): POST /api/crkvol/v1/keys/{id}/rewrap rewraps up to [MaxBatchItems] ciphertexts
// and PATCH /api/crkvol/v1/keys/{id}/registrations moves up to as many registrations to
// newer key versions, each in one call of the service (one commit of its store, with one
// audit event per item), answering per item in request order: the result, or the error
// resource and status the item's single call would have been answered. See
// [RewrapBatchPattern] for the bodies; every answer of these routes carries [BatchHeader],
// so that a client tells a service without them (Key Protect: 404 or 405 without it) from a
// refusal, and falls back to the single calls.
//
// Import tokens are served at [ImportTokenPath] as Key Protect serves them: POST creates the
// instance's one token (replacing any: expiration 300 to 86400 s, default 600;
// maxAllowedRetrievals 1 to 500, default 1) and answers 201 with its metadata; GET retrieves
// its RSA-4096 public key (payload: base64 of the PEM) and nonce, counting a retrieval, and is
// refused 409 IMPORT_TOKEN_EXPIRED_ERR once the token has expired or has no retrieval left. A
// key creation or a rotate action that carries encryptedNonce, iv and encryptionAlgorithm
// (RSAES_OAEP_SHA_256, the default, or RSAES_OAEP_SHA_1) imports root key material encrypted
// through the token ([crk.EncryptedMaterial]); importing does not consume the token.
//
// Policies: GET and PUT /api/v2/instance/policies[?policy=TYPE] read and set the instance
// policies (rotation, dualAuthDelete, allowedNetwork, keyCreateImportAccess, metrics; see
// crk's [crk.Service.SetInstancePolicies] for their effects), PUT answering 204 as Key
// Protect does; GET and PUT /api/v2/keys/{id}/policies[?policy=rotation|dualAuthDelete] a
// key's; POST /api/v2/keys/{id}/actions/setKeyForDeletion and unsetKeyForDeletion (204) run
// dual authorization delete; POST [OverridesPath] creates a key whose rotation and
// dualAuthDelete members override the instance policies. With allowedNetwork private-only, a
// request from a public address is refused with 403 CONFIG_RULE_CONFLICT_ERR (see
// instancepolicy.go for what counts as private).
//
// Every route with a key in its path ({id}) takes a key alias in its place: the server resolves
// it once, before the handler, so that actions, audit events and registrations name the key by
// its id; with the x-kms-key-ring header ([KeyRingHeader]) the key must be in that ring (404
// KEY_NOT_FOUND_ERR otherwise), and a key created with it is created in that ring. Aliases are
// made and taken at /api/v2/keys/{id}/aliases/{alias}, key rings at /api/v2/key_rings, and a key
// moves between rings by PATCH /api/v2/keys/{id} (see crk's aliases.go and keyrings.go for the
// rules).
//
// Request bodies are decoded strictly: by type, with nothing after the value, no object
// member given twice (compared without regard to letter case, as encoding/json matches
// fields), and no null inside aad; each is refused with 400 and a reason naming the member.
//
// Errors use Key Protect's envelope ([ErrorBody]); the status and reason code of each crk
// sentinel come from crk's error table ([crk.Errors]). Because several sentinels share a reason
// code (suspended, deactivated and any other wrong state are all KEY_ACTION_INVALID_STATE_ERR),
// each reason also carries the sentinel's stable id in a member Key Protect clients ignore,
// "crkvolError"; [ParseError] maps a response back to the sentinel by that id, or by the reason
// code when only one sentinel has it, so a remote client's errors match the same sentinels as
// the in-process service's.
package kpapi
