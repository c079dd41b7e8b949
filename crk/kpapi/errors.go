package kpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"

	"crkvol/crk"
	"crkvol/internal/pgdb"
)

// moreInfo is the documentation link every reason carries.
const moreInfo = "https://cloud.ibm.com/apidocs/key-protect"

// apiError is a response with its HTTP status, Key Protect reason code, target field and, for
// crk's sentinels, the sentinel's stable id.
type apiError struct {
	status int
	code   string
	msg    string
	target string
	id     string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(code, msg, target string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, msg: msg, target: target}
}

// statusOf maps an error to its response: the errors of this package as they are, crk's
// sentinels by the error table ([crk.Errors]) — a PostgreSQL store that stayed unreachable
// through its retries, or went away during a COMMIT, is crk.ErrUnavailable's 503 however it
// is wrapped (the client may send the request again, to this replica or another) — and
// anything else as an internal error whose text stays in the server.
func statusOf(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	if !errors.Is(err, crk.ErrUnavailable) && (errors.Is(err, pgdb.ErrUnavailable) || errors.Is(err, pgdb.ErrCommitUnknown)) {
		// A database error that reached the API without crk's or the tenants' wrapping
		// still answers with crk.ErrUnavailable's row (503, and its id for the client).
		err = fmt.Errorf("%w: %w", crk.ErrUnavailable, err)
	}
	info, ok := crk.LookupError(err)
	if !ok {
		return &apiError{status: http.StatusInternalServerError, code: "INTERNAL_SERVER_ERR", msg: "internal error"}
	}
	msg := err.Error()
	if info.Class != crk.Refusal {
		msg = publicMessage(info.Err)
	}
	return &apiError{status: info.Status, code: info.Code, msg: msg, target: info.Target, id: info.ID}
}

// publicMessage is the message a failure's response carries in place of the error's text,
// which stays in the server (it may name hosts, users or files): what the failure is, when
// saying so helps the client, else "internal error".
func publicMessage(sentinel error) string {
	if sentinel == crk.ErrUnavailable {
		return "the key service's store is unavailable; try again later"
	}
	return "internal error"
}

// WriteError writes err as the Key Protect error envelope ([ErrorBody]), as [Server] does for
// every failed request: crk's sentinels get the status, reason code and id of their row in
// [crk.Errors]; any other error is a 500 whose text is not sent. For handlers that sit beside
// a Server (middleware, a proxy).
func WriteError(w http.ResponseWriter, err error) { writeError(w, err) }

// writeError writes the Key Protect error envelope.
func writeError(w http.ResponseWriter, err error) {
	ae := statusOf(err)
	reason := ErrorReason{Code: ae.code, Message: ae.msg, Status: ae.status, MoreInfo: moreInfo, CrkvolError: ae.id}
	if ae.target != "" {
		reason.Target = &ErrorTarget{Type: "field", Name: ae.target}
	}
	text := http.StatusText(ae.status)
	body := ErrorBody{
		Metadata: Metadata{CollectionType: TypeError, CollectionTotal: 1},
		Resources: []ErrorResource{{
			ErrorMsg: text + ": " + strings.TrimPrefix(ae.msg, text+": "),
			Reasons:  []ErrorReason{reason},
		}},
	}
	writeJSON(w, ae.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// maxMessage caps the message a ResponseError keeps from a response body.
const maxMessage = 1024

// ResponseError is an error response of a Key Protect–compatible service, as a client sees
// it. It wraps the crk sentinel the response stands for, when one can be told, so errors.Is
// works the same whether the service is in-process or remote.
type ResponseError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the Key Protect reason code, or "" when the body carried none (escaped and
	// capped as Message is).
	Code string
	// Message is the service's message (at most 1 KiB of it, control characters escaped: see
	// [Printable]).
	Message string
	// Sentinel is the crk sentinel the response maps to, or nil when none can be told.
	Sentinel error
}

// Error returns the status, reason code and message.
func (e *ResponseError) Error() string {
	code := e.Code
	if code == "" {
		code = "no reason code"
	}
	return fmt.Sprintf("%d %s: %s", e.Status, code, e.Message)
}

// Unwrap returns the sentinel.
func (e *ResponseError) Unwrap() error { return e.Sentinel }

// Refused reports whether the response refuses the request rather than reporting a failure:
// the class of its sentinel in [crk.Errors], or without one, [RefusedStatus] of its status.
func (e *ResponseError) Refused() bool {
	if info, ok := crk.LookupError(e.Sentinel); ok {
		return info.Class == crk.Refusal
	}
	return RefusedStatus(e.Status)
}

// RefusedStatus reports whether an HTTP status refuses the request, for a response with no
// row of [crk.Errors] behind it: any 4xx except those that ask the client to come back
// later (408 Request Timeout, 425 Too Early, 429 Too Many Requests; see [TransientStatus]).
// This is the one rule; the remote key service and its token handling use it too.
func RefusedStatus(status int) bool {
	return status >= 400 && status < 500 && !TransientStatus(status)
}

// TransientStatus reports whether an HTTP status is a failure that may pass when the request
// is sent again: 408, 425, 429, and any 5xx except 501 Not Implemented.
func TransientStatus(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	case http.StatusNotImplemented:
		return false
	}
	return status >= 500 && status < 600
}

// ParseError reads an error response. The sentinel comes from the reason's crkvolError id
// when the service sends one (crkvol's does) and that id's row has the response's status (so
// a server cannot make a 503 a refusal, or a 410 a failure, by naming another row); otherwise
// from the reason code, status and target when exactly one refusal of [crk.Errors] has them
// (KEY_NOT_FOUND_ERR, 404 is [crk.ErrKeyNotFound]; KEY_ACTION_INVALID_STATE_ERR, 409 could be
// three sentinels and maps to none). An error with no sentinel keeps its status and code in
// its message.
//
// The message and reason code are the server's text, shown to people: control characters
// (escape sequences, line breaks, bidirectional overrides) are escaped, invalid UTF-8 is
// replaced, and each is capped at 1 KiB.
func ParseError(status int, body []byte) *ResponseError {
	e := &ResponseError{Status: status, Message: http.StatusText(status)}
	var env ErrorBody
	if json.Unmarshal(body, &env) != nil || len(env.Resources) == 0 {
		if e.Message == "" {
			e.Message = "unexpected status"
		}
		return e
	}
	res := env.Resources[0]
	if res.ErrorMsg != "" {
		e.Message = res.ErrorMsg
	}
	if len(res.Reasons) > 0 {
		r := res.Reasons[0]
		e.Code = r.Code
		if r.Message != "" {
			e.Message = r.Message
		}
		target := ""
		if r.Target != nil {
			target = r.Target.Name
		}
		e.Sentinel = sentinelOf(r.CrkvolError, r.Code, status, target)
	}
	e.Message = Printable(e.Message, maxMessage)
	e.Code = Printable(e.Code, maxMessage)
	return e
}

// Printable returns a server's text s fit for a terminal or a log line: control characters
// (C0, DEL, C1), format characters (bidirectional controls, zero-width characters) and line
// and paragraph separators escaped as \n, \x1b, \u202e and the like, invalid UTF-8 replaced by U+FFFD, and at most max bytes kept before a "..." that marks
// a cut (an escape is never cut in half).
func Printable(s string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		piece := string(r)
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			piece = escapeRune(r)
		}
		if b.Len()+len(piece) > max {
			b.WriteString("...")
			return b.String()
		}
		b.WriteString(piece)
	}
	return b.String()
}

// escapeRune writes a control character as Go source would.
func escapeRune(r rune) string {
	switch r {
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\t':
		return `\t`
	}
	switch {
	case r < 0x80:
		return fmt.Sprintf(`\x%02x`, r)
	case r > 0xffff:
		return fmt.Sprintf(`\U%08x`, r)
	}
	return fmt.Sprintf(`\u%04x`, r)
}

// sentinelOf finds the sentinel of a reason: by id when that row's status and class agree
// with the response's, else by the only refusal with its code, status and target.
func sentinelOf(id, code string, status int, target string) error {
	if info, ok := crk.ErrorByID(id); ok && id != "" && info.Status == status &&
		(info.Class == crk.Refusal) == RefusedStatus(status) {
		return info.Err
	}
	var found error
	for _, info := range crk.Errors() {
		// An internal failure is told by its id only: a 500 from another service is no
		// statement about crk's master key.
		if info.Class == crk.Refusal && info.Code == code && info.Status == status && info.Target == target {
			if found != nil {
				return nil
			}
			found = info.Err
		}
	}
	return found
}
