package main

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestRemoteTLSFlags: --kms-insecure (CRKVOL_KMS_INSECURE) allows plain http off loopback
// with a warning, which is otherwise refused with the fix named; --kms-ca (CRKVOL_KMS_CA)
// trusts a private CA; an untrusted certificate fails at once, after one connection, with a
// hint naming --kms-ca.
func TestRemoteTLSFlags(t *testing.T) {
	t.Parallel()
	const id = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/identity/token" {
			_, _ = fmt.Fprintf(w, `{"access_token":"tok","token_type":"Bearer","expires_in":3600,"expiration":%d}`, time.Now().Add(time.Hour).Unix())
			return
		}
		_, _ = fmt.Fprintf(w, `{"resources":[{"id":%q,"name":"tls-key","state":1,"keyVersion":{"id":%q}}]}`, id, id)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	const warning = "crkvol: warning: --kms-insecure"
	for _, tc := range []struct {
		name  string
		url   string
		env   map[string]string
		args  []string
		code  int
		conns int64 // connections to the TLS server, -1: not counted (the token exchange and the API calls have a connection each)
		want  []string
		not   []string
	}{
		{name: "http off loopback refused", url: "http://kms.example.com", args: []string{"volume", "list"}, code: 2, conns: -1,
			want: []string{`"kms.example.com"`, "https", "--kms-insecure", "--kms-ca"}, not: []string{warning, "RemoteConfig"}},
		{name: "http off loopback, --kms-insecure", url: "http://kms.example.com", args: []string{"--kms-insecure", "volume", "list"}, code: 0, conns: -1,
			want: []string{warning}},
		{name: "http off loopback, CRKVOL_KMS_INSECURE=1", url: "http://kms.example.com", env: map[string]string{"CRKVOL_KMS_INSECURE": "1"}, args: []string{"volume", "list"}, code: 0, conns: -1,
			want: []string{warning}},
		{name: "CRKVOL_KMS_INSECURE not a boolean", url: "http://kms.example.com", env: map[string]string{"CRKVOL_KMS_INSECURE": "perhaps"}, args: []string{"volume", "list"}, code: 2, conns: -1,
			want: []string{"CRKVOL_KMS_INSECURE"}},
		{name: "http loopback, no warning", url: "http://127.0.0.1:1", args: []string{"volume", "list"}, code: 0, conns: -1,
			not: []string{warning}},
		{name: "untrusted certificate", url: srv.URL, args: []string{"key", "list"}, code: 1, conns: 1,
			want: []string{"certificate", "\ncrkvol: hint: ", "--kms-ca"}},
		{name: "--kms-ca", url: srv.URL, args: []string{"--kms-ca", ca, "key", "list"}, code: 0, conns: 2,
			want: []string{"tls-key"}},
		{name: "CRKVOL_KMS_CA", url: srv.URL, env: map[string]string{"CRKVOL_KMS_CA": ca}, args: []string{"key", "list"}, code: 0, conns: 2,
			want: []string{"tls-key"}},
		{name: "--kms-ca missing file", url: srv.URL, args: []string{"--kms-ca", ca + ".missing", "key", "list"}, code: 2, conns: 0,
			want: []string{"CA file"}},
	} {
		// Sequential: the TLS server's connections are counted per case.
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"CRKVOL_STATE": t.TempDir(), "CRKVOL_KMS_URL": tc.url,
				"CRKVOL_KMS_INSTANCE": "11111111-1111-4111-8111-111111111111", "CRKVOL_KMS_APIKEY": "key"}
			for k, v := range tc.env {
				env[k] = v
			}
			before := conns.Load()
			var stdout, stderr bytes.Buffer
			code := run(tc.args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
			out := stdout.String() + stderr.String()
			assert.Equal(t, tc.code, code, out)
			for _, w := range tc.want {
				assert.Contains(t, out, w)
			}
			for _, n := range tc.not {
				assert.NotContains(t, out, n)
			}
			if tc.conns >= 0 {
				assert.Equal(t, tc.conns, conns.Load()-before, "connections")
			}
		})
	}
}
