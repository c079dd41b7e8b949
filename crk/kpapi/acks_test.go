package kpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// ackSend sends a request to AcksPath (plus query) with token tok for instance inst and
// returns the status and body.
func (e *env) ackSend(t *testing.T, method, query, body, tok, inst string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, method, e.srv.URL+AcksPath+query, strings.NewReader(body))
	require.NoError(t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("bluemix-instance", inst)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, raw
}

// reasonOf decodes the error envelope's first reason.
func reasonOf(t *testing.T, body []byte) ErrorReason {
	t.Helper()
	var eb ErrorBody
	require.NoError(t, json.Unmarshal(body, &eb), "%s", body)
	require.NotEmpty(t, eb.Resources, "%s", body)
	require.NotEmpty(t, eb.Resources[0].Reasons, "%s", body)
	return eb.Resources[0].Reasons[0]
}

// TestAcksAPI: a host's acknowledgement posted to AcksPath is 204 and listed by GET, latest
// per host; bad bodies, bad fields, unknown keys and other instances' tokens are refused in
// the error envelope with the status that says why.
func TestAcksAPI(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		k := e.registeredKey(t, "acked")
		require.NoError(t, e.client.DisableKey(e.ctx, k.ID))
		ackOf := func(host, typ, state string, volumes int) string {
			b, err := json.Marshal(AckBody{Host: host, KeyID: k.ID, Type: typ, State: state, Volumes: volumes, Stopped: 1, Cursor: "1"})
			require.NoError(t, err)
			return string(b)
		}
		ack := func(host, state string) string { return ackOf(host, crk.LifecycleDisable, state, 1) }
		status, body := e.ackSend(t, http.MethodPost, "", ackOf("web-1", crk.LifecycleSync, "active", 1), staticToken, e.inst)
		require.Equal(t, http.StatusNoContent, status, "%s", body)
		assert.Empty(t, body)
		status, body = e.ackSend(t, http.MethodPost, "", ack("web-1", "suspended"), staticToken, e.inst)
		require.Equal(t, http.StatusNoContent, status, "%s", body)
		status, body = e.ackSend(t, http.MethodPost, "", ack("db-1", "suspended"), staticToken, e.inst)
		require.Equal(t, http.StatusNoContent, status, "%s", body)

		status, body = e.ackSend(t, http.MethodGet, "?keyId="+k.ID, "", staticToken, e.inst)
		require.Equal(t, http.StatusOK, status, "%s", body)
		var got AcksAnswer
		require.NoError(t, json.Unmarshal(body, &got))
		require.Len(t, got.Acks, 2)
		assert.Equal(t, []string{"db-1", "web-1"}, []string{got.Acks[0].Host, got.Acks[1].Host})
		assert.Equal(t, "suspended", got.Acks[1].State, "the latest of web-1's")
		assert.Equal(t, 1, got.Acks[1].Volumes)
		assert.Equal(t, 1, got.Acks[1].Stopped)
		assert.Equal(t, "1", got.Acks[1].Cursor)
		assert.True(t, strings.HasPrefix(got.Acks[1].Reporter, "kpapi:"), "the reporter is the request's API credential: %q", got.Acks[1].Reporter)
		assert.Contains(t, string(body), `"reporter":"kpapi:`)
		assert.True(t, got.Acks[1].Time.Equal(e.clock.Now()))

		other, err := e.client.CreateRootKey(e.ctx, "unacked", nil)
		require.NoError(t, err)
		status, body = e.ackSend(t, http.MethodGet, "?keyId="+other.ID, "", staticToken, e.inst)
		require.Equal(t, http.StatusOK, status, "%s", body)
		assert.JSONEq(t, `{"acks":[]}`, string(body))

		unknown := "0c9a8d1e-0000-4000-8000-000000000000"
		for _, c := range []struct {
			name, method, query, body string
			status                    int
			code, target              string
		}{
			{"unknown member", http.MethodPost, "", `{"host":"h","keyId":"` + k.ID + `","type":"disable","state":"suspended","volume":1}`, 400, "BAD_BODY_ERR", ""},
			{"duplicate member", http.MethodPost, "", `{"host":"h","host":"i"}`, 400, "BAD_BODY_ERR", "host"},
			{"wrong type", http.MethodPost, "", `{"host":"h","keyId":"` + k.ID + `","type":"disable","state":"suspended","volumes":"1"}`, 400, "BAD_BODY_ERR", ""},
			{"not JSON", http.MethodPost, "", `host=h`, 400, "BAD_BODY_ERR", ""},
			{"trailing data", http.MethodPost, "", ack("h", "suspended") + `{}`, 400, "BAD_BODY_ERR", ""},
			{"empty body", http.MethodPost, "", ``, 400, "INVALID_FIELD_ERR", ""},
			{"bad host", http.MethodPost, "", ack("web 1", "suspended"), 400, "INVALID_FIELD_ERR", ""},
			{"bad state", http.MethodPost, "", ack("h", "locked"), 400, "INVALID_FIELD_ERR", ""},
			{"unknown key", http.MethodPost, "", strings.Replace(ack("h", "suspended"), k.ID, unknown, 1), 404, "KEY_NOT_FOUND_ERR", ""},
			{"reporter in the body", http.MethodPost, "", strings.Replace(ack("h", "suspended"), `{`, `{"reporter":"prod-db-1",`, 1), 400, "BAD_BODY_ERR", ""},
			{"contradictory type and state", http.MethodPost, "", ack("h", "active"), 400, "INVALID_FIELD_ERR", ""},
			{"pre-activation", http.MethodPost, "", ack("h", "pre-activation"), 400, "INVALID_FIELD_ERR", ""},
			{"more volumes than registrations", http.MethodPost, "", ackOf("h", crk.LifecycleDisable, "suspended", 999999999999), 400, "INVALID_FIELD_ERR", ""},
			{"forget without key", http.MethodDelete, "?host=web-1", "", 400, "INVALID_QUERY_PARAM_ERR", "keyId"},
			{"forget without host", http.MethodDelete, "?keyId=" + k.ID, "", 400, "INVALID_QUERY_PARAM_ERR", "host"},
			{"forget two hosts", http.MethodDelete, "?keyId=" + k.ID + "&host=a&host=b", "", 400, "INVALID_QUERY_PARAM_ERR", "host"},
			{"forget bad host", http.MethodDelete, "?keyId=" + k.ID + "&host=a%20b", "", 400, "INVALID_FIELD_ERR", ""},
			{"forget unknown key", http.MethodDelete, "?keyId=" + unknown + "&host=a", "", 404, "KEY_NOT_FOUND_ERR", ""},
			{"list unknown key", http.MethodGet, "?keyId=" + unknown, "", 404, "KEY_NOT_FOUND_ERR", ""},
			{"list without key", http.MethodGet, "", "", 400, "INVALID_QUERY_PARAM_ERR", "keyId"},
			{"list two keys", http.MethodGet, "?keyId=" + k.ID + "&keyId=" + k.ID, "", 400, "INVALID_QUERY_PARAM_ERR", "keyId"},
			{"wrong method", http.MethodPut, "", "", 405, "METHOD_NOT_ALLOWED_ERR", ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				status, body := e.ackSend(t, c.method, c.query, c.body, staticToken, e.inst)
				require.Equal(t, c.status, status, "%s", body)
				r := reasonOf(t, body)
				assert.Equal(t, c.code, r.Code, "%s", body)
				if c.target != "" {
					require.NotNil(t, r.Target, "%s", body)
					assert.Equal(t, c.target, r.Target.Name)
				}
			})
		}
		_, body = e.ackSend(t, http.MethodPost, "", ack("web 1", "suspended"), staticToken, e.inst)
		assert.Contains(t, reasonOf(t, body).Message, "host name", "the message names the field")
		_, body = e.ackSend(t, http.MethodPost, "", ack("h", "active"), staticToken, e.inst)
		assert.Contains(t, reasonOf(t, body).Message, "type disable with state active", "the message names both")
		_, body = e.ackSend(t, http.MethodPost, "", ackOf("h", crk.LifecycleDisable, "suspended", 999999999999), staticToken, e.inst)
		assert.Contains(t, reasonOf(t, body).Message, "volumes 999999999999: key "+k.ID+" has 1 registration(s)", "the message names both numbers")

		// Authorisation: no token, a wrong one, another instance's, a malformed instance.
		teamA, err := e.tenants.CreateInstance("team-a")
		require.NoError(t, err)
		apiKey, err := e.tenants.CreateAPIKey(teamA)
		require.NoError(t, err)
		tok, _, err := e.tenants.Exchange(apiKey)
		require.NoError(t, err)
		for _, c := range []struct {
			name, tok, inst string
			status          int
		}{
			{"no token", "", e.inst, 401},
			{"wrong token", "wrong", e.inst, 401},
			{"other instance's token", tok, e.inst, 401},
			{"malformed instance", staticToken, "not-a-uuid", 400},
		} {
			for _, m := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
				status, body := e.ackSend(t, m, "?keyId="+k.ID+"&host=web-1", ack("intruder", "suspended"), c.tok, c.inst)
				assert.Equal(t, c.status, status, "%s %s: %s", c.name, m, body)
			}
		}
		// team-a's token works in team-a, where the default instance's key is unknown.
		status, body = e.ackSend(t, http.MethodPost, "", ack("intruder", "suspended"), tok, teamA)
		assert.Equal(t, http.StatusNotFound, status, "%s", body)
		acks, err := e.svc(t).HostAcks(e.ctx, k.ID)
		require.NoError(t, err)
		assert.Len(t, acks, 2, "no refused acknowledgement was recorded")

		// Every acknowledgement and refusal is audited.
		evs, err := e.svc(t).Events(e.ctx, crk.EventFilter{KeyID: k.ID, Action: crk.ActionEventAck})
		require.NoError(t, err)
		var ok int
		for _, ev := range evs {
			if ev.Outcome == crk.OutcomeSuccess {
				ok++
			}
		}
		assert.Equal(t, 3, ok)

		// Forgetting a host: 204, gone from the list, audited; again 204.
		for range 2 {
			status, body = e.ackSend(t, http.MethodDelete, "?keyId="+k.ID+"&host=web-1", "", staticToken, e.inst)
			require.Equal(t, http.StatusNoContent, status, "%s", body)
			assert.Empty(t, body)
		}
		acks, err = e.svc(t).HostAcks(e.ctx, k.ID)
		require.NoError(t, err)
		require.Len(t, acks, 1)
		assert.Equal(t, "db-1", acks[0].Host)
		evs, err = e.svc(t).Events(e.ctx, crk.EventFilter{KeyID: k.ID, Action: crk.ActionForgetAck})
		require.NoError(t, err)
		var reasons []string
		for _, ev := range evs {
			if ev.Outcome == crk.OutcomeSuccess {
				reasons = append(reasons, ev.Reason)
			}
		}
		assert.Equal(t, []string{"host web-1 had no acknowledgement to forget", "acknowledgement of host web-1 forgotten"}, reasons)
	})
}
