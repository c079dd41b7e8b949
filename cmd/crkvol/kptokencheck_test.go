package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKPImportTokenHelperInput: the local import token helpers name what is wrong with their
// input (no client text such as %!s(<nil>) or an ASN.1 dump) and refuse a required value
// given empty.
func TestKPImportTokenHelperInput(t *testing.T) {
	t.Parallel()
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	pemOf := func(typ string, der []byte) string { return b64(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})) }
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	require.NoError(t, err)
	rk, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	rsaDER, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	require.NoError(t, err)
	material := b64(bytes.Repeat([]byte{1}, 32))
	for _, c := range []struct {
		name string
		args []string
		want string // "" succeeds
	}{
		{"empty pubkey", []string{"key-encrypt", "-k", material, "-p", ""}, "--pubkey is empty"},
		{"pubkey not base64", []string{"key-encrypt", "-k", material, "-p", "!!"}, "--pubkey: not base64"},
		{"pubkey no PEM", []string{"key-encrypt", "-k", material, "-p", "AAAA"}, "--pubkey is not a PEM public key"},
		{"pubkey garbage PEM", []string{"key-encrypt", "-k", material, "-p", pemOf("PUBLIC KEY", []byte("garbage"))}, "the PEM block (PUBLIC KEY) does not hold a public key"},
		{"pubkey not RSA", []string{"key-encrypt", "-k", material, "-p", pemOf("PUBLIC KEY", ecDER)}, "--pubkey is not an RSA public key"},
		{"empty key", []string{"key-encrypt", "-k", "", "-p", pemOf("PUBLIC KEY", rsaDER)}, "--key is empty"},
		{"good", []string{"key-encrypt", "-k", material, "-p", pemOf("PUBLIC KEY", rsaDER)}, ""},
		{"empty nonce", []string{"nonce-encrypt", "-k", material, "-n", ""}, "--nonce is empty"},
		{"nonce good", []string{"nonce-encrypt", "-k", material, "-n", b64([]byte("nonce"))}, ""},
	} {
		var stdout, stderr bytes.Buffer
		env := map[string]string{"CRKVOL_STATE": t.TempDir()}
		code := run(append([]string{"kp", "import-token"}, c.args...), strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
		if c.want == "" {
			assert.Equal(t, 0, code, "%s: %s", c.name, stderr.String())
			continue
		}
		assert.NotEqual(t, 0, code, c.name)
		assert.Contains(t, stderr.String(), c.want, c.name)
		assert.NotContains(t, stderr.String(), "%!", c.name)
		assert.NotContains(t, stderr.String(), "tags don't match", c.name)
	}
}
