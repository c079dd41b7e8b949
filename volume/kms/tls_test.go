package kms_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
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
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume/kms"
)

// TestRemoteURLPolicy: NewRemote refuses plain http to a host that is not loopback (for the
// service URL and the token endpoint) unless Insecure, naming the host and the fix; loopback
// is a loopback IP or the name localhost, never resolved.
func TestRemoteURLPolicy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, url, tokenURL string
		insecure            bool
		want                error // nil: accepted
	}{
		{"https", "https://kms.example.com", "", false, nil},
		{"http 127.0.0.1", "http://127.0.0.1:8080", "", false, nil},
		{"http 127.1.2.3", "http://127.1.2.3", "", false, nil},
		{"http ::1", "http://[::1]:8080", "", false, nil},
		{"http localhost", "http://localhost:8080", "", false, nil},
		{"http LOCALHOST", "http://LOCALHOST", "", false, nil},
		{"http remote name", "http://kms.example.com", "", false, kms.ErrInsecureURL},
		{"http remote ip", "http://192.0.2.1:8080", "", false, kms.ErrInsecureURL},
		{"http localhost suffix", "http://localhost.example.com", "", false, kms.ErrInsecureURL},
		{"http sub localhost", "http://evil.localhost.example", "", false, kms.ErrInsecureURL},
		{"http unspecified", "http://0.0.0.0:8080", "", false, kms.ErrInsecureURL},
		{"http remote insecure", "http://kms.example.com", "", true, nil},
		{"http token endpoint", "https://kms.example.com", "http://iam.example.com/token", false, kms.ErrInsecureURL},
		{"http token endpoint insecure", "https://kms.example.com", "http://iam.example.com/token", true, nil},
		{"https token endpoint", "http://127.0.0.1", "https://iam.example.com/token", false, nil},
		{"ftp", "ftp://kms.example.com", "", true, kms.ErrBadURL},
		{"no scheme", "kms.example.com", "", false, kms.ErrBadURL},
		{"no host", "https://", "", false, kms.ErrBadURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := kms.NewRemote(kms.RemoteConfig{URL: tc.url, TokenURL: tc.tokenURL, Instance: "inst", Token: "t", Insecure: tc.insecure})
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.want)
			if errors.Is(tc.want, kms.ErrInsecureURL) {
				host := strings.Split(strings.TrimPrefix(tc.url+tc.tokenURL, "https://kms.example.com"), "/")[2]
				assert.Contains(t, err.Error(), host, "the error names the host")
				assert.Contains(t, err.Error(), "https", "the error names the fix")
				assert.Contains(t, err.Error(), "insecure", "the error names the override")
				assert.NotContains(t, err.Error(), "RemoteConfig", "the error names no Go field: the CLI shows it too")
			}
		})
	}
}

// TestRemoteCAFile: a CA file must hold a PEM certificate.
func TestRemoteCAFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	require.NoError(t, os.WriteFile(empty, []byte("not a certificate\n"), 0o600))
	_, err := kms.NewRemote(kms.RemoteConfig{URL: "https://kms.example.com", Instance: "inst", Token: "t", CAFile: empty})
	require.ErrorIs(t, err, kms.ErrCAFile)
	_, err = kms.NewRemote(kms.RemoteConfig{URL: "https://kms.example.com", Instance: "inst", Token: "t", CAFile: filepath.Join(dir, "missing.pem")})
	require.ErrorIs(t, err, os.ErrNotExist)
}

// tlsKMS is kpapi over TLS on loopback with its embedded store: its certificate, its
// instance, an API key, a root key, and a count of the connections it accepted.
type tlsKMS struct {
	srv    *httptest.Server
	cert   *x509.Certificate
	inst   string
	apiKey string
	keyID  string
	conns  atomic.Int64
}

// newTLSKMS starts kpapi over TLS; cert, when not nil, is its certificate (else httptest's,
// for 127.0.0.1, ::1 and example.com).
func newTLSKMS(t *testing.T, cert *tls.Certificate) *tlsKMS {
	t.Helper()
	dir := t.TempDir()
	tenants, err := kpapi.OpenTenants(filepath.Join(dir, "state"), crk.Options{MasterKey: bytes.Repeat([]byte{4}, 32)})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	k := &tlsKMS{}
	var svc *crk.Service
	k.inst, svc = tenants.Default()
	k.apiKey, err = tenants.CreateAPIKey(k.inst)
	require.NoError(t, err)
	key, err := svc.CreateRootKey(t.Context(), "tls")
	require.NoError(t, err)
	k.keyID = key.ID
	k.srv = httptest.NewUnstartedServer(kpapi.NewServer(tenants))
	k.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			k.conns.Add(1)
		}
	}
	// The TLS handshake errors the server would log are the test's point.
	k.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if cert != nil {
		k.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	k.srv.StartTLS()
	t.Cleanup(k.srv.Close)
	k.cert = k.srv.Certificate()
	return k
}

// expiredCert returns a self-signed certificate for 127.0.0.1 that expired an hour ago.
func expiredCert(t *testing.T) *tls.Certificate {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "expired"},
		NotBefore:             time.Now().Add(-48 * time.Hour),
		NotAfter:              time.Now().Add(-time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}
}

// TestRemoteCertificateErrorsNotRetried: a certificate the client does not accept (unknown
// authority, another host's, expired) fails every kind of call at once, after exactly one
// connection: the official client's calls (which it would retry on any transport error),
// Remote's own calls, and the token exchange. The error matches kms.ErrCertificate and is not
// a refusal.
func TestRemoteCertificateErrorsNotRetried(t *testing.T) {
	t.Parallel()
	calls := []struct {
		name   string
		apiKey bool
		call   func(t *testing.T, r *kms.Remote, keyID string) error
	}{
		{"wrap (official client)", false, func(t *testing.T, r *kms.Remote, keyID string) error {
			_, err := r.Wrap(t.Context(), keyID, []byte("secret"), nil)
			return err
		}},
		{"key metadata (official client)", false, func(t *testing.T, r *kms.Remote, keyID string) error {
			_, err := r.KeyMetadata(t.Context(), keyID)
			return err
		}},
		{"list keys (official client)", false, func(t *testing.T, r *kms.Remote, keyID string) error {
			_, err := r.ListKeys(t.Context())
			return err
		}},
		{"unwrap", false, func(t *testing.T, r *kms.Remote, keyID string) error {
			_, err := r.Unwrap(t.Context(), keyID, []byte("Y3Q="), nil)
			return err
		}},
		{"token exchange", true, func(t *testing.T, r *kms.Remote, keyID string) error {
			_, err := r.KeyMetadata(t.Context(), keyID)
			return err
		}},
	}
	for _, certCase := range []struct {
		name  string
		cert  func(t *testing.T) *tls.Certificate
		trust bool   // give the server's certificate as the CA
		host  string // the URL's host instead of 127.0.0.1
	}{
		{name: "unknown authority"},
		{name: "hostname mismatch", trust: true, host: "localhost"},
		{name: "expired", cert: expiredCert, trust: true},
	} {
		for _, c := range calls {
			t.Run(certCase.name+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				var cert *tls.Certificate
				if certCase.cert != nil {
					cert = certCase.cert(t)
				}
				k := newTLSKMS(t, cert)
				cfg := kms.RemoteConfig{URL: k.srv.URL, Instance: k.inst, Token: "not-used", Timeout: 20 * time.Second}
				if c.apiKey {
					cfg.Token, cfg.APIKey = "", k.apiKey
				}
				if certCase.trust {
					cfg.RootCAs = x509.NewCertPool()
					cfg.RootCAs.AddCert(k.cert)
				}
				if certCase.host != "" {
					cfg.URL = strings.Replace(cfg.URL, "127.0.0.1", certCase.host, 1)
				}
				r, err := kms.NewRemote(cfg)
				require.NoError(t, err)
				err = c.call(t, r, k.keyID)
				require.ErrorIs(t, err, kms.ErrCertificate)
				assert.NotErrorIs(t, err, kms.ErrOutcomeUnknown)
				assert.Contains(t, err.Error(), "certificate")
				assert.Contains(t, err.Error(), strings.TrimPrefix(cfg.URL, "https://"), "the error names the host")
				assert.EqualValues(t, 1, k.conns.Load(), "connections: a certificate error is not retried")
			})
		}
	}
}

// TestRemoteTrustedCA: with the server's certificate as the CA (a pool, or a PEM file), wrap,
// unwrap and the token exchange work over TLS.
func TestRemoteTrustedCA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  func(t *testing.T, k *tlsKMS) kms.RemoteConfig
	}{
		{"pool", func(t *testing.T, k *tlsKMS) kms.RemoteConfig {
			pool := x509.NewCertPool()
			pool.AddCert(k.cert)
			return kms.RemoteConfig{RootCAs: pool}
		}},
		{"file", func(t *testing.T, k *tlsKMS) kms.RemoteConfig {
			path := filepath.Join(t.TempDir(), "ca.pem")
			require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.cert.Raw}), 0o600))
			return kms.RemoteConfig{CAFile: path}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTLSKMS(t, nil)
			cfg := tc.cfg(t, k)
			cfg.URL, cfg.Instance, cfg.APIKey = k.srv.URL, k.inst, k.apiKey
			r, err := kms.NewRemote(cfg)
			require.NoError(t, err)
			w, err := r.Wrap(t.Context(), k.keyID, []byte("secret"), []string{"a"})
			require.NoError(t, err)
			u, err := r.Unwrap(t.Context(), k.keyID, w.Ciphertext, []string{"a"})
			require.NoError(t, err)
			assert.Equal(t, []byte("secret"), u.Plaintext)
		})
	}
}
