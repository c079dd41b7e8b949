package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
)

// setmatch VAR REGEXP: set $VAR to the first submatch of REGEXP in the last command's
// stdout (kp tables print the ids a script needs next).
func cmdSetMatch(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: setmatch VAR REGEXP")
	}
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 {
		ts.Fatalf("no match for %s in stdout", args[1])
	}
	ts.Setenv(args[0], m[1])
}

func TestKPTable(t *testing.T) {
	t.Parallel()
	created := time.Date(2020, 5, 6, 17, 25, 22, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		header []string
		rows   [][]string
		want   string
	}{
		{"key show", []string{"Key ID", "Key Name", "Description", "Creation Date", "Expiration Date"},
			[][]string{kpKeyRow(&kp.Key{ID: "1a6d5be8-287c-4eb3-9c44-cf0c2b0d67ad", Name: "my-root-key", CreationDate: &created})},
			"Key ID                                 Key Name      Description   Creation Date                   Expiration Date\n" +
				"1a6d5be8-287c-4eb3-9c44-cf0c2b0d67ad   my-root-key                 2020-05-06 17:25:22 +0000 UTC   Key does not expire\n"},
		{"key create", []string{"Key ID", "Key Name"}, [][]string{{"e55f86ab-6984-4594-ad23-3024f6440a58", "my-base64-root-key"}},
			"Key ID                                 Key Name\ne55f86ab-6984-4594-ad23-3024f6440a58   my-base64-root-key\n"},
		{"empty last cell", []string{"Plaintext", "Rewrapped Plaintext"}, [][]string{{"mXW4", ""}},
			"Plaintext   Rewrapped Plaintext\nmXW4\n"},
		{"no rows", []string{"Key ID", "Key Name"}, nil, "Key ID   Key Name\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			require.NoError(t, kpTable(&b, tc.header, tc.rows...))
			assert.Equal(t, tc.want, b.String())
		})
	}
}

func TestKPTime(t *testing.T) {
	t.Parallel()
	east := time.FixedZone("X", 2*3600)
	for _, tc := range []struct {
		in   *time.Time
		want string
	}{
		{nil, ""},
		{&time.Time{}, ""},
		{ptr(time.Date(2020, 5, 6, 19, 25, 22, 0, east)), "2020-05-06 17:25:22 +0000 UTC"},
	} {
		assert.Equal(t, tc.want, kpTime(tc.in))
	}
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	assert.Equal(t, "2030-01-02 03:04:05 +0000 UTC", kpKeyRow(&kp.Key{Expiration: &exp})[4])
}

func ptr[T any](v T) *T { return &v }

func TestCheckKeyRef(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ref string
		ok  bool
	}{
		{"1a6d5be8-287c-4eb3-9c44-cf0c2b0d67ad", true},
		{"my-alias_2", true},
		{"ab", true},
		{strings.Repeat("a", 90), true},
		{"a", false},
		{strings.Repeat("a", 91), false},
		{"../identity/token", false},
		{"a b", false},
		{"x?force=true", false},
		{"", false},
	} {
		err := checkKeyRef("KEY_ID", tc.ref)
		assert.Equal(t, tc.ok, err == nil, "%q: %v", tc.ref, err)
		if err != nil {
			var u usageError
			assert.True(t, errors.As(err, &u), "a bad key argument is a usage error")
		}
	}
}

// countingTransport answers every request with status and counts the requests.
type countingTransport struct {
	status int
	body   string
	n      atomic.Int32
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.n.Add(1)
	if req.Body != nil {
		req.Body.Close()
	}
	return &http.Response{StatusCode: c.status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(c.body)), Request: req}, nil
}

// TestKPNoRetries: a 5xx or 429 ends the call after one request, at once (the official
// client would retry four times over 15 s), and the service's error reaches the caller.
func TestKPNoRetries(t *testing.T) {
	t.Parallel()
	body := `{"metadata":{"collectionType":"application/vnd.ibm.kms.error+json","collectionTotal":1},"resources":[{"errorMsg":"Service Unavailable","reasons":[{"code":"SERVICE_UNAVAILABLE_ERR","message":"the key store is unavailable","status":503}]}]}`
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusInternalServerError, http.StatusTooManyRequests, http.StatusNotFound} {
		next := &countingTransport{status: status, body: body}
		c, err := kp.NewWithLogger(kp.ClientConfig{BaseURL: "http://crkvol.invalid", InstanceID: "i", Authorization: "Bearer x"},
			&kpTransport{next: next}, kp.NewLogger(func(...any) {}))
		require.NoError(t, err)
		s := &kpSession{client: c}
		err = s.call(context.Background(), func(ctx context.Context, c *kp.Client) error {
			_, err := c.GetKeys(ctx, 0, 0)
			return err
		})
		require.Error(t, err)
		assert.EqualValues(t, 1, next.n.Load(), "status %d: one request", status)
		var re *kpapi.ResponseError
		require.True(t, errors.As(err, &re), "status %d: %v", status, err)
		assert.Equal(t, status, re.Status)
		if status == http.StatusServiceUnavailable {
			assert.Contains(t, err.Error(), "the key store is unavailable")
		}
	}
}

// TestKPLocalPrincipal: the embedded service records the kp caller as cli:$USER, and
// refuses another instance than its own.
func TestKPLocalPrincipal(t *testing.T) {
	t.Parallel()
	svc, err := crk.Open(t.TempDir()+"/crk.db", crk.Options{MasterKey: bytes.Repeat([]byte{7}, 32)})
	require.NoError(t, err)
	defer svc.Close()
	a := &app{getenv: func(k string) string { return map[string]string{"USER": "alice"}[k] }, stderr: io.Discard}
	srv := kpapi.NewLocalServer(svc, a.kpPrincipal())
	client := func(inst string) *kp.Client {
		c, err := kp.NewWithLogger(kp.ClientConfig{BaseURL: "http://crkvol.invalid", InstanceID: inst, Authorization: "Bearer local"},
			&kpTransport{next: handlerTransport{srv}}, kp.NewLogger(func(...any) {}))
		require.NoError(t, err)
		return c
	}
	s := &kpSession{client: client(svc.Instance())}
	var k *kp.Key
	require.NoError(t, s.call(context.Background(), func(ctx context.Context, c *kp.Client) (err error) {
		k, err = c.CreateRootKey(ctx, "k1", nil)
		return err
	}))
	assert.Equal(t, "cli:alice", k.CreatedBy)

	other := &kpSession{client: client("11111111-1111-4111-8111-111111111111")}
	err = other.call(context.Background(), func(ctx context.Context, c *kp.Client) error {
		_, err := c.GetKeys(ctx, 0, 0)
		return err
	})
	var re *kpapi.ResponseError
	require.True(t, errors.As(err, &re), "%v", err)
	assert.Equal(t, http.StatusUnauthorized, re.Status)

	// No token endpoint: a local server exchanges no API keys.
	req, err := http.NewRequest(http.MethodPost, "http://crkvol.invalid/identity/token", strings.NewReader("grant_type=x"))
	require.NoError(t, err)
	resp, err := handlerTransport{srv}.RoundTrip(req)
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}
