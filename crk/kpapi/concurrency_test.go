package kpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// TestConcurrentChangesAcrossServers: two servers on one PostgreSQL database, as two kms
// serve replicas, take concurrent changes of one key: rotations, registrations of one
// resource, and updates of one registration, half through each server. The database's
// serialization failures and deadlocks are retried inside the server: every answer is a
// success or the Key Protect refusal of the request (exactly one rotation within the hour,
// one registration of the resource), never a 500.
func TestConcurrentChangesAcrossServers(t *testing.T) {
	clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	opts := crk.Options{Clock: clock, MasterKey: bytes.Repeat([]byte{3}, 32)}
	p := sharePostgres(t)
	var servers []*httptest.Server
	var inst string
	var svc *crk.Service
	for i := range 2 {
		tenants, err := p.open(opts)
		require.NoError(t, err)
		t.Cleanup(func() { tenants.Close() })
		tenants.SetStaticToken(staticToken)
		if i == 0 {
			inst, err = tenants.CreateInstance(t.Name())
			require.NoError(t, err)
			svc, err = tenants.Service(inst)
			require.NoError(t, err)
		}
		srv := httptest.NewServer(NewServer(tenants))
		t.Cleanup(srv.Close)
		servers = append(servers, srv)
	}
	ctx := context.Background()
	k, err := svc.CreateRootKey(ctx, "contended")
	require.NoError(t, err)
	const updated = "crn:v1:local:public:is:local:a/crkvol::volume:updated"
	_, err = svc.Register(ctx, k.ID, updated, crk.RegisterOptions{})
	require.NoError(t, err)

	type answer struct {
		op     string
		status int
		code   string
	}
	send := func(srv *httptest.Server, op, method, path, contentType, body string) answer {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			return answer{op: op, code: err.Error()}
		}
		req.Header.Set("Authorization", "Bearer "+staticToken)
		req.Header.Set("bluemix-instance", inst)
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return answer{op: op, code: err.Error()}
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		a := answer{op: op, status: resp.StatusCode}
		var env ErrorBody
		if resp.StatusCode >= 400 && json.Unmarshal(raw, &env) == nil && len(env.Resources) == 1 && len(env.Resources[0].Reasons) == 1 {
			a.code = env.Resources[0].Reasons[0].Code
		}
		return a
	}
	const perOp = 8 // of each operation, half through each server
	const registered = "crn:v1:local:public:is:local:a/crkvol::volume:registered"
	ops := []func(srv *httptest.Server, i int) answer{
		func(srv *httptest.Server, _ int) answer {
			return send(srv, "rotate", http.MethodPost, "/api/v2/keys/"+k.ID+"/actions/rotate", "application/vnd.ibm.kms.key_action+json", "{}")
		},
		func(srv *httptest.Server, _ int) answer {
			return send(srv, "register", http.MethodPost, "/api/v2/keys/"+k.ID+"/registrations/"+registered, "application/json", "{}")
		},
		func(srv *httptest.Server, i int) answer {
			return send(srv, "update", http.MethodPatch, "/api/v2/keys/"+k.ID+"/registrations/"+updated, "application/json",
				fmt.Sprintf(`{"description":"update %d"}`, i))
		},
	}
	answers := make(chan answer, perOp*len(ops))
	var wg sync.WaitGroup
	for i := range perOp {
		for _, op := range ops {
			wg.Go(func() { answers <- op(servers[i%2], i) })
		}
	}
	wg.Wait()
	close(answers)

	count := map[answer]int{}
	for a := range answers {
		count[a]++
	}
	t.Logf("answers: %v", count)
	assert.Equal(t, map[answer]int{
		{"rotate", http.StatusNoContent, ""}:                          1,
		{"rotate", http.StatusConflict, "KEY_ROTATION_NOT_PERMITTED"}: perOp - 1,
		{"register", http.StatusCreated, ""}:                          1,
		{"register", http.StatusConflict, "CONFLICT_ERR"}:             perOp - 1,
		{"update", http.StatusOK, ""}:                                 perOp,
	}, count)
	versions, err := svc.ListVersions(ctx, k.ID)
	require.NoError(t, err)
	assert.Len(t, versions, 2, "one rotation")
}
