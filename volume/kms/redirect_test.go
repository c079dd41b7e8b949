package kms_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume"
	"crkvol/volume/kms"
)

// TestRemoteNeverFollowsRedirects: a key service (or a proxy in front of it) that answers
// with a redirect gets the call refused at once, matching ErrRedirect; the API key, the token
// and the passphrase being wrapped never reach the redirect's target, whatever client makes
// the call (the token exchange, the official client, Remote's own requests), and the call is
// not retried.
func TestRemoteNeverFollowsRedirects(t *testing.T) {
	var stolen atomic.Int64
	thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stolen.Add(1)
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	}))
	defer thief.Close()
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		for _, cred := range []string{"api key", "token"} {
			t.Run(http.StatusText(code)+", "+cred, func(t *testing.T) {
				var asked atomic.Int64
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					asked.Add(1)
					http.Redirect(w, r, thief.URL+"/steal?x=1", code)
				}))
				defer srv.Close()
				cfg := kms.RemoteConfig{URL: srv.URL, Instance: "11111111-1111-4111-8111-111111111111", Timeout: 5 * time.Second}
				if cred == "token" {
					cfg.Token = "SECRET-TOKEN"
				} else {
					cfg.APIKey = "SECRET-APIKEY"
				}
				r, err := kms.NewRemote(cfg)
				require.NoError(t, err)
				calls := []struct {
					name string
					call func() error
				}{
					{"wrap (official client)", func() error {
						_, err := r.Wrap(t.Context(), "k1", []byte("a passphrase to wrap"), nil)
						return err
					}},
					{"batch rewrap (Remote's own request)", func() error {
						_, _, err := r.RewrapBatch(t.Context(), "k1", []volume.RewrapItem{{Ciphertext: []byte("ct")}})
						return err
					}},
				}
				for _, c := range calls {
					asked.Store(0)
					err := c.call()
					require.ErrorIs(t, err, kms.ErrRedirect, c.name)
					assert.Contains(t, err.Error(), fmt.Sprintf("was answered %d", code), c.name)
					assert.Contains(t, err.Error(), `to "`+thief.URL+`/steal"`, "%s: the location, without its query", c.name)
					assert.NotContains(t, err.Error(), "SECRET", c.name)
					assert.Equal(t, int64(1), asked.Load(), "%s: one request, not retried", c.name)
				}
				if cred == "api key" {
					// The official client is never given the API key: alone it has no
					// credentials; inside Authorized it has Remote's token exchange, guarded.
					asked.Store(0)
					_, err := r.Client().GetKeys(t.Context(), 0, 0)
					require.Error(t, err)
					assert.Zero(t, asked.Load(), "no request without credentials")
					err = r.Authorized(t.Context(), func(ctx context.Context, auth string) error {
						_, err := r.Client().GetKeys(kp.NewContextWithAuth(ctx, auth), 0, 0)
						return err
					})
					require.ErrorIs(t, err, kms.ErrRedirect)
					assert.Equal(t, int64(1), asked.Load(), "the token exchange, refused at once")
				}
				assert.Zero(t, stolen.Load(), "nothing reached the redirect's target")
			})
		}
	}
}

// TestRemoteCapsAnswers: an answer whose body does not end (a hostile or broken service) is
// cut off at the cap with ErrAnswerTooLarge, for the official client's calls too, which read
// whole bodies with no limit of their own.
func TestRemoteCapsAnswers(t *testing.T) {
	chunk := []byte(`{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},"resources":[{"name":"` + strings.Repeat("a", 64<<10))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		for i := 0; i < 2048; i++ { // 128 MiB, twice the cap
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "11111111-1111-4111-8111-111111111111", Token: "t", Timeout: 30 * time.Second})
	require.NoError(t, err)
	_, err = r.ListKeys(t.Context())
	require.ErrorIs(t, err, kms.ErrAnswerTooLarge)
	assert.Contains(t, err.Error(), "over 64 MiB")
}
