package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/spf13/cobra"

	"crkvol/crk/kpapi"
	"crkvol/internal/ident"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// `crkvol kp …` runs the Key Protect CLI plug-in's commands (`ibmcloud kp …`) with the same
// flags and output shape. Every command talks the Key Protect API v2 through the official
// client (keyprotect-go-client): with --kms-url to that service, and otherwise to the state
// directory's embedded key service through an in-process transport that hands each request
// to crk/kpapi's handler (no socket), as the default instance, the caller audited as
// "cli:<user>".

// kpInstanceEnv is the Key Protect CLI's environment variable for --instance-id.
const kpInstanceEnv = "KP_INSTANCE_ID"

// kpFlags are the flags every kp command shares.
type kpFlags struct {
	instance string // -i, --instance-id
	output   string // -o, --output: "" or table, or json
}

// kpCommand is `crkvol kp`.
func (a *app) kpCommand() *cobra.Command {
	f := &kpFlags{}
	k := group("kp", "Run Key Protect CLI plug-in commands (ibmcloud kp …) against the key service")
	k.Long = `Run the commands of the Key Protect CLI plug-in (ibmcloud kp …) with the same flags and
output: "crkvol kp key create my-key" does what "ibmcloud kp key create my-key" does.

They talk the Key Protect API v2 through IBM's official client: with --kms-url to that service
(API key in CRKVOL_KMS_APIKEY or token in CRKVOL_KMS_TOKEN), otherwise to the state directory's
embedded key service, in process, as its default instance; its audit events name the caller
cli:$USER. On the embedded service dual authorization delete separates people only by $USER,
which anyone can set: whoever can open the state directory holds its master key and can do
anything. Use --kms-url with an API key per person for real separation.

-i, --instance-id (env KP_INSTANCE_ID) names the instance: with --kms-url it is the remote
instance (as --kms-instance); for the embedded service it must be the default instance's id.
Give -o json (or --json) for JSON output. A command prints its progress line, then SUCCESS
and its result, or FAILED and the error (on stderr).`
	k.PersistentFlags().StringVarP(&f.instance, "instance-id", "i", "", "the Key Protect instance id (env "+kpInstanceEnv+")")
	k.PersistentFlags().StringVarP(&f.output, "output", "o", "", "output format: table (the default) or json")
	k.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		// The root's PersistentPreRun does not run once a child has its own.
		a.readOnly, a.auditedRead = readOnlyCommand(cmd)
		switch strings.ToLower(f.output) {
		case "", "table":
		case "json":
			a.asJSON = true
		default:
			return usagef("--output %q: want table or json", f.output)
		}
		return nil
	}
	key := group("key", "Manage individual keys")
	key.AddCommand(a.kpKeyCommands(f)...)
	token := group("import-token", "Prepare a root key for secure import")
	token.AddCommand(a.kpImportTokenCommands(f)...)
	k.AddCommand(key, token, a.kpInstanceCommand(f), a.kpKeysCommand(f), a.kpRegistrationsCommand(f), a.kpKeyRingsCommand(f), a.kpKeyRingCommand(f))
	return k
}

// kpSession is one kp command's connection to the key service: the official client and
// the way to call it.
type kpSession struct {
	a        *app
	client   *kp.Client
	instance string
	// remote is the remote key service with --kms-url (its tokens and TLS), or nil for
	// the embedded one.
	remote *kms.Remote
}

// kpPrincipal is who the embedded key service records as acting: "cli:" and the user.
func (a *app) kpPrincipal() string {
	for _, v := range []string{"USER", "LOGNAME"} {
		if u := a.getenv(v); u != "" {
			return "cli:" + kpapi.Printable(u, 64)
		}
	}
	return "cli:uid-" + strconv.Itoa(os.Getuid())
}

// kpInstance returns -i, --instance-id, else KP_INSTANCE_ID, canonical; "" if neither.
func (a *app) kpInstance(f *kpFlags) (string, error) {
	v := f.instance
	if v == "" {
		v = a.getenv(kpInstanceEnv)
	}
	if v == "" {
		return "", nil
	}
	id, err := ident.CanonicalUUID(v)
	if err != nil {
		return "", usagef("--instance-id %q: an instance id is a UUID", kpapi.Printable(v, 64))
	}
	return id, nil
}

// kpOpen opens the key service for a kp command and returns its session.
func (a *app) kpOpen(ctx context.Context, f *kpFlags) (*kpSession, error) {
	inst, err := a.kpInstance(f)
	if err != nil {
		return nil, err
	}
	remoteURL := a.remoteURL()
	if remoteURL != "" && inst != "" {
		other := a.kmsInst
		if other == "" {
			other = a.getenv("CRKVOL_KMS_INSTANCE")
		}
		if other != "" && !strings.EqualFold(other, inst) {
			return nil, usagef("--instance-id %s and --kms-instance %s name different instances", inst, kpapi.Printable(other, 64))
		}
		a.kmsInst = inst
	}
	if remoteURL != "" && inst == "" && a.kmsInst == "" && a.getenv("CRKVOL_KMS_INSTANCE") == "" {
		return nil, usagef("--kms-url needs the instance: give -i, --instance-id (or %s, --kms-instance, CRKVOL_KMS_INSTANCE)", kpInstanceEnv)
	}
	if err := a.open(ctx); err != nil {
		return nil, err
	}
	s := &kpSession{a: a}
	var transport http.RoundTripper
	cfg := kp.ClientConfig{Verbose: kp.VerboseNone}
	if a.remote != nil {
		s.remote = a.remote
		s.instance = a.kmsInst
		if s.instance == "" {
			s.instance = a.getenv("CRKVOL_KMS_INSTANCE")
		}
		cfg.BaseURL = strings.TrimRight(remoteURL, "/")
		transport = a.remote.Transport()
	} else {
		s.instance = a.svc.Instance()
		if inst != "" && inst != s.instance {
			return nil, withHint(fmt.Errorf("--instance-id %s: the embedded key service is instance %s", inst, s.instance),
				"give --kms-url to reach another instance on a remote key service")
		}
		cfg.BaseURL = "http://crkvol.invalid"
		cfg.Authorization = "Bearer local"
		log := slog.New(slog.NewTextHandler(a.stderr, nil))
		transport = handlerTransport{kpapi.NewLocalServer(a.svc, a.kpPrincipal(), kpapi.WithLogger(log))}
	}
	cfg.InstanceID = s.instance
	c, err := kp.NewWithLogger(cfg, &kpTransport{next: transport}, kp.NewLogger(func(...any) {}))
	if err != nil {
		return nil, err
	}
	s.client = c
	return s, nil
}

// kpCallKey is the context key of a call's kpCall.
type kpCallKey struct{}

// kpCall is the state of one call of the official client: the failure that ended it, when
// kpTransport stopped the client's retries.
type kpCall struct {
	cancel context.CancelFunc

	mu     sync.Mutex
	status int    // the status of the response that ended the call, or 0
	body   []byte // its body
	err    error  // the transport error that ended the call
	method string
	// capture keeps the body of each successful response in ok (see kpSession.callRaw).
	capture bool
	ok      []byte
}

// failure returns the recorded failure, or nil.
func (c *kpCall) failure() (status int, body []byte, method string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status, c.body, c.method, c.err
}

// kpTransport is the official client's transport. The client retries a request that failed
// in transit or got 429 or a 5xx other than 501, four times, waiting 1 s to 30 s between the
// attempts, whatever the request: a rotate answered 502 by a proxy after the service acted
// would be sent again, and a store failure of the embedded service would hold the command
// for 15 s. kpTransport ends such a call at once instead: it records the response (or the
// error) in the call's kpCall and cancels the call's context, which stops the client's
// retry loop; kpSession.call then reports the recorded failure. It retries nothing itself:
// a command that fails this way can be run again.
type kpTransport struct{ next http.RoundTripper }

// maxKPBody caps the error body kept from a response that ends a call.
const maxKPBody = 64 << 10

// RoundTrip implements http.RoundTripper.
func (t *kpTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	c, _ := req.Context().Value(kpCallKey{}).(*kpCall)
	if c == nil {
		return resp, err
	}
	if err == nil && resp.StatusCode != http.StatusTooManyRequests && (resp.StatusCode < 500 || resp.StatusCode == http.StatusNotImplemented) {
		if c.capture && resp.StatusCode < 300 {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxKPBody))
			resp.Body.Close()
			if rerr != nil {
				return nil, rerr
			}
			c.mu.Lock()
			c.ok = body
			c.mu.Unlock()
			resp.Body = io.NopCloser(bytes.NewReader(body))
		}
		return resp, nil
	}
	c.mu.Lock()
	c.method = req.Method
	if err != nil {
		c.err = err
	} else {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxKPBody))
		resp.Body.Close()
		if rerr != nil {
			c.err = rerr
		}
		c.status, c.body = resp.StatusCode, body
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	c.mu.Unlock()
	c.cancel()
	return resp, err
}

// handlerTransport serves requests with an http.Handler in process: the embedded key
// service's kpapi server.
type handlerTransport struct{ h http.Handler }

// RoundTrip implements http.RoundTripper.
func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// The server's mux records the route on the request it serves: serve a copy.
	r := req.Clone(req.Context())
	if r.Body == nil {
		r.Body = http.NoBody
	}
	r.RequestURI = req.URL.RequestURI()
	r.RemoteAddr = "127.0.0.1:0" // in process: as local as loopback (allowedNetwork)
	w := &responseBuffer{header: http.Header{}}
	t.h.ServeHTTP(w, r)
	if req.Body != nil {
		req.Body.Close()
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)), StatusCode: w.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: w.header, Body: io.NopCloser(bytes.NewReader(w.body.Bytes())),
		ContentLength: int64(w.body.Len()), Request: req,
	}, nil
}

// responseBuffer is the http.ResponseWriter of handlerTransport.
type responseBuffer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *responseBuffer) Header() http.Header { return w.header }

func (w *responseBuffer) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *responseBuffer) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(b)
}

// call runs fn, calls of the official client, with the credentials of the session: the
// remote service's bearer token (renewed once after a 401), or none in process. An error
// response becomes the crk sentinel it stands for (kpapi.ResponseError, the server's text
// escaped); a request that changes the remote service's state and ends without an answer,
// or with a 5xx, may have acted: its error says so and matches kms.ErrOutcomeUnknown.
func (s *kpSession) call(ctx context.Context, fn func(ctx context.Context, c *kp.Client) error) error {
	_, err := s.callCapture(ctx, false, fn)
	return err
}

// callRaw is call that also returns the body of the last successful response, as the
// service sent it: for the members the official client drops (a key's
// dualAuthDelete.keySetForDeletion and authExpiration).
func (s *kpSession) callRaw(ctx context.Context, fn func(ctx context.Context, c *kp.Client) error) ([]byte, error) {
	return s.callCapture(ctx, true, fn)
}

func (s *kpSession) callCapture(ctx context.Context, capture bool, fn func(ctx context.Context, c *kp.Client) error) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	state := &kpCall{cancel: cancel, capture: capture}
	ctx = context.WithValue(ctx, kpCallKey{}, state)
	run := func(ctx context.Context, auth string) error {
		return recoverClient(func() error { return fn(kp.NewContextWithAuth(ctx, auth), s.client) })
	}
	var err error
	if s.remote != nil {
		err = s.remote.Authorized(ctx, run)
	} else {
		err = run(ctx, "Bearer local")
	}
	if err == nil {
		state.mu.Lock()
		defer state.mu.Unlock()
		return state.ok, nil
	}
	if errors.Is(err, kms.ErrCertificate) {
		return nil, err
	}
	status, body, method, terr := state.failure()
	changes := method != "" && method != http.MethodGet
	switch {
	case status != 0:
		err = kms.ClientError(&kp.Error{StatusCode: status, BodyContent: body})
		if changes && s.remote != nil && status >= 500 {
			err = fmt.Errorf("%w: the service may have acted on the request (%w); look before trying again", kms.ErrOutcomeUnknown, err)
		}
	case terr != nil:
		err = terr
		if changes && s.remote != nil {
			err = fmt.Errorf("%w: the connection failed after the request may have been sent (%w); look before trying again", kms.ErrOutcomeUnknown, err)
		}
	default:
		err = kms.ClientError(err)
	}
	return nil, err
}

// recoverClient runs fn, a call of the official client, turning its panic into an error:
// keyprotect-go-client v0.15.1 takes the first resource of a success answer without
// checking that there is one.
func recoverClient(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: the Key Protect client could not read the service's answer (%v)", volume.ErrIncompleteAnswer, p)
		}
	}()
	return fn()
}

// kpKeyRef matches what a key argument may be: a key id (a UUID) or an alias (Key Protect's
// alias syntax: 2 to 90 letters, digits, - and _).
var kpKeyRef = regexp.MustCompile(`^[A-Za-z0-9_-]{2,90}$`)

// checkKeyRef refuses a key argument that is neither a key id nor an alias, before it goes
// into a request path.
func checkKeyRef(what, ref string) error {
	if !kpKeyRef.MatchString(ref) {
		return usagef("%s %q: want a key id or an alias (2 to 90 letters, digits, - or _)", what, kpapi.Printable(ref, 96))
	}
	return nil
}
