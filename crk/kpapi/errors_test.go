package kpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgdb"
)

// TestErrorEnvelopeEveryRow writes every sentinel of the error table as the server does and
// reads it back as a client does: the status, reason code, target and id on the wire are the
// row's, and the parsed error is the same sentinel with the same class. Without the id (a
// server that does not send it), a reason code shared by several sentinels maps to none of
// them but keeps the class.
func TestErrorEnvelopeEveryRow(t *testing.T) {
	shared := map[string]int{}
	for _, info := range crk.Errors() {
		if info.Class == crk.Refusal {
			shared[fmt.Sprint(info.Code, info.Status, info.Target)]++
		}
	}
	for _, info := range crk.Errors() {
		t.Run(info.ID, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeError(rec, fmt.Errorf("wrap key k1: %w", info.Err))
			require.Equal(t, info.Status, rec.Code)
			var env ErrorBody
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &env))
			assert.Equal(t, TypeError, env.Metadata.CollectionType)
			require.Len(t, env.Resources, 1)
			require.Len(t, env.Resources[0].Reasons, 1)
			r := env.Resources[0].Reasons[0]
			assert.Equal(t, info.Code, r.Code)
			assert.Equal(t, info.Status, r.Status)
			assert.Equal(t, info.ID, r.CrkvolError)
			if info.Target != "" {
				require.NotNil(t, r.Target)
				assert.Equal(t, info.Target, r.Target.Name)
			} else {
				assert.Nil(t, r.Target)
			}
			if info.Class == crk.Refusal {
				assert.Contains(t, r.Message, info.Err.Error())
			} else {
				assert.Equal(t, publicMessage(info.Err), r.Message, "an internal failure keeps its text in the server")
				assert.NotContains(t, r.Message, "k1")
			}

			got := ParseError(rec.Code, rec.Body.Bytes())
			assert.ErrorIs(t, got, info.Err)
			assert.Equal(t, info.Class == crk.Refusal, got.Refused())
			assert.Equal(t, info.Status, got.Status)
			assert.Equal(t, info.Code, got.Code)

			// The same response from a server that sends no id.
			env.Resources[0].Reasons[0].CrkvolError = ""
			raw, err := json.Marshal(env)
			require.NoError(t, err)
			got = ParseError(rec.Code, raw)
			if info.Class == crk.Refusal && shared[fmt.Sprint(info.Code, info.Status, info.Target)] == 1 {
				assert.ErrorIs(t, got, info.Err, "a reason code of one refusal maps to it")
			} else {
				assert.Nil(t, got.Sentinel, "a shared reason code, or a failure's, maps to no sentinel")
			}
			assert.Equal(t, info.Class == crk.Refusal, got.Refused())
		})
	}
}

// TestParseErrorWithoutSentinel: responses that name no known sentinel still carry their
// status and code in the message, and 4xx other than 429 are refusals.
func TestParseErrorWithoutSentinel(t *testing.T) {
	reasonBody := func(code, id string, status int) string {
		return fmt.Sprintf(`{"metadata":{"collectionType":%q,"collectionTotal":1},"resources":[{"errorMsg":"some text","reasons":[{"code":%q,"message":"why","status":%d,"crkvolError":%q}]}]}`,
			TypeError, code, status, id)
	}
	for _, tc := range []struct {
		name     string
		status   int
		body     string
		sentinel error
		refused  bool
		inMsg    []string
	}{
		{"unknown code", 418, reasonBody("TEAPOT_ERR", "", 418), nil, true, []string{"418", "TEAPOT_ERR", "why"}},
		{"unauthorized", 401, reasonBody("UNAUTHORIZED_ERR", "", 401), nil, true, []string{"401", "UNAUTHORIZED_ERR"}},
		{"rate limited", 429, reasonBody("TOO_MANY_REQUESTS_ERR", "", 429), nil, false, []string{"429"}},
		{"internal", 500, reasonBody("INTERNAL_SERVER_ERR", "", 500), nil, false, []string{"500", "INTERNAL_SERVER_ERR"}},
		{"not json", 502, "<html>bad gateway</html>", nil, false, []string{"502", "Bad Gateway"}},
		{"empty body", 404, "", nil, true, []string{"404", "Not Found"}},
		{"unknown id, unique code", 404, reasonBody("KEY_NOT_FOUND_ERR", "from_a_newer_server", 404), crk.ErrKeyNotFound, true, []string{"KEY_NOT_FOUND_ERR"}},
		{"id wins over code", 409, reasonBody("KEY_ACTION_INVALID_STATE_ERR", "key_deactivated", 409), crk.ErrKeyDeactivated, true, nil},
		{"huge message", 400, `{"resources":[{"errorMsg":"` + strings.Repeat("é", 4000) + `"}]}`, nil, true, []string{"400"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ParseError(tc.status, []byte(tc.body))
			assert.Equal(t, tc.status, got.Status)
			if tc.sentinel != nil {
				assert.ErrorIs(t, got, tc.sentinel)
			} else {
				assert.Nil(t, got.Sentinel)
				_, ok := crk.LookupError(got)
				assert.False(t, ok)
			}
			assert.Equal(t, tc.refused, got.Refused())
			for _, s := range tc.inMsg {
				assert.Contains(t, got.Error(), s)
			}
			assert.LessOrEqual(t, len(got.Message), maxMessage+3)
		})
	}
}

// TestOfficialClientReadsExtendedReason: keyprotect-go-client parses an envelope that carries
// the crkvolError member like any other, and the raw body it keeps maps back to the sentinel.
func TestOfficialClientReadsExtendedReason(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, fmt.Errorf("key k1 cannot wrap: %w", crk.ErrKeySuspended))
	}))
	defer srv.Close()
	c, err := kp.New(kp.ClientConfig{BaseURL: srv.URL, Authorization: "Bearer x", InstanceID: "11111111-1111-4111-8111-111111111111", Verbose: kp.VerboseNone}, kp.DefaultTransport())
	require.NoError(t, err)
	_, err = c.GetKey(t.Context(), "k1")
	var kerr *kp.Error
	require.True(t, errors.As(err, &kerr), "%T: %v", err, err)
	assert.Equal(t, http.StatusConflict, kerr.StatusCode)
	require.Len(t, kerr.Reasons, 1)
	assert.Equal(t, "KEY_ACTION_INVALID_STATE_ERR", kerr.Reasons[0].Code)
	assert.Equal(t, http.StatusConflict, kerr.Reasons[0].Status)
	assert.Contains(t, kerr.Message, "key is suspended")
	got := ParseError(kerr.StatusCode, kerr.BodyContent)
	assert.ErrorIs(t, got, crk.ErrKeySuspended)
	assert.NotErrorIs(t, got, crk.ErrKeyDeactivated)
	assert.True(t, got.Refused())
}

// TestAuthorizationErrors: the envelope of requests refused or failed before reaching a
// service. An instance whose store does not open is an internal failure (500, the
// master key's id, no detail), not an authorisation refusal.
func TestAuthorizationErrors(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		sealed, err := e.tenants.CreateInstance("sealed elsewhere")
		require.NoError(t, err)
		require.NoError(t, e.store.openInstance(sealed, crk.Options{Clock: e.clock, MasterKey: mat(32, 9)}))
		apiKey, err := e.tenants.CreateAPIKey(sealed)
		require.NoError(t, err)
		tok, _, err := e.tenants.Exchange(apiKey)
		require.NoError(t, err)

		for _, tc := range []struct {
			name, token, instance string
			status                int
			code, id              string
			inMsg, notInMsg       string
			sentinel              error
			refused               bool
		}{
			{"unknown instance", staticToken, "11111111-1111-4111-8111-111111111111", 401, "UNAUTHORIZED_ERR", "",
				"the resource does not exist", "", nil, true},
			{"token for another instance", tok, e.inst, 401, "UNAUTHORIZED_ERR", "",
				"does not have access", "does not exist", nil, true},
			{"store sealed under another master key", tok, sealed, 500, "INTERNAL_SERVER_ERR", "master_key",
				"internal error", "master key", crk.ErrMasterKey, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, err := http.NewRequest(http.MethodGet, e.srv.URL+"/api/v2/keys", nil)
				require.NoError(t, err)
				req.Header.Set("Authorization", "Bearer "+tc.token)
				req.Header.Set("bluemix-instance", tc.instance)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				require.Equal(t, tc.status, resp.StatusCode, "%s", body)
				var env ErrorBody
				require.NoError(t, json.Unmarshal(body, &env))
				require.Len(t, env.Resources, 1)
				require.Len(t, env.Resources[0].Reasons, 1)
				r := env.Resources[0].Reasons[0]
				assert.Equal(t, tc.code, r.Code)
				assert.Equal(t, tc.id, r.CrkvolError)
				assert.Contains(t, r.Message, tc.inMsg)
				if tc.notInMsg != "" {
					assert.NotContains(t, r.Message, tc.notInMsg)
				}
				raw, err := json.Marshal(env)
				require.NoError(t, err)
				got := ParseError(resp.StatusCode, raw)
				if tc.sentinel != nil {
					assert.ErrorIs(t, got, tc.sentinel)
				} else {
					assert.Nil(t, got.Sentinel)
				}
				assert.Equal(t, tc.refused, got.Refused())
			})
		}
	})
}

// TestParseErrorIDMustAgreeWithStatus: a crkvolError id is believed only when its row's
// status and class agree with the response's status, so a server cannot turn a transient
// failure into a refusal (or the reverse) by naming another row's id; a disagreeing id is
// read as if the server had sent none.
func TestParseErrorIDMustAgreeWithStatus(t *testing.T) {
	body := func(code, id string, status int) []byte {
		return fmt.Appendf(nil, `{"metadata":{"collectionType":%q,"collectionTotal":1},"resources":[{"errorMsg":"text","reasons":[{"code":%q,"message":"why","status":%d,"crkvolError":%q}]}]}`,
			TypeError, code, status, id)
	}
	for _, tc := range []struct {
		name     string
		status   int
		code, id string
		sentinel error // nil: none
		refused  bool
	}{
		{"refusal id on a 503", 503, "KEY_DELETED_ERR", "key_destroyed", nil, false},
		{"refusal id on a 500", 500, "INTERNAL_SERVER_ERR", "key_suspended", nil, false},
		{"refusal id on a 429", 429, "TOO_MANY_REQUESTS_ERR", "key_not_found", nil, false},
		{"failure id on a 410", 410, "INTERNAL_SERVER_ERR", "master_key", nil, true},
		{"failure id on a 410, code of two rows", 410, "KEY_DELETED_ERR", "master_key", nil, true},
		{"failure id on a 404, code of one row", 404, "KEY_NOT_FOUND_ERR", "audit", crk.ErrKeyNotFound, true},
		{"refusal id of another status", 409, "KEY_DELETED_ERR", "key_destroyed", nil, true},
		{"refusal id of its status", 410, "KEY_DELETED_ERR", "key_destroyed", crk.ErrKeyDestroyed, true},
		{"failure id of its status", 500, "INTERNAL_SERVER_ERR", "master_key", crk.ErrMasterKey, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ParseError(tc.status, body(tc.code, tc.id, tc.status))
			if tc.sentinel != nil {
				assert.ErrorIs(t, got, tc.sentinel)
			} else {
				assert.Nil(t, got.Sentinel, "%v", got.Sentinel)
			}
			for _, info := range crk.Errors() {
				if info.Err != tc.sentinel {
					assert.NotErrorIs(t, got, info.Err, info.ID)
				}
			}
			assert.Equal(t, tc.refused, got.Refused())
		})
	}
}

// TestRefusedStatus: the one rule for statuses without an error table row. 4xx refuse, except
// those that ask to come back later (408, 425, 429); 5xx and the rest do not.
func TestRefusedStatus(t *testing.T) {
	for _, tc := range []struct {
		status    int
		refused   bool
		transient bool
	}{
		{200, false, false}, {301, false, false},
		{400, true, false}, {401, true, false}, {403, true, false}, {404, true, false},
		{408, false, true}, {409, true, false}, {410, true, false}, {422, true, false},
		{425, false, true}, {429, false, true}, {499, true, false},
		{500, false, true}, {501, false, false}, {502, false, true}, {503, false, true}, {504, false, true},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			assert.Equal(t, tc.refused, RefusedStatus(tc.status))
			assert.Equal(t, tc.transient, TransientStatus(tc.status))
			assert.Equal(t, tc.refused, ParseError(tc.status, nil).Refused())
		})
	}
}

// TestParseErrorEscapesControls: text from a response body reaches a terminal, so control
// characters (escape sequences, line breaks, bidirectional overrides) in the message and
// reason code are escaped, invalid UTF-8 is replaced, and the result stays capped.
func TestParseErrorEscapesControls(t *testing.T) {
	reason := func(code, msg string) []byte {
		b, err := json.Marshal(ErrorBody{Resources: []ErrorResource{{ErrorMsg: "x", Reasons: []ErrorReason{{Code: code, Message: msg, Status: 400}}}}})
		require.NoError(t, err)
		return b
	}
	for _, tc := range []struct {
		name   string
		body   []byte
		want   string // Message
		inText []string
	}{
		{"escape sequence and newline", reason("BAD_ERR", "\x1b[31m\nfake line"), `\x1b[31m\nfake line`, []string{`\x1b[31m\nfake line`}},
		{"carriage return, tab, bell, nul", reason("BAD_ERR", "a\rb\tc\ad\x00e"), `a\rb\tc\x07d\x00e`, nil},
		{"C1 control and DEL", reason("BAD_ERR", "a\u009bb\x7fc"), `a\u009bb\x7fc`, nil},
		{"bidi override", reason("BAD_ERR", "abc\u202edef"), `abc\u202edef`, nil},
		{"line and paragraph separators", reason("BAD_ERR", "a\u2028b\u2029c"), `a\u2028b\u2029c`, nil},
		{"zero-width and format characters", reason("BAD_ERR", "a\u200bb\ufeffc\u00add\U000e0041e"), `a\u200bb\ufeffc\u00add\U000e0041e`, nil},
		{"control in the code", reason("BAD\x1b]0;title\x07_ERR", "why"), "why", []string{`BAD\x1b]0;title\x07_ERR`}},
		{"control in errorMsg", []byte(`{"resources":[{"errorMsg":"bad\u001b[2Jthing"}]}`), `bad\x1b[2Jthing`, nil},
		{"invalid utf-8", []byte("{\"resources\":[{\"errorMsg\":\"a\xffb\"}]}"), "a\ufffdb", nil},
		{"plain text kept", reason("BAD_ERR", "the key is suspended: é ✓"), "the key is suspended: é ✓", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ParseError(400, tc.body)
			assert.Equal(t, tc.want, got.Message)
			text := got.Error()
			for _, r := range text {
				assert.False(t, unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp), "control or format character %U in %q", r, text)
			}
			for _, s := range tc.inText {
				assert.Contains(t, text, s)
			}
		})
	}

	t.Run("escaping stays within the cap", func(t *testing.T) {
		got := ParseError(400, reason("BAD_ERR", strings.Repeat("\x1b", 4000)))
		assert.LessOrEqual(t, len(got.Message), maxMessage+3)
		assert.True(t, strings.HasPrefix(got.Message, `\x1b\x1b`))
		assert.True(t, strings.HasSuffix(got.Message, `\x1b...`), "no escape cut in half: %q", got.Message[len(got.Message)-8:])
		got = ParseError(400, reason(strings.Repeat("C", 4000), "why"))
		assert.LessOrEqual(t, len(got.Code), maxMessage+3)
	})
}

// TestDatabaseUnavailableIs503: a key store database that could not be reached within its
// retry window, or went away during a COMMIT, is a 503 (a client may send the request
// again), however the failure is wrapped: in the token check, or in crk's audit error; other
// failures stay 500.
func TestDatabaseUnavailableIs503(t *testing.T) {
	unavailable := fmt.Errorf("%w after 9 attempts: dial: connection refused", pgdb.ErrUnavailable)
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"as is", unavailable, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE_ERR"},
		{"checking a token", dbError("reading tokens", unavailable), http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE_ERR"},
		{"recording an audit event", fmt.Errorf("crk: %w: kms.secrets.wrap: %w", crk.ErrAudit, unavailable), http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE_ERR"},
		{"commit cut", fmt.Errorf("crk: %w: kms.secrets.wrap: %w: connection refused", crk.ErrAudit, pgdb.ErrCommitUnknown), http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE_ERR"},
		{"another failure", errors.New("disk on fire"), http.StatusInternalServerError, "INTERNAL_SERVER_ERR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeError(rec, tc.err)
			assert.Equal(t, tc.status, rec.Code)
			perr := ParseError(rec.Code, rec.Body.Bytes())
			assert.Equal(t, tc.code, perr.Code)
			assert.NotContains(t, rec.Body.String(), "connection refused", "the cause stays in the server")
			assert.True(t, TransientStatus(rec.Code), "a client may send the request again")
		})
	}
}
