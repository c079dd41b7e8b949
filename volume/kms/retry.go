package kms

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
)

// retrying is an http.RoundTripper that sends a request again when retry picks the status of
// its response: at most kp.RetryMax more times, after the response's Retry-After (capped at
// kp.RetryWaitMax) or an exponential backoff from one second to kp.RetryWaitMax, the policy
// of the official client. A request whose body cannot be replayed is sent once.
//
// The waits of one request add up to at most budget: a wait that would go past it is not
// slept, and the response is handed to the caller as it is. Nor is another attempt started
// when the request's deadline (the http.Client's Timeout, which covers the retries) leaves
// less than the wait plus twice the time the last attempt took: a server that answers 503
// slowly (a replica whose database is down answers after its retry time) then has its 503
// reach the caller, not the Timeout's "context deadline exceeded". The budget and the
// deadline keep the retries inside the Timeout: a wait the Timeout cut short would reach the
// official client as a connection error, which it retries in turn.
type retrying struct {
	next   http.RoundTripper
	retry  func(status int) bool
	budget time.Duration
	// sleep waits; nil means sleep. Tests record the waits instead.
	sleep func(ctx context.Context, d time.Duration) error
}

// retryBudget is the time the retrying transport of a client with the per-request timeout
// may spend waiting between the attempts of one request: a quarter of it.
func retryBudget(timeout time.Duration) time.Duration { return timeout / 4 }

// RoundTrip implements http.RoundTripper.
func (t *retrying) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	wait := t.sleep
	if wait == nil {
		wait = sleep
	}
	var waited time.Duration
	for attempt := 0; ; attempt++ {
		sent := time.Now()
		resp, err := t.next.RoundTrip(req)
		if err != nil || !t.retry(resp.StatusCode) || attempt >= kp.RetryMax ||
			(req.Body != nil && req.Body != http.NoBody && req.GetBody == nil) {
			return resp, err
		}
		took := time.Since(sent)
		d := retryWait(attempt, resp.Header.Get("Retry-After"))
		if waited+d > t.budget {
			return resp, nil
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d+2*took {
			return resp, nil
		}
		waited += d
		// Drain a little of the body so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err := wait(ctx, d); err != nil {
			return nil, err
		}
		next := req.Clone(ctx)
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			next.Body = body
		}
		req = next
	}
}

// retryWait returns how long to wait before attempt+1: the server's Retry-After (seconds or
// an HTTP date) when it gives one, else 1 s, 2 s, 4 s, ... up to kp.RetryWaitMax.
func retryWait(attempt int, retryAfter string) time.Duration {
	if retryAfter != "" {
		if s, err := strconv.ParseInt(retryAfter, 10, 64); err == nil && s >= 0 {
			return min(time.Duration(s)*time.Second, kp.RetryWaitMax)
		}
		if at, err := http.ParseTime(retryAfter); err == nil {
			return min(max(time.Until(at), 0), kp.RetryWaitMax)
		}
	}
	if attempt >= 30 {
		return kp.RetryWaitMax
	}
	return min(time.Second<<attempt, kp.RetryWaitMax)
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
