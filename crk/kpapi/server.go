package kpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"crkvol/crk"
	"crkvol/internal/ident"
)

// MaxBody caps request bodies; Key Protect's largest (a 7168-byte DEK in base64) fits well.
const MaxBody = 64 << 10

// Server serves the Key Protect API v2 for the instances of a Tenants, and each instance's
// lifecycle feed at [LifecyclePath].
type Server struct {
	tenants *Tenants
	mux     *http.ServeMux
	// stopCtx is cancelled by StopWaiting (stop): long polls end.
	stopCtx context.Context
	stop    context.CancelFunc
	// log receives the server's failures (never a token, an API key or a query string).
	log *slog.Logger
	// authorize checks a request's bearer token for an instance and returns the instance's
	// service and the principal its operations are audited as (see NewLocalServer).
	authorize func(token, instance string) (*crk.Service, string, error)
	// local marks every request as private for allowedNetwork: NewLocalServer's in-process
	// caller has no network address.
	local bool
	// reauthEvery is how often a request that waits (the lifecycle feed's long poll)
	// checks its caller's authorization again while it waits: [ReauthorizeInterval].
	reauthEvery time.Duration
}

// ReauthorizeInterval is how often a request that waits (the lifecycle feed's long poll)
// checks again, while it waits, that its bearer token is still valid: a token whose API key
// is revoked (by this process, another one sharing the state directory, or another replica
// on the database) ends the wait with 401 within about this long. Whatever the interval, a
// request that waited checks the token again before it answers, so that nothing that
// happened after a revocation is sent to the revoked key's holder.
const ReauthorizeInterval = 5 * time.Second

// ServerOption configures a [Server].
type ServerOption func(*Server)

// WithLogger makes the server log the requests it fails: a 500 at Error and a 503 at Warn,
// each with the method, the path (no query string, no header) and the error, whose text
// the client is not sent. Refusals (4xx) are not logged. Without it nothing is logged.
func WithLogger(l *slog.Logger) ServerOption {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// NewServer returns a server for t.
func NewServer(t *Tenants, opts ...ServerOption) *Server {
	s := &Server{tenants: t, mux: http.NewServeMux(), log: slog.New(slog.DiscardHandler), authorize: t.principal,
		reauthEvery: ReauthorizeInterval}
	for _, o := range opts {
		o(s)
	}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// request is one authorised API call.
type request struct {
	w   http.ResponseWriter
	r   *http.Request
	ctx context.Context
	svc *crk.Service
	id  string // the {id} path value, when the route has one
	// authorized checks the request's credentials again, as serveAPI did before running
	// the handler (see [request.reauthorize]).
	authorized func() error
}

// reauthorize checks that the request's caller is still authorized for its instance: a
// handler that waits (the lifecycle feed's long poll) calls it before it answers with what
// it gathered after the wait. A revoked or expired token gives an error wrapping
// [ErrUnauthorized], which serveAPI answers with the same 401 as a request that arrives with
// that token; a store that cannot tell gives its own error (a 503 or 500), never the data.
func (q *request) reauthorize() error {
	if err := q.authorized(); err != nil {
		if errors.Is(err, ErrUnauthorized) {
			return err
		}
		return fmt.Errorf("kpapi: checking the token again: %w", err)
	}
	return nil
}

func (s *Server) routes() {
	if s.tenants != nil { // a local server (NewLocalServer) exchanges no API keys
		s.mux.HandleFunc("POST /identity/token", s.token)
		s.mux.HandleFunc("POST /oidc/token", s.token)
	}
	api := func(pattern string, h func(*request) error) {
		s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { s.serveAPI(w, r, h) })
	}
	api("POST /api/v2/keys", s.createKey)
	api("POST "+OverridesPath, s.createKey)
	api("GET /api/v2/instance/policies", s.getInstancePolicies)
	api("PUT /api/v2/instance/policies", s.putInstancePolicies)
	api("GET /api/v2/keys", s.listKeys)
	api("GET /api/v2/keys/metadata", s.listKeys)
	api("GET /api/v2/keys/registrations", s.listRegistrations)
	api("GET /api/v2/keys/{id}", func(q *request) error { return s.getKey(q, true) })
	api("GET /api/v2/keys/{id}/metadata", func(q *request) error { return s.getKey(q, false) })
	api("POST /api/v2/keys/{id}", func(q *request) error { return s.action(q, q.r.URL.Query().Get("action")) })
	api("POST /api/v2/keys/{id}/actions/{action}", func(q *request) error { return s.action(q, q.r.PathValue("action")) })
	api("DELETE /api/v2/keys/{id}", s.deleteKey)
	api("POST /api/v2/keys/{id}/restore", s.restoreKey)
	api("DELETE /api/v2/keys/{id}/purge", s.purgeKey)
	api("GET /api/v2/keys/{id}/versions", s.versions)
	api("GET /api/v2/keys/{id}/policies", s.getPolicies)
	api("PUT /api/v2/keys/{id}/policies", s.putPolicy)
	api("GET /api/v2/keys/{id}/registrations", s.listRegistrations)
	api("POST /api/v2/keys/{id}/registrations/{crn...}", s.register)
	api("PATCH /api/v2/keys/{id}/registrations/{crn...}", s.updateRegistration)
	api("DELETE /api/v2/keys/{id}/registrations/{crn...}", s.deleteRegistration)
	api("POST /api/v2/keys/{id}/aliases/{alias}", s.createAlias)
	api("DELETE /api/v2/keys/{id}/aliases/{alias}", s.deleteAlias)
	api("PATCH /api/v2/keys/{id}", s.setKeyRing)
	api("POST /api/v2/key_rings/{ring}", s.createKeyRing)
	api("GET /api/v2/key_rings", s.listKeyRings)
	api("DELETE /api/v2/key_rings/{ring}", s.deleteKeyRing)
	api("GET "+LifecyclePath, s.lifecycle)
	s.mux.HandleFunc(RewrapBatchPattern, s.batchRoute(s.rewrapBatch))               // batch.go
	s.mux.HandleFunc(RegistrationsBatchPattern, s.batchRoute(s.registrationsBatch)) // batch.go
	api("POST "+ImportTokenPath, s.createImportToken)
	api("GET "+ImportTokenPath, s.getImportToken)
	api("POST "+AcksPath, s.acknowledge)
	api("GET "+AcksPath, s.hostAcks)
	api("DELETE "+AcksPath, s.forgetHostAck)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// A path routed for another method gets 405; anything else 404.
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if m == r.Method {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := s.mux.Handler(probe); pattern != "/" && pattern != "" {
				writeError(w, &apiError{status: http.StatusMethodNotAllowed, code: "METHOD_NOT_ALLOWED_ERR", msg: fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path)})
				return
			}
		}
		writeError(w, &apiError{status: http.StatusNotFound, code: "NOT_FOUND_ERR", msg: fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)})
	})
}

// serveAPI authenticates a request and runs h; failures become the error envelope and an
// audit event.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, h func(*request) error) {
	r.Body = http.MaxBytesReader(w, r.Body, bodyLimit(r))
	corr, err := correlationID(r)
	if err != nil {
		writeError(w, badRequest("BAD_REQUEST_ERR", err.Error(), CorrelationHeader))
		return
	}
	w.Header().Set(CorrelationHeader, corr)
	// Instance ids are UUIDs: accepted in either case, used in lower case.
	instance, err := ident.CanonicalUUID(r.Header.Get("bluemix-instance"))
	if err != nil {
		writeError(w, badRequest("BAD_REQUEST_ERR", "Request requires valid Bluemix-Instance Header containing a valid UUID", ""))
		return
	}
	auth := r.Header.Get("Authorization")
	tok, ok := bearerToken(auth)
	if auth != "" && !ok {
		writeError(w, badRequest("BEARER_SUB_EXTRACTION_ERR", "the Authorization header must be \"Bearer <token>\"", "authorization"))
		return
	}
	svc, who, err := s.authorize(tok, instance)
	if err != nil {
		if !errors.Is(err, ErrUnauthorized) {
			// The instance exists but its store did not open: a failure, not a refusal.
			s.fail(w, r, err)
			return
		}
		writeError(w, unauthorized(err))
		return
	}
	// A store that stops answering (a frozen database, packets dropped) must still end the
	// request: with 503, before a Key Protect client's own 30 s timeout. The lifecycle
	// feed's long poll adds its wait.
	ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout+feedWait(r))
	defer cancel()
	ctx, _ = crk.WithCorrelationID(ctx, corr) // checked by correlationID
	q := &request{w: w, r: r, svc: svc, id: r.PathValue("id"),
		ctx: crk.WithInitiator(ctx, who),
		authorized: func() error {
			_, _, err := s.authorize(tok, instance)
			return err
		}}
	err = svc.CheckNetwork(q.ctx, s.local || PrivateAddr(r.RemoteAddr)) // allowedNetwork (instancepolicy.go)
	if err == nil {
		err = resolveID(q)
	}
	if err == nil {
		err = h(q)
	}
	if errors.Is(err, ErrUnauthorized) {
		// The caller's token was revoked (or expired) while the request waited
		// (request.reauthorize): the 401 of any request with that token, not audited
		// either.
		writeError(w, unauthorized(err))
		return
	}
	if err != nil {
		// The service audits its own refusals; requests refused here before reaching it
		// (malformed bodies, unknown actions) are audited as kms.secrets.default.
		var ae *apiError
		if errors.As(err, &ae) {
			if aerr := svc.RecordFailure(q.ctx, crk.ActionDefault, q.id, err); aerr != nil {
				err = aerr // a refusal without its audit record is an internal failure
			}
		}
		s.fail(w, r, err)
	}
}

// unauthorized is the answer to a request whose credentials err (wrapping [ErrUnauthorized])
// refused: 401, worded as Key Protect words it, without saying which check failed.
func unauthorized(err error) *apiError {
	msg := "The user does not have access to the specified resource"
	if errors.Is(err, ErrUnknownInstance) {
		msg = "Either the user does not have access to the specified resource, the resource does not exist, or the region is incorrectly set"
	}
	return &apiError{status: http.StatusUnauthorized, code: "UNAUTHORIZED_ERR", msg: msg}
}

// CorrelationHeader carries a request's correlation id: keyprotect-go-client sends a new UUID
// with every call (or the one its context holds). The server records it in the events of the
// request (crk.Event.CorrelationID) and answers with it; a request without one is given a new
// UUID, a malformed one (see crk.CheckCorrelationID) is refused with 400.
const CorrelationHeader = "Correlation-Id"

// correlationID returns the request's correlation id, or a new one if it has none.
func correlationID(r *http.Request) (string, error) {
	id := r.Header.Get(CorrelationHeader)
	if id == "" {
		return ident.NewUUID(rand.Reader)
	}
	if err := crk.CheckCorrelationID(id); err != nil {
		return "", fmt.Errorf("the %s header: %w", CorrelationHeader, err)
	}
	return id, nil
}

// fail writes err as the error envelope and logs it when it is the server's failure (not
// when the client went away first: its request was abandoned, not failed).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	ae := statusOf(err)
	if r.Context().Err() == nil {
		s.logFailure(r, ae.status, err)
	}
	writeError(w, err)
}

// RequestTimeout bounds the work of one API request (the lifecycle feed's long poll adds its
// wait): a store that stops answering ends it with 503 rather than holding it.
const RequestTimeout = 25 * time.Second

// feedWait is the long-poll wait a lifecycle feed request asks for (at most
// MaxLifecycleWait), zero for other requests and for a value the handler will refuse.
func feedWait(r *http.Request) time.Duration {
	if r.URL.Path != LifecyclePath {
		return 0
	}
	d, err := parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		return 0
	}
	return d
}

// logFailure logs a failed request whose status is a failure of the server: 503 at Warn,
// any other 5xx at Error. Only the method, the path and the error are logged: the query
// string, headers and body may hold tokens, API keys or key material.
func (s *Server) logFailure(r *http.Request, status int, err error) {
	switch {
	case status == http.StatusServiceUnavailable:
		s.log.Warn("request failed: key store unavailable", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	case status >= 500:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
}

// bearerToken returns the token of an Authorization header value "Bearer <token>". The scheme
// is matched without regard to letter case (RFC 7235 section 2.1: "bearer", "BEARER") and
// may be followed by any run of spaces or tabs; ok is false for another scheme or no token.
func bearerToken(auth string) (tok string, ok bool) {
	auth = strings.Trim(auth, " \t")
	i := strings.IndexAny(auth, " \t")
	if i < 0 || !strings.EqualFold(auth[:i], "Bearer") {
		return "", false
	}
	tok = strings.Trim(auth[i:], " \t")
	return tok, tok != ""
}

// decode reads a JSON body into v strictly: by type, with no member given twice in any object
// (see checkMembers) and nothing after the value; an empty body, {} and null leave v as is.
// Members v has no field for are ignored, as Key Protect ignores them; decodeKnown refuses
// them.
func decode(r *http.Request, v any) error { return decodeBody(r, v, false) }

// decodeKnown is decode for crkvol's own API, which refuses a member v has no field for (a
// misspelt field would otherwise be read as absent).
func decodeKnown(r *http.Request, v any) error { return decodeBody(r, v, true) }

func decodeBody(r *http.Request, v any, known bool) error {
	t, err := readBodyText(r)
	if err != nil || t == nil {
		return err
	}
	return decodeJSON(t, v, known)
}

// readBodyText reads the request's body (readBody) without its surrounding white space; nil
// when there is nothing to decode: an empty body, null or {}.
func readBodyText(r *http.Request) ([]byte, error) {
	raw, err := readBody(r)
	if err != nil {
		return nil, err
	}
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" || string(t) == "{}" {
		return nil, nil
	}
	return t, nil
}

// readBody reads a request's body, refusing one over the route's cap (serveAPI's bodyLimit)
// with 413.
func readBody(r *http.Request) ([]byte, error) {
	raw, err := readAll(r.Body, r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &apiError{status: http.StatusRequestEntityTooLarge, code: "BAD_BODY_ERR", msg: fmt.Sprintf("request body larger than %d bytes", mbe.Limit)}
		}
		return nil, badRequest("BAD_BODY_ERR", "reading the request body: "+err.Error(), "")
	}
	return raw, nil
}

// readAll is io.ReadAll with the buffer allocated at the size the request declares
// (Content-Length, n; -1 unknown), capped at MaxBody, plus one byte to read the end into:
// io.ReadAll starts at 512 bytes whatever the body, and a wrap body is 60. It reads until
// the end or an error, as io.ReadAll does, growing the buffer as it must.
func readAll(body io.Reader, n int64) ([]byte, error) {
	if n <= 0 || n > MaxBody {
		return io.ReadAll(body)
	}
	b := make([]byte, 0, n+1)
	for {
		m, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // a body longer than declared: grow
		}
	}
}

// decodeJSON decodes the non-empty JSON text t into v strictly: by type, no member given
// twice in any object (checkMembers), nothing after the value, and, if known, no member v
// has no field for.
func decodeJSON(t []byte, v any, known bool) error {
	if err := checkMembers(t); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(t))
	if known {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return ae
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return typeError(te)
		}
		return badRequest("BAD_BODY_ERR", "invalid JSON body: "+err.Error(), "")
	}
	if err := dec.Decode(&struct{}{}); err != io.EOF {
		return badRequest("BAD_BODY_ERR", "invalid JSON body: data after the value", "")
	}
	return nil
}

// typeError is the 400 for a body member of the wrong JSON type: it names the member by its
// path of JSON names and the JSON type it must have, never Go's type names.
func typeError(te *json.UnmarshalTypeError) error {
	want := jsonKind(te.Type)
	got, _, _ := strings.Cut(te.Value, " ") // "number 3" -> "number"
	if got == "bool" {
		got = "boolean"
	}
	if te.Field == "" {
		return badRequest("BAD_BODY_ERR", fmt.Sprintf("invalid JSON body: the body must be %s, not %s", want, article(got)), "")
	}
	return badRequest("BAD_BODY_ERR", fmt.Sprintf("invalid JSON body: member %s must be %s, not %s", te.Field, want, article(got)), te.Field)
}

// jsonKind names the JSON type a value of Go type t is read from, with its article.
func jsonKind(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "a JSON value"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	case reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		if t == reflect.TypeFor[time.Time]() {
			return "a date string"
		}
		return "an object"
	}
	return "a JSON value"
}

// article puts "a" or "an" before a JSON type name.
func article(kind string) string {
	if kind == "" {
		return "that value"
	}
	if strings.ContainsRune("aeiou", rune(kind[0])) {
		return "an " + kind
	}
	return "a " + kind
}

func b64(field, s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, badRequest("INVALID_FIELD_ERR", fmt.Sprintf("the field %q must be a base64 encoded string", field), field)
	}
	return b, nil
}

func keys(q *request, status int, ks ...crk.Key) error {
	res := make([]Key, 0, len(ks))
	for i := range ks {
		res = append(res, FromKey(&ks[i]))
	}
	writeJSON(q.w, status, map[string]any{"metadata": Metadata{CollectionType: TypeKey, CollectionTotal: len(res)}, "resources": res})
	return nil
}

type createBody struct {
	Metadata  *Metadata `json:"metadata"`
	Resources []struct {
		Name           string        `json:"name"`
		Description    string        `json:"description"`
		Extractable    bool          `json:"extractable"`
		Payload        *string       `json:"payload"`
		ExpirationDate string        `json:"expirationDate"`
		Rotation       *rotationBody `json:"rotation"`
		DualAuthDelete *dualAuthBody `json:"dualAuthDelete"`
		importFields

		Aliases []string `json:"aliases"` // aliases.go
	} `json:"resources"`
}

func (s *Server) createKey(q *request) error {
	var body createBody
	if err := decode(q.r, &body); err != nil {
		return err
	}
	if len(body.Resources) != 1 {
		return badRequest("BAD_BODY_ERR", "the request must create exactly one key", "resources")
	}
	if body.Metadata != nil && body.Metadata.CollectionTotal != len(body.Resources) {
		return badRequest("COLLECTION_TOTAL_MISMATCH_ERR", "collectionTotal does not match the number of resources", "collectionTotal")
	}
	res := body.Resources[0]
	opts := crk.CreateOptions{Name: res.Name, Description: res.Description, Type: crk.RootKey,
		Aliases: res.Aliases, KeyRingID: q.r.Header.Get(KeyRingHeader)}
	if res.Extractable {
		opts.Type = crk.StandardKey
	}
	em, err := res.material(res.Payload)
	if err != nil {
		return err
	}
	if em != nil {
		opts.Encrypted = em
	} else if res.Payload != nil {
		m, err := b64("payload", *res.Payload)
		if err != nil {
			return err
		}
		opts.Material = m
	}
	if res.ExpirationDate != "" {
		t, err := time.Parse(time.RFC3339, res.ExpirationDate)
		if err != nil {
			return badRequest("INVALID_FIELD_ERR", "expirationDate must be an RFC 3339 time", "expirationDate")
		}
		opts.ExpirationDate = t
	}
	if q.r.URL.Path == OverridesPath {
		p, err := createPolicies(res.Rotation, res.DualAuthDelete)
		if err != nil {
			return err
		}
		opts.Policies = p
	}
	k, err := q.svc.CreateKey(q.ctx, opts)
	if err != nil {
		return err
	}
	return keys(q, http.StatusCreated, *k)
}

// paging reads the limit (1 to 5000) and offset query parameters.
func paging(r *http.Request, defLimit int) (limit, offset int, err error) {
	v := r.URL.Query()
	limit = defLimit
	if l := v.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > 5000 {
			return 0, 0, badRequest("INVALID_QUERY_PARAM_ERR", "limit must be an integer from 1 to 5000", "limit")
		}
	}
	if o := v.Get("offset"); o != "" {
		if offset, err = strconv.Atoi(o); err != nil || offset < 0 {
			return 0, 0, badRequest("INVALID_QUERY_PARAM_ERR", "offset must be a non-negative integer", "offset")
		}
	}
	return limit, offset, nil
}

func (s *Server) listKeys(q *request) error {
	limit, offset, err := paging(q.r, 200)
	if err != nil {
		return err
	}
	opts, err := listQuery(q.r.URL.Query())
	if err != nil {
		return err
	}
	all, err := q.svc.ListKeys(q.ctx, opts)
	if err != nil {
		return err
	}
	total := len(all)
	page := all[min(offset, total):]
	page = page[:min(limit, len(page))]
	res := make([]Key, 0, len(page))
	for i := range page {
		res = append(res, FromKey(&page[i]))
	}
	writeJSON(q.w, http.StatusOK, map[string]any{
		"metadata":  Metadata{CollectionType: TypeKey, CollectionTotal: len(res), TotalCount: &total},
		"resources": res,
	})
	return nil
}

func (s *Server) getKey(q *request, withPayload bool) error {
	var k *crk.Key
	var err error
	if withPayload {
		k, err = q.svc.GetKey(q.ctx, q.id)
	} else {
		k, err = q.svc.GetKeyMetadata(q.ctx, q.id)
	}
	if err != nil {
		return err
	}
	j := FromKey(k)
	if withPayload && k.Payload != nil {
		j.Payload = base64.StdEncoding.EncodeToString(k.Payload)
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"metadata": Metadata{CollectionType: TypeKey, CollectionTotal: 1}, "resources": []Key{j}})
	return nil
}

type actionBody struct {
	Plaintext  *string `json:"plaintext"`
	Ciphertext *string `json:"ciphertext"`
	AAD        aadList `json:"aad"`
	Payload    *string `json:"payload"`
	importFields
}

func version(v crk.Version) *KeyVersion {
	return &KeyVersion{ID: v.ID, CreationDate: RFC3339(v.CreationDate)}
}

// actionAnswer is the body of a wrap, unwrap or rewrap answer, its members in the order a
// map of them is written in.
type actionAnswer struct {
	Ciphertext          string      `json:"ciphertext,omitempty"`
	KeyVersion          *KeyVersion `json:"keyVersion,omitempty"`
	Plaintext           string      `json:"plaintext,omitempty"`
	RewrappedKeyVersion *KeyVersion `json:"rewrappedKeyVersion,omitempty"`
}

func (s *Server) action(q *request, action string) error {
	var body actionBody
	if err := decodeAction(q.r, &body); err != nil {
		return err
	}
	switch action {
	case "rotate":
		em, err := body.material(body.Payload)
		if err != nil {
			return err
		}
		if em != nil {
			if _, err := q.svc.RotateKeyEncrypted(q.ctx, q.id, em); err != nil {
				return err
			}
			q.w.WriteHeader(http.StatusNoContent)
			break
		}
		var material []byte
		if body.Payload != nil {
			m, err := b64("payload", *body.Payload)
			if err != nil {
				return err
			}
			material = m
		}
		if _, err := q.svc.RotateKey(q.ctx, q.id, material); err != nil {
			return err
		}
		q.w.WriteHeader(http.StatusNoContent)
	case "wrap":
		var res *crk.WrapResult
		var err error
		if body.Plaintext == nil {
			res, err = q.svc.WrapCreateDEK(q.ctx, q.id, body.AAD)
		} else {
			var pt []byte
			if pt, err = b64("plaintext", *body.Plaintext); err != nil {
				return err
			}
			res, err = q.svc.Wrap(q.ctx, q.id, pt, body.AAD)
			clear(pt)
		}
		if err != nil {
			return err
		}
		out := actionAnswer{Ciphertext: base64.StdEncoding.EncodeToString(res.Ciphertext), KeyVersion: version(res.KeyVersion)}
		if res.Plaintext != nil {
			out.Plaintext = base64.StdEncoding.EncodeToString(res.Plaintext)
			clear(res.Plaintext)
		}
		writeAnswer(q.w, http.StatusOK, &out)
	case "unwrap", "rewrap":
		if body.Ciphertext == nil {
			return badRequest("BAD_BODY_ERR", "ciphertext is required", "ciphertext")
		}
		ct, err := b64("ciphertext", *body.Ciphertext)
		if err != nil {
			return err
		}
		if action == "rewrap" {
			res, err := q.svc.Rewrap(q.ctx, q.id, ct, body.AAD)
			if err != nil {
				return err
			}
			writeAnswer(q.w, http.StatusOK, &actionAnswer{
				Ciphertext: base64.StdEncoding.EncodeToString(res.Ciphertext),
				KeyVersion: version(res.OldVersion), RewrappedKeyVersion: version(res.KeyVersion),
			})
			return nil
		}
		res, err := q.svc.Unwrap(q.ctx, q.id, ct, body.AAD)
		if err != nil {
			return err
		}
		out := actionAnswer{Plaintext: base64.StdEncoding.EncodeToString(res.Plaintext), KeyVersion: version(res.KeyVersion)}
		if res.Rewrapped != nil {
			out.Ciphertext = base64.StdEncoding.EncodeToString(res.Rewrapped)
			out.RewrappedKeyVersion = version(res.RewrappedVersion)
		}
		clear(res.Plaintext)
		writeAnswer(q.w, http.StatusOK, &out)
	case "disable":
		if _, err := q.svc.DisableKey(q.ctx, q.id); err != nil {
			return err
		}
		q.w.WriteHeader(http.StatusNoContent)
	case "enable":
		if _, err := q.svc.EnableKey(q.ctx, q.id); err != nil {
			return err
		}
		q.w.WriteHeader(http.StatusNoContent)
	case "sync":
		if err := q.svc.SyncKey(q.ctx, q.id); err != nil {
			return err
		}
		q.w.WriteHeader(http.StatusNoContent)
	case "setKeyForDeletion", "unsetKeyForDeletion":
		return s.dualAuthAction(q, action == "setKeyForDeletion")
	default:
		return badRequest("INVALID_QUERY_PARAM_ERR", fmt.Sprintf("unknown key action %q", action), "action")
	}
	return nil
}

func (s *Server) deleteKey(q *request) error {
	force, err := boolParam(q.r.URL.Query(), "force")
	if err != nil {
		return err
	}
	k, err := q.svc.DeleteKey(q.ctx, q.id, crk.DeleteOptions{Force: force})
	if err != nil {
		return err
	}
	return keyOrNoContent(q, k)
}

// keyOrNoContent answers a delete or purge as Key Protect does: 204, or 200 with the key
// for Prefer: return=representation.
func keyOrNoContent(q *request, k *crk.Key) error {
	if strings.Contains(q.r.Header.Get("Prefer"), "return=representation") {
		return keys(q, http.StatusOK, *k)
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) restoreKey(q *request) error {
	k, err := q.svc.RestoreKey(q.ctx, q.id)
	if err != nil {
		return err
	}
	return keys(q, http.StatusCreated, *k)
}

// purgeKey destroys a deleted key's material (keyOrNoContent).
func (s *Server) purgeKey(q *request) error {
	k, err := q.svc.PurgeKey(q.ctx, q.id)
	if err != nil {
		return err
	}
	return keyOrNoContent(q, k)
}

// versions lists a key's versions, newest first, with the query parameters of
// keyprotect-go-client's ListKeyVersionsOptions: limit, offset, totalCount (true adds the
// number of versions before paging to the metadata, as Key Protect does only when asked)
// and allKeyStates (accepted, true or false: crkvol lists the versions of a key in any
// state either way).
func (s *Server) versions(q *request) error {
	limit, offset, err := paging(q.r, 200)
	if err != nil {
		return err
	}
	withTotal, err := boolParam(q.r.URL.Query(), "totalCount")
	if err != nil {
		return err
	}
	if _, err := boolParam(q.r.URL.Query(), "allKeyStates"); err != nil {
		return err
	}
	vs, err := q.svc.ListVersions(q.ctx, q.id)
	if err != nil {
		return err
	}
	total := len(vs)
	vs = vs[min(offset, total):]
	vs = vs[:min(limit, len(vs))]
	res := make([]KeyVersion, 0, len(vs))
	for _, v := range vs {
		res = append(res, KeyVersion{ID: v.ID, CreationDate: RFC3339(v.CreationDate), Destroyed: &v.Destroyed})
	}
	md := Metadata{CollectionType: TypeKeyVersion, CollectionTotal: len(res)}
	if withTotal {
		md.TotalCount = &total
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"metadata": md, "resources": res})
	return nil
}

func (s *Server) listRegistrations(q *request) error {
	crn := q.r.URL.Query().Get("urlEncodedResourceCRNQuery")
	regs, err := q.svc.ListRegistrations(q.ctx, crk.RegistrationFilter{KeyID: q.id, CRN: crn})
	if err != nil {
		return err
	}
	res := make([]Registration, 0, len(regs))
	for _, r := range regs {
		res = append(res, FromRegistration(r))
	}
	total := len(res)
	writeJSON(q.w, http.StatusOK, map[string]any{"metadata": Metadata{CollectionType: TypeRegistration, CollectionTotal: total, TotalCount: &total}, "resources": res})
	return nil
}

type registrationBody struct {
	Description        *string     `json:"description"`
	PreventKeyDeletion *bool       `json:"preventKeyDeletion"`
	KeyVersion         *KeyVersion `json:"keyVersion"`
}

func pathCRN(q *request) (string, error) {
	crn := q.r.PathValue("crn") // already unescaped by the router
	if crn == "" {
		return "", badRequest("INVALID_FIELD_ERR", "the resource CRN in the path is not URL-encoded", "urlEncodedResourceCRN")
	}
	return crn, nil
}

func (s *Server) register(q *request) error {
	crn, err := pathCRN(q)
	if err != nil {
		return err
	}
	var body registrationBody
	if err := decode(q.r, &body); err != nil {
		return err
	}
	opts := crk.RegisterOptions{}
	if body.Description != nil {
		opts.Description = *body.Description
	}
	if body.PreventKeyDeletion != nil {
		opts.PreventKeyDeletion = *body.PreventKeyDeletion
	}
	if body.KeyVersion != nil {
		opts.VersionID = body.KeyVersion.ID
	}
	reg, err := q.svc.Register(q.ctx, q.id, crn, opts)
	if err != nil {
		return err
	}
	writeJSON(q.w, http.StatusCreated, map[string]any{"metadata": Metadata{CollectionType: TypeRegistration, CollectionTotal: 1}, "resources": []Registration{FromRegistration(*reg)}})
	return nil
}

// updateRegistration changes a registration. A keyVersion older than the one the registration
// has is ignored (crk's NoDowngrade): resources rewrap only forwards, so an older version can
// only come from a late update racing a newer rewrap, which must not move the registration
// back (the volume.KeyService contract, kept the same in-process and over the API).
func (s *Server) updateRegistration(q *request) error {
	crn, err := pathCRN(q)
	if err != nil {
		return err
	}
	var body registrationBody
	if err := decode(q.r, &body); err != nil {
		return err
	}
	u := crk.RegistrationUpdate{Description: body.Description, PreventKeyDeletion: body.PreventKeyDeletion, NoDowngrade: true}
	if body.KeyVersion != nil {
		u.VersionID = &body.KeyVersion.ID
	}
	reg, err := q.svc.UpdateRegistration(q.ctx, q.id, crn, u)
	if err != nil {
		return err
	}
	writeJSON(q.w, http.StatusOK, map[string]any{"metadata": Metadata{CollectionType: TypeRegistration, CollectionTotal: 1}, "resources": []Registration{FromRegistration(*reg)}})
	return nil
}

func (s *Server) deleteRegistration(q *request) error {
	crn, err := pathCRN(q)
	if err != nil {
		return err
	}
	if err := q.svc.DeleteRegistration(q.ctx, q.id, crn); err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}

// token exchanges an API key for a bearer token, as IAM's token endpoint does.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"errorCode": "BXNIM0109E", "errorMessage": "Property missing or empty: grant_type must be urn:ibm:params:oauth:grant-type:apikey"})
		return
	}
	tok, life, err := s.tenants.Exchange(r.PostForm.Get("apikey"))
	switch {
	case errors.Is(err, ErrUnauthorized):
		writeJSON(w, http.StatusBadRequest, map[string]any{"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."})
		return
	case errors.Is(err, crk.ErrUnavailable):
		// The store out of reach: not a refusal of the key; a client tries again later.
		s.logFailure(r, http.StatusServiceUnavailable, err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"errorCode": "BXNIM0400E", "errorMessage": "The token could not be issued: the service is unavailable; try again later."})
		return
	case err != nil:
		// The server's own failure (its API key table unreadable, no randomness): not a
		// refusal of the key, which a client must be free to try again.
		s.logFailure(r, http.StatusInternalServerError, err)
		writeJSON(w, http.StatusInternalServerError, map[string]any{"errorCode": "BXNIM0400E", "errorMessage": "The token could not be issued; try again later."})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok, "refresh_token": "not_supported", "token_type": "Bearer",
		"expires_in": int(life.Seconds()), "expiration": time.Now().Add(life).Unix(),
	})
}
