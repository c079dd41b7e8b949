package kms

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordingBody is a response body that keeps every buffer it was read into.
type recordingBody struct {
	r    io.Reader
	mu   *sync.Mutex
	seen *[][]byte
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.mu.Lock()
	*b.seen = append(*b.seen, p[:n])
	b.mu.Unlock()
	return n, err
}

func (b *recordingBody) Close() error { return nil }

// bodyTransport answers every request with 200 and body.
type bodyTransport struct {
	body string
	mu   sync.Mutex
	seen [][]byte
}

func (t *bodyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: req,
		Body: &recordingBody{r: strings.NewReader(t.body), mu: &t.mu, seen: &t.seen}}, nil
}

// TestUnwrapClearsAnswer: once Unwrap returns, the buffers the answer (which holds the
// plaintext in base64) was read into are cleared, whether the plaintext decoded or not, and
// for an answer longer than the first buffer; a plaintext that is not base64 is refused
// without a partial result.
func TestUnwrapClearsAnswer(t *testing.T) {
	const v = `{"id":"0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"}`
	for _, tc := range []struct {
		name, body string
		want       []byte // nil: an error
	}{
		{"valid", `{"plaintext":"c2VjcmV0","keyVersion":` + v + `}`, []byte("secret")},
		{"escaped slashes", `{"plaintext":"\/\/\/\/","keyVersion":` + v + `}`, []byte{0xff, 0xff, 0xff}},
		{"long answer", `{"plaintext":"c2VjcmV0","keyVersion":` + v + `,"pad":"` + strings.Repeat("p", 20<<10) + `"}`, []byte("secret")},
		{"not base64 at the end", `{"plaintext":"c2VjcmV0c2Vj!!!!","keyVersion":` + v + `}`, nil},
		{"other escape", `{"plaintext":"c2Vj\u0063mV0","keyVersion":` + v + `}`, nil},
		{"not a string", `{"plaintext":12,"keyVersion":` + v + `}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRemote(RemoteConfig{URL: "http://kms.invalid", Instance: "inst", Token: "t", Insecure: true})
			require.NoError(t, err)
			tr := &bodyTransport{body: tc.body}
			r.http = &http.Client{Transport: tr}
			u, err := r.Unwrap(t.Context(), "k", []byte("Y3Q="), nil)
			if tc.want == nil {
				require.Error(t, err)
				assert.Nil(t, u.Plaintext)
				assert.NotContains(t, err.Error(), "c2Vj")
			} else {
				require.NoError(t, err)
				assert.Equal(t, tc.want, u.Plaintext)
			}
			tr.mu.Lock()
			defer tr.mu.Unlock()
			require.NotEmpty(t, tr.seen)
			for _, p := range tr.seen {
				assert.Equal(t, make([]byte, len(p)), p, "a buffer of the answer is not cleared")
			}
		})
	}
}

// TestSecretBase64: the decoder of secret base64 strings.
func TestSecretBase64(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
		ok   bool
	}{
		{`"c2VjcmV0"`, []byte("secret"), true},
		{`"\/\/\/\/"`, []byte{0xff, 0xff, 0xff}, true},
		{`null`, nil, true},
		{`""`, []byte{}, true},
		{`"c2VjcmV0\"`, nil, false},
		{`"c2Vj\n"`, nil, false},
		{`"c2VjcmV"`, nil, false},
		{`12`, nil, false},
		{`"`, nil, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var s secretBase64
			err := s.UnmarshalJSON([]byte(tc.in))
			if !tc.ok {
				require.Error(t, err)
				assert.Nil(t, s)
				return
			}
			require.NoError(t, err)
			assert.True(t, bytes.Equal(tc.want, s), "%q", s)
		})
	}
}
