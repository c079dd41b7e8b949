package kpapi

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/ident"
)

// sentIDs records the correlation ids of the requests sent through it.
type sentIDs struct {
	next http.RoundTripper
	ids  []string
}

func (s *sentIDs) RoundTrip(r *http.Request) (*http.Response, error) {
	s.ids = append(s.ids, r.Header.Get(CorrelationHeader))
	return s.next.RoundTrip(r)
}

// TestCorrelationIDs: the events of a request carry its correlation id — the one
// keyprotect-go-client sends, or a new one the server gives a request without it — and the
// response echoes it; a malformed one is refused with 400, naming the header, and changes
// nothing.
func TestCorrelationIDs(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k, err := e.client.CreateRootKey(e.ctx, "key", nil)
		require.NoError(t, err)
		svc := e.svc(t)

		// The official client's own ids, a new UUID for each call.
		sent := &sentIDs{next: kp.DefaultTransport()}
		c, err := kp.New(kp.ClientConfig{BaseURL: e.srv.URL, Authorization: "Bearer " + staticToken, InstanceID: e.inst, Verbose: kp.VerboseNone}, sent)
		require.NoError(t, err)
		ct, err := c.Wrap(e.ctx, k.ID, []byte(base64.StdEncoding.EncodeToString(mat(32, 1))), nil)
		require.NoError(t, err)
		_, err = c.Unwrap(e.ctx, k.ID, ct, nil)
		require.NoError(t, err)
		require.Len(t, sent.ids, 2)
		evs, err := svc.Events(e.ctx, crk.EventFilter{KeyID: k.ID, Limit: 2})
		require.NoError(t, err)
		require.Len(t, evs, 2)
		assert.Equal(t, []string{crk.ActionUnwrap, crk.ActionWrap}, []string{evs[0].Action, evs[1].Action})
		assert.Equal(t, []string{sent.ids[1], sent.ids[0]}, []string{evs[0].CorrelationID, evs[1].CorrelationID},
			"each event carries the id its call was sent with")

		wrap := e.srv.URL + "/api/v2/keys/" + k.ID + "/actions/wrap"
		body := `{"plaintext":"` + base64.StdEncoding.EncodeToString(mat(32, 2)) + `"}`
		for _, tc := range []struct {
			name   string
			hdr    http.Header
			status int
		}{
			{"given", http.Header{"Correlation-Id": {"job-42:step.1_a"}}, 200},
			{"none", nil, 200},
			{"too long", http.Header{"Correlation-Id": {strings.Repeat("a", crk.MaxCorrelationIDLen+1)}}, 400},
			{"space", http.Header{"Correlation-Id": {"a b"}}, 400},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before, err := svc.Events(e.ctx, crk.EventFilter{})
				require.NoError(t, err)
				resp := e.do(t, http.MethodPost, wrap, body, tc.hdr)
				assert.Equal(t, tc.status, resp.StatusCode)
				after, err := svc.Events(e.ctx, crk.EventFilter{})
				require.NoError(t, err)
				got := resp.Header.Get(CorrelationHeader)
				if tc.status != 200 {
					assert.Empty(t, got)
					assert.Equal(t, len(before), len(after), "a refused id changes nothing")
					return
				}
				require.Len(t, after, len(before)+1)
				if want := tc.hdr.Get("Correlation-Id"); want != "" {
					assert.Equal(t, want, got)
				} else {
					_, err := ident.CanonicalUUID(got)
					assert.NoError(t, err, "a request without an id is given a UUID: %q", got)
				}
				assert.Equal(t, got, after[0].CorrelationID)
			})
		}
	})
}
