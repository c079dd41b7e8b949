package kms

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

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
