package kms_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
	"crkvol/volume/kms"
)

// TestRemoteRefusesIncompleteAnswer: a service answering a wrap, unwrap or rewrap with 200
// but without the ciphertext or plaintext, or without the key version (an empty body, `{}`),
// makes Remote return an error matching volume.ErrIncompleteAnswer and not ErrKeyRefused (a
// failure, not a refusal), never an empty result the volume package could store.
func TestRemoteRefusesIncompleteAnswer(t *testing.T) {
	const v = `{"id":"0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"}`
	cases := []struct {
		call, body string
	}{
		{"wrap", `{}`},
		{"wrap", `{"keyVersion":` + v + `}`},
		// A ciphertext without its version sends Wrap to the key's metadata, whose answer
		// (the same body) has no resources: the official client panics on that.
		{"wrap", `{"ciphertext":"c2VjcmV0"}`},
		{"keycrn", `{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":0},"resources":[]}`},
		{"keycrn", `{}`},
		{"unwrap", ``},
		{"unwrap", `{}`},
		{"unwrap", `{"plaintext":"c2VjcmV0"}`},
		{"unwrap", `{"keyVersion":` + v + `}`},
		{"rewrap", ``},
		{"rewrap", `{}`},
		{"rewrap", `{"ciphertext":"c2VjcmV0"}`},
		{"rewrap", `{"rewrappedKeyVersion":` + v + `}`},
		{"rewrap", `{"ciphertext":"","keyVersion":` + v + `,"rewrappedKeyVersion":` + v + `}`},
	}
	for _, c := range cases {
		t.Run(c.call+" "+c.body, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte(c.body))
			}))
			defer srv.Close()
			r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "inst", Token: "t"})
			require.NoError(t, err)
			ctx := context.Background()
			switch c.call {
			case "wrap":
				w, err := r.Wrap(ctx, "k", []byte("secret"), []string{"vol"})
				require.ErrorIs(t, err, volume.ErrIncompleteAnswer, "%+v", w)
				assert.NotErrorIs(t, err, volume.ErrKeyRefused)
			case "keycrn":
				crn, err := r.KeyCRN(ctx, "k")
				require.ErrorIs(t, err, volume.ErrIncompleteAnswer, "%q", crn)
				assert.NotErrorIs(t, err, volume.ErrKeyRefused)
			case "unwrap":
				u, err := r.Unwrap(ctx, "k", []byte("c2VjcmV0"), []string{"vol"})
				require.ErrorIs(t, err, volume.ErrIncompleteAnswer, "%+v", u)
				assert.NotErrorIs(t, err, volume.ErrKeyRefused)
				assert.Empty(t, u.Plaintext)
			case "rewrap":
				w, err := r.Rewrap(ctx, "k", []byte("c2VjcmV0"), []string{"vol"})
				require.ErrorIs(t, err, volume.ErrIncompleteAnswer, "%+v", w)
				assert.NotErrorIs(t, err, volume.ErrKeyRefused)
			}
		})
	}
}
