package kms

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"crkvol/crk"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRetryWait: the server's Retry-After (seconds or an HTTP date) when it gives one,
// capped as the official client caps its waits; else the official client's backoff.
func TestRetryWait(t *testing.T) {
	for _, tc := range []struct {
		name       string
		attempt    int
		retryAfter string
		want       time.Duration
	}{
		{"no header, first", 0, "", time.Second},
		{"no header, third", 2, "", 4 * time.Second},
		{"no header, capped", 10, "", kp.RetryWaitMax},
		{"no header, huge attempt", 100, "", kp.RetryWaitMax},
		{"zero seconds", 3, "0", 0},
		{"seconds", 0, "7", 7 * time.Second},
		{"seconds, capped", 0, "86400", kp.RetryWaitMax},
		{"date in the past", 0, "Fri, 31 Dec 1999 23:59:59 GMT", 0},
		{"negative", 1, "-5", 2 * time.Second},
		{"garbage", 0, "soon", time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, retryWait(tc.attempt, tc.retryAfter))
		})
	}
}

// TestRetryingReplaysBody: a retried request carries its body again, and the attempts stop
// at kp.RetryMax retries; a status retry does not pick is returned at once.
func TestRetryingReplaysBody(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusRequestTimeout)
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name     string
		retry    func(int) bool
		attempts int
	}{
		{"retried to the limit", func(s int) bool { return s == http.StatusRequestTimeout }, kp.RetryMax + 1},
		{"not retried", func(s int) bool { return false }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			bodies = nil
			mu.Unlock()
			c := &http.Client{Transport: &retrying{next: http.DefaultTransport, retry: tc.retry}}
			resp, err := c.Post(srv.URL, "text/plain", strings.NewReader("payload"))
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, bodies, tc.attempts)
			for _, b := range bodies {
				assert.Equal(t, "payload", b)
			}
		})
	}
}

// TestRetryingBudget: the waits of one request add up to at most the budget; a wait that would
// go past it is not slept and the response goes to the caller as it is.
func TestRetryingBudget(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		budget     time.Duration
		waits      []time.Duration
	}{
		{"Retry-After beyond the budget: handed back at once", "86400", 7 * time.Second, nil},
		{"Retry-After inside the budget", "1", 2500 * time.Millisecond, []time.Duration{time.Second, time.Second}},
		{"backoff stops at the budget", "", 2500 * time.Millisecond, []time.Duration{time.Second}},
		{"no waits: every retry", "0", 0, []time.Duration{0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			requests := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				requests++
				mu.Unlock()
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(http.StatusTooEarly)
			}))
			defer srv.Close()
			var waits []time.Duration
			tr := &retrying{next: http.DefaultTransport, retry: func(s int) bool { return s == http.StatusTooEarly }, budget: tc.budget,
				sleep: func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }}
			resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusTooEarly, resp.StatusCode)
			assert.Equal(t, tc.waits, waits)
			mu.Lock()
			defer mu.Unlock()
			assert.Equal(t, len(tc.waits)+1, requests)
		})
	}
}

// TestRemoteRetriesInsideTimeout: a Retry-After longer than the retry budget, a part of the
// per-request Timeout, is not slept: the status reaches the caller after one request. Were
// it slept, the Timeout would cut the wait short, and the official client would retry that
// as a connection error, RetryMax times more.
func TestRemoteRetriesInsideTimeout(t *testing.T) {
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusRequestTimeout)
	}))
	defer srv.Close()
	const timeout = 400 * time.Millisecond
	require.Less(t, retryBudget(timeout), time.Second)
	r, err := NewRemote(RemoteConfig{URL: srv.URL, Instance: "inst", Token: "t", Timeout: timeout})
	require.NoError(t, err)
	_, err = r.Wrap(t.Context(), "k1", []byte("0123456789abcdef"), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "408", "the service's status, not a timeout: %v", err)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 1, requests)
}

// TestRemoteTimeoutBudget: the retry budget of NewRemote's transports is well inside the
// per-request timeout, for the default and a configured one.
func TestRemoteTimeoutBudget(t *testing.T) {
	for _, timeout := range []time.Duration{0, 2 * time.Second, time.Minute} {
		r, err := NewRemote(RemoteConfig{URL: "http://127.0.0.1:1", Instance: "inst", APIKey: "k", Timeout: timeout})
		require.NoError(t, err)
		for name, tr := range map[string]http.RoundTripper{"api": r.client.HttpClient.Transport, "tokens": r.tokens.Transport} {
			rt, ok := tr.(*retrying)
			require.True(t, ok, name)
			assert.LessOrEqual(t, rt.budget, r.cfg.Timeout/4, name)
			assert.Positive(t, rt.budget, name)
		}
	}
}

// TestRemoteSlowOutageIs503: a token endpoint that answers 503 slowly (a replica whose
// database is down answers after its transactions' retry time) ends the call with the 503,
// crk.ErrUnavailable, inside the Timeout: the retries stop while another attempt, as slow as
// the last, still fits, rather than running into the Timeout's "context deadline exceeded".
func TestRemoteSlowOutageIs503(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		delay      time.Duration
		timeout    time.Duration
	}{
		{"immediate retries", "0", 300 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			requests := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				requests++
				mu.Unlock()
				time.Sleep(tc.delay)
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Retry-After", tc.retryAfter)
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, `{"errorCode":"BXNIM0400E","errorMessage":"The token could not be issued: the service is unavailable; try again later."}`)
			}))
			defer srv.Close()
			r, err := NewRemote(RemoteConfig{URL: srv.URL, TokenURL: srv.URL + "/identity/token", Instance: "inst", APIKey: "k", Timeout: tc.timeout})
			require.NoError(t, err)
			start := time.Now()
			_, err = r.Wrap(t.Context(), "k1", []byte("0123456789abcdef"), nil)
			t.Logf("ended after %v: %v", time.Since(start).Round(time.Millisecond), err)
			require.Error(t, err)
			assert.ErrorIs(t, err, crk.ErrUnavailable)
			assert.NotErrorIs(t, err, context.DeadlineExceeded)
			mu.Lock()
			defer mu.Unlock()
			assert.GreaterOrEqual(t, requests, 1)
		})
	}
}
