package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume/kms"
)

// TestRemoteKeyTextEscaped: key fields a remote service sends are printed with their control
// characters escaped, so a server can neither colour the terminal nor forge output lines.
func TestRemoteKeyTextEscaped(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	a := &app{stdout: &out}
	evil := "\x1b[31mred\nVersion\tforged\u202e"
	k := &kp.Key{ID: "k1", Name: evil, CRN: "crn\r", KeyVersion: &kp.KeyVersion{ID: "v\x07"}}
	require.NoError(t, a.showKey(kms.APIKey(k)))
	text := out.String()
	assert.NotContains(t, text, "\x1b")
	assert.NotContains(t, text, "\r")
	assert.NotContains(t, text, "\x07")
	assert.NotContains(t, text, "\u202e")
	assert.Equal(t, 1, strings.Count(text, "\nVersion"), "one Version line, not a forged second one:\n%s", text)
	assert.Contains(t, text, `\x1b[31mred\nVersion`)
}

// fakeKMS is a Key Protect-compatible service of canned answers for the CLI's remote mode: a
// token endpoint (tokenStatus and tokenBody, or a token), and api answering the API requests,
// which it counts by method and path.
type fakeKMS struct {
	t           *testing.T
	url         string
	tokenStatus int
	tokenBody   string
	api         func(w http.ResponseWriter, r *http.Request)

	mu       sync.Mutex
	requests map[string]int
}

func newFakeKMS(t *testing.T, api func(w http.ResponseWriter, r *http.Request)) *fakeKMS {
	f := &fakeKMS{t: t, api: api, requests: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/identity/token" {
			w.Header().Set("Content-Type", "application/json")
			if f.tokenStatus != 0 {
				w.WriteHeader(f.tokenStatus)
				_, _ = w.Write([]byte(f.tokenBody))
				return
			}
			exp := time.Now().Add(time.Hour).Unix()
			_, _ = fmt.Fprintf(w, `{"access_token":"tok","refresh_token":"r","token_type":"Bearer","expires_in":3600,"expiration":%d}`, exp)
			return
		}
		f.mu.Lock()
		f.requests[r.Method+" "+r.URL.Path]++
		f.mu.Unlock()
		f.api(w, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// run runs the CLI against the service and returns its exit code, stdout and stderr.
func (f *fakeKMS) run(args ...string) (int, string, string) {
	env := map[string]string{"CRKVOL_STATE": f.t.TempDir(), "CRKVOL_KMS_URL": f.url,
		"CRKVOL_KMS_INSTANCE": "11111111-1111-4111-8111-111111111111", "CRKVOL_KMS_APIKEY": "key"}
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
	return code, stdout.String(), stderr.String()
}

func (f *fakeKMS) count(request string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[request]
}

// controls reports whether s holds a control character other than a newline.
func controls(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r < 0xa0) })
}

// remoteKeyID is the key the remote tests name: by id, since a key argument that is not
// shaped like an id is a name, looked up in the key list first.
const remoteKeyID = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"

// TestRemoteKeyChangesSentOnceCLI: `key create` and `key rotate` against a service answering
// 503 or 502 send their request once, and fail saying that the outcome is unknown and how to
// find out.
func TestRemoteKeyChangesSentOnceCLI(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusBadGateway} {
		for _, tc := range []struct {
			args    []string
			request string
			hint    string
		}{
			{[]string{"key", "create", "x"}, "POST /api/v2/keys", "crkvol key list"},
			{[]string{"key", "create", "--standard", "--import-material", "AAECAwQFBgcICQoLDA0ODw==", "x"}, "POST /api/v2/keys", "crkvol key list"},
			{[]string{"key", "rotate", remoteKeyID}, "POST /api/v2/keys/" + remoteKeyID + "/actions/rotate", "crkvol key versions " + remoteKeyID},
		} {
			t.Run(fmt.Sprint(status, tc.args), func(t *testing.T) {
				t.Parallel()
				f := newFakeKMS(t, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Retry-After", "0")
					w.WriteHeader(status)
				})
				code, _, stderr := f.run(tc.args...)
				assert.Equal(t, 1, code, stderr)
				assert.Equal(t, 1, f.count(tc.request), "requests sent")
				assert.Contains(t, stderr, "outcome unknown")
				assert.Contains(t, stderr, tc.hint)
			})
		}
	}
}

// TestRemoteKeyCommandsEscaped: what a remote service sends reaches the terminal escaped in
// `key list`, `key show` and `key versions`, and a key or version id that is not a UUID is
// refused rather than shown.
func TestRemoteKeyCommandsEscaped(t *testing.T) {
	t.Parallel()
	const id = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"
	const evil = "v\x1b]0;x\x07\r\nforged\u202e\u009b"
	key := func(id, version string) map[string]any {
		return map[string]any{"id": id, "name": evil, "state": 1, "crn": "crn:v1:" + evil, "keyVersion": map[string]string{"id": version}}
	}
	for _, tc := range []struct {
		name    string
		args    []string
		answer  any
		code    int
		showing string
	}{
		{"list", []string{"key", "list"}, map[string]any{"resources": []any{key(evil, evil), key(id, id)}}, 0, `v\x1b]0;x\x07\r\nforged`},
		{"show", []string{"key", "show", remoteKeyID}, map[string]any{"resources": []any{key(id, id)}}, 0, `v\x1b]0;x\x07\r\nforged`},
		{"show, malformed version", []string{"key", "show", remoteKeyID}, map[string]any{"resources": []any{key(id, evil)}}, 1, "malformed"},
		{"show, malformed id", []string{"key", "show", remoteKeyID}, map[string]any{"resources": []any{key(evil, id)}}, 1, "malformed"},
		{"versions", []string{"key", "versions", remoteKeyID}, map[string]any{"resources": []any{map[string]string{"id": evil}, map[string]string{"id": id}}}, 0, `v\x1b]0;x\x07\r\nforged`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeKMS(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(tc.answer)
			})
			code, stdout, stderr := f.run(tc.args...)
			assert.Equal(t, tc.code, code, stderr)
			assert.False(t, controls(stdout), "%q", stdout)
			assert.False(t, controls(stderr), "%q", stderr)
			assert.Contains(t, stdout+stderr, tc.showing)
			assert.NotContains(t, stdout+stderr, "\nforged")
		})
	}
}

// TestRemoteTokenErrorEscaped: the token endpoint's error text, with ESC bytes, never reaches
// the terminal raw, whichever key command meets it.
func TestRemoteTokenErrorEscaped(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"key", "list"}, {"key", "show", remoteKeyID}, {"key", "versions", remoteKeyID}, {"key", "create", "x"}, {"key", "rotate", remoteKeyID}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			f := newFakeKMS(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
			f.tokenStatus = http.StatusBadRequest
			f.tokenBody = `{"errorCode":"BXNIM0415E\u001b]0;x\u0007","errorMessage":"Provided API key could not be found\u001b[2J\nforged"}`
			code, stdout, stderr := f.run(args...)
			assert.Equal(t, 1, code)
			assert.False(t, controls(stdout+stderr), "%q", stdout+stderr)
			assert.Contains(t, stderr, "400")
			assert.NotContains(t, stderr, "\nforged")
			assert.Zero(t, f.count("POST /api/v2/keys")+f.count("POST /api/v2/keys/"+remoteKeyID+"/actions/rotate"), "nothing sent without a token")
		})
	}
}
