package kpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"crkvol/crk"
)

// LifecyclePath is the path of an instance's lifecycle feed ([crk.Service.Lifecycle]):
//
//	GET /api/crkvol/v1/lifecycle?cursor=C&wait=D&limit=N
//
// It sits under a crkvol prefix of its own, which Key Protect's API (/api/v2) never uses.
// The request is authorised as every other API request: a bearer token and a
// bluemix-instance header naming the instance whose feed to read.
//
// Query parameters:
//   - cursor: where to resume, a cursor of an earlier answer; absent or empty asks for the
//     feed's head (no events: where to start following after a reconciliation).
//   - wait: how long to wait for an event when none follows cursor (a long poll), as a Go
//     duration ("30s", "1m") or a number of seconds ("30", "0.5"), 0 to [MaxLifecycleWait];
//     default 0, which answers at once.
//   - limit: at most this many events, 1 to [MaxLifecycleLimit]; default MaxLifecycleLimit.
//
// A 200 answer is the JSON of a [crk.LifecyclePage]:
//
//	{"events":[{"cursor":"7","time":"2026-06-01T12:00:00Z","type":"rotate",
//	  "keyId":"…","keyCrn":"…","state":"active","oldVersion":"…","newVersion":"…",
//	  "policy":true,"initiator":"…","registrations":3}],"cursor":"7"}
//
// events is never null (an empty list when the wait passed, or the server is shutting
// down); resume from cursor. A cursor the feed cannot continue from (its events were deleted
// by the retention, or it is ahead of the feed: another store) is answered 410 with the
// error envelope and reason code FEED_RESYNC_REQUIRED_ERR (crkvolError "resync_needed"): the
// follower reconciles, then follows from the head (an empty cursor). A malformed parameter
// (or one given more than once) is answered 400 INVALID_QUERY_PARAM_ERR with the parameter
// as the reason's target.
//
// A long poll checks its bearer token again before it answers, and every
// [ReauthorizeInterval] while it waits: once the token's API key is revoked (or the token
// has expired) it is answered 401, as a new request with the token would be, and never with
// an event.
const LifecyclePath = "/api/crkvol/v1/lifecycle"

// Bounds of the lifecycle feed's query parameters.
const (
	// MaxLifecycleWait is the longest wait a lifecycle request may ask for.
	MaxLifecycleWait = 60 * time.Second
	// MaxLifecycleLimit is the most events one lifecycle answer holds, and the default.
	MaxLifecycleLimit = 1000
)

// feedQuery reads the lifecycle feed's query parameters.
func feedQuery(v url.Values) (cursor string, wait time.Duration, limit int, err error) {
	for _, name := range []string{"cursor", "wait", "limit"} {
		if len(v[name]) > 1 {
			return "", 0, 0, badRequest("INVALID_QUERY_PARAM_ERR", name+" must be given at most once", name)
		}
	}
	cursor = v.Get("cursor")
	if _, perr := crk.ParseFeedCursor(cursor); perr != nil {
		return "", 0, 0, badRequest("INVALID_QUERY_PARAM_ERR", "cursor must be the cursor of an earlier answer, or empty for the feed's head", "cursor")
	}
	if w := v.Get("wait"); w != "" {
		wait, err = parseWait(w)
		if err != nil {
			return "", 0, 0, badRequest("INVALID_QUERY_PARAM_ERR", err.Error(), "wait")
		}
	}
	limit = MaxLifecycleLimit
	if l := v.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > MaxLifecycleLimit {
			return "", 0, 0, badRequest("INVALID_QUERY_PARAM_ERR", fmt.Sprintf("limit must be an integer from 1 to %d", MaxLifecycleLimit), "limit")
		}
	}
	return cursor, wait, limit, nil
}

// parseWait reads the wait parameter of the lifecycle feed: a Go duration ("30s") or a
// number of seconds ("30", "0.5"), from 0 to [MaxLifecycleWait].
func parseWait(s string) (time.Duration, error) {
	if s != "" && strings.Trim(s, "0123456789.") == "" {
		s += "s" // a number of seconds, such as 30 or 0.5
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("wait must be a duration (such as 30s) or a number of seconds, from 0 to %s", MaxLifecycleWait)
	}
	if d < 0 || d > MaxLifecycleWait {
		return 0, fmt.Errorf("wait must be from 0 to %s", MaxLifecycleWait)
	}
	return d, nil
}

// lifecycle answers a request for the lifecycle feed (see [LifecyclePath]).
func (s *Server) lifecycle(q *request) error {
	cursor, wait, limit, err := feedQuery(q.r.URL.Query())
	if err != nil {
		return err
	}
	if s.stopping() {
		wait = 0
	}
	if wait > 0 {
		// The answer may come up to wait from now: the server's write timeout must not end
		// the connection before it does. An error means the writer has no deadline to move.
		_ = http.NewResponseController(q.w).SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
	}
	ctx, cancel := context.WithCancelCause(q.ctx)
	defer cancel(nil)
	// StopWaiting ends the wait (the server is shutting down).
	defer context.AfterFunc(s.stopCtx, func() { cancel(nil) })()
	if wait > 0 {
		// A revocation of the caller's API key ends the wait.
		defer s.watchAuthorization(ctx, q, cancel)()
	}
	page, err := q.svc.WaitLifecycle(ctx, cursor, limit, wait)
	if err != nil && ctx.Err() != nil {
		if q.r.Context().Err() != nil {
			return nil // the client went away: there is nobody to answer
		}
		if cause := context.Cause(ctx); errors.Is(cause, ErrUnauthorized) {
			return cause // revoked while waiting: 401
		}
		// Stopped: answer at once with what the feed has.
		page, err = q.svc.Lifecycle(q.ctx, cursor, limit)
	}
	if err != nil {
		return err
	}
	if wait > 0 {
		// The events may have happened after the request was authorized: answer them only
		// if its token is still valid now, after they were read.
		if err := q.reauthorize(); err != nil {
			return err
		}
	}
	writeJSON(q.w, http.StatusOK, page)
	return nil
}

// watchAuthorization checks q's authorization again every s.reauthEvery until ctx ends,
// and cancels ctx with the refusal, wrapping [ErrUnauthorized], as soon as the caller is no
// longer authorized. A check the store cannot answer is not a refusal: the wait goes on,
// and the check made before answering decides. stop ends the watch.
func (s *Server) watchAuthorization(ctx context.Context, q *request, cancel context.CancelCauseFunc) (stop func()) {
	if s.reauthEvery <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(s.reauthEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-t.C:
				if err := q.reauthorize(); errors.Is(err, ErrUnauthorized) {
					cancel(err)
					return
				}
			}
		}
	}()
	return func() { close(done); <-ended }
}

// StopWaiting ends every lifecycle long poll in progress, each answered at once with the
// events it has (none, usually), and makes the later ones answer without waiting. A server
// that shuts down calls it first, so that it does not wait up to [MaxLifecycleWait] for its
// long polls: register it with http.Server.RegisterOnShutdown. It is safe to call more than
// once.
func (s *Server) StopWaiting() { s.stop() }

func (s *Server) stopping() bool { return s.stopCtx.Err() != nil }
