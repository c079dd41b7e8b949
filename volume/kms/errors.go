package kms

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/IBM/keyprotect-go-client/iam"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
)

// ErrCredentialsRefused marks a key service's refusal of the caller's credentials: a 401 or
// 403 answer of the service, or the token endpoint refusing the API key. Whatever the
// service's state, a caller so refused can no longer ask it anything (an attach process can
// no longer make sure its key is still usable).
var ErrCredentialsRefused = errors.New("the key service refused the credentials")

// serviceError is an error of a key service, marked with volume.ErrKeyRefused when it refuses
// the request. Its text is the service's error's; errors.Is and errors.As find the service's
// error (and so its crk sentinel), the client's own error type when there is one, and the mark.
type serviceError struct {
	err     error
	cause   error // the official client's error, or nil
	refused bool
	// credentials marks a refusal of the caller's credentials by the token endpoint.
	credentials bool
}

// credentialStatus reports whether err is an API error response of status 401 or 403.
func credentialStatus(err error) bool {
	var re *kpapi.ResponseError
	return errors.As(err, &re) && (re.Status == http.StatusUnauthorized || re.Status == http.StatusForbidden)
}

func (e *serviceError) Error() string { return e.err.Error() }

func (e *serviceError) Unwrap() []error {
	out := []error{e.err}
	if e.cause != nil {
		out = append(out, e.cause)
	}
	if e.refused {
		out = append(out, volume.ErrKeyRefused)
	}
	if e.credentials || credentialStatus(e.err) {
		out = append(out, ErrCredentialsRefused)
	}
	if errors.Is(e.err, crk.ErrResyncNeeded) {
		out = append(out, volume.ErrResyncNeeded)
	}
	return out
}

// localError marks the refusals of the in-process service: the class of their sentinel in
// crk's error table.
func localError(err error) error {
	if err == nil || !crk.IsUserError(err) {
		return err
	}
	return &serviceError{err: err, refused: true}
}

// responseError maps an error response of the API to its crk sentinel and class.
func responseError(status int, body []byte, cause error) error {
	re := kpapi.ParseError(status, body)
	return &serviceError{err: re, cause: cause, refused: re.Refused()}
}

// ClientError maps an error of the official client, such as one of a key management call
// through [Remote.Client], as Remote maps its own: an error response becomes a
// [kpapi.ResponseError] (the crk sentinel it stands for, the server's text escaped and
// capped: print this rather than the client's error, whose text is the server's as sent),
// marked with volume.ErrKeyRefused when it refuses the request; the client's error stays
// reachable with errors.As. Any other error is returned as it is.
func ClientError(err error) error { return clientError(err) }

// recovered runs fn, a call of the official client, turning its panic into an error; the
// error is otherwise fn's, unmapped. keyprotect-go-client v0.15.1 takes the first resource of
// a success answer without checking that there is one, so a service answering 2xx with no
// resources makes it panic; Remote's calls report that as volume.ErrIncompleteAnswer (a
// failure of the service, not a refusal), so a broken or hostile service cannot crash them.
func recovered(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: the Key Protect client could not read the service's answer (%v)", volume.ErrIncompleteAnswer, p)
		}
	}()
	return fn()
}

// clientError maps an error of the official client: an API error response as responseError
// does; an error of the client's own token source (iam.Error, whose text is the token
// endpoint's as sent) to its status and escaped text, a refusal when its status is one;
// anything else (the network, a 5xx the client gave up retrying, an error of Remote's own
// token handling, which marks its refusals itself) as it is. Remote hands the client its
// bearer tokens, so only a call through [Remote.Client] meets an iam.Error.
func clientError(err error) error {
	var kerr *kp.Error
	if errors.As(err, &kerr) {
		return responseError(kerr.StatusCode, kerr.BodyContent, kerr)
	}
	var ierr iam.Error
	if errors.As(err, &ierr) {
		status := 0
		if ierr.HTTPResponse != nil {
			status = ierr.HTTPResponse.StatusCode
		}
		text := kpapi.Printable(strings.TrimSpace(ierr.ErrorCode+" "+ierr.ErrorMessage), 1<<10)
		return &serviceError{err: fmt.Errorf("token endpoint: %d %s: %s", status, http.StatusText(status), text),
			cause: ierr, refused: kpapi.RefusedStatus(status)}
	}
	return err
}
