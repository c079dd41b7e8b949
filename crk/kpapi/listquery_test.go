package kpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// TestListKeysQueryOfficialClient: ListKeys of keyprotect-go-client v0.15.1 with each kind of
// option it sends (extractable, state, search, sort, filter, limit and offset), built with
// the client's own helpers; bad queries get 400 INVALID_QUERY_PARAM_ERR naming the part that
// is wrong, are audited, and change nothing.
func TestListKeysQueryOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		web, err := c.CreateRootKey(ctx, "web-root", nil)
		require.NoError(t, err)
		e.clock.Advance(time.Minute)
		db, err := c.CreateRootKey(ctx, "db-root", nil)
		require.NoError(t, err)
		e.clock.Advance(time.Minute)
		std, err := c.CreateStandardKey(ctx, "web-standard", nil)
		require.NoError(t, err)
		e.clock.Advance(time.Minute)
		gone, err := c.CreateRootKey(ctx, "gone", nil)
		require.NoError(t, err)
		_, err = c.DeleteKey(ctx, gone.ID, kp.ReturnMinimal)
		require.NoError(t, err)
		e.clock.Advance(time.Hour)
		require.NoError(t, c.Rotate(ctx, db.ID, ""))
		rotated := e.clock.Now()

		ids := func(opts *kp.ListKeysOptions) []string {
			t.Helper()
			keys, err := c.ListKeys(ctx, opts)
			require.NoError(t, err)
			assert.Equal(t, len(keys.Keys), keys.Metadata.NumberOfKeys)
			out := []string{}
			for _, k := range keys.Keys {
				out = append(out, k.ID)
			}
			return out
		}
		search := func(text string, opts ...kp.SearchOpts) *string {
			s, err := kp.GetKeySearchQuery(&text, opts...)
			require.NoError(t, err)
			return s
		}
		filter := func(fq *kp.FilterQueryBuilder) *string {
			s := fq.Build()
			return &s
		}
		yes, no := true, false
		limit, offset := uint32(1), uint32(1)
		for _, tc := range []struct {
			name string
			opts *kp.ListKeysOptions
			want []string
		}{
			{"none", &kp.ListKeysOptions{}, []string{web.ID, db.ID, std.ID}},
			{"extractable", &kp.ListKeysOptions{Extractable: &yes}, []string{std.ID}},
			{"root keys", &kp.ListKeysOptions{Extractable: &no}, []string{web.ID, db.ID}},
			{"state", &kp.ListKeysOptions{State: []kp.KeyState{kp.Destroyed}}, []string{gone.ID}},
			{"search", &kp.ListKeysOptions{Search: search("web")}, []string{web.ID, std.ID}},
			{"search exact name", &kp.ListKeysOptions{Search: search("web-root", kp.WithExactMatch(), kp.AddKeyNameScope())}, []string{web.ID}},
			{"search not", &kp.ListKeysOptions{Search: search("web", kp.ApplyNot())}, []string{db.ID}},
			{"search escaped", &kp.ListKeysOptions{Search: search("not:web", kp.AddEscape())}, []string{}},
			{"search alias scope", &kp.ListKeysOptions{Search: search("web", kp.AddAliasScope())}, []string{}},
			{"sort", &kp.ListKeysOptions{Sort: kp.GetKeySortStr(kp.WithCreationDateDesc())}, []string{std.ID, db.ID, web.ID}},
			{"sort two", &kp.ListKeysOptions{Sort: kp.GetKeySortStr(kp.WithExtractableDesc(), kp.WithID())}, []string{std.ID, minID(web.ID, db.ID), maxID(web.ID, db.ID)}},
			{"sort rotated", &kp.ListKeysOptions{Sort: kp.GetKeySortStr(kp.WithLastRotateDateDesc())}, []string{db.ID, web.ID, std.ID}},
			{"filter never rotated", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().LastRotationDate().None())}, []string{web.ID, std.ID}},
			{"filter rotated since", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().LastRotationDate().GreaterThanOrEqual(rotated))}, []string{db.ID}},
			{"filter updated", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().LastUpdateDate().LessThan(rotated.Add(time.Second)))}, []string{db.ID}},
			{"filter created", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().CreationDate().GreaterThan(*web.CreationDate).
				CreationDate().LessThanOrEqual(*std.CreationDate))}, []string{db.ID, std.ID}},
			{"filter created at", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().CreationDate().Equal(*db.CreationDate))}, []string{db.ID}},
			{"filter state and extractable", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().State([]kp.KeyState{kp.Active, kp.Destroyed}).Extractable(false))},
				[]string{web.ID, db.ID, gone.ID}},
			{"filter deleted", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().State([]kp.KeyState{kp.Destroyed}).DeletionDate().LessThanOrEqual(rotated))},
				[]string{gone.ID}},
			{"filter expiration", &kp.ListKeysOptions{Filter: filter(kp.GetFilterQueryBuilder().ExpirationDate().None())}, []string{web.ID, db.ID, std.ID}},
			{"everything", &kp.ListKeysOptions{Extractable: &no, State: []kp.KeyState{kp.Active, kp.Destroyed}, Search: search("root", kp.AddKeyNameScope()),
				Sort: kp.GetKeySortStr(kp.WithCreationDateDesc()), Filter: filter(kp.GetFilterQueryBuilder().DeletionDate().None()), Limit: &limit, Offset: &offset},
				[]string{web.ID}},
		} {
			assert.Equal(t, tc.want, ids(tc.opts), tc.name)
		}

		// Refusals: 400 INVALID_QUERY_PARAM_ERR naming the parameter and the bad part.
		svc := e.svc(t)
		before, err := svc.Events(ctx, crk.EventFilter{Action: crk.ActionDefault})
		require.NoError(t, err)
		str := func(s string) *string { return &s }
		for _, tc := range []struct {
			opts   *kp.ListKeysOptions
			target string
			msg    string
		}{
			{&kp.ListKeysOptions{Search: str("not:not:web")}, "search", `search prefix "not:" is given twice`},
			{&kp.ListKeysOptions{Search: str("")}, "search", "search has no text"},
			{&kp.ListKeysOptions{Sort: str("name")}, "sort", `sort property "name" is not one of`},
			{&kp.ListKeysOptions{Filter: str("name=web")}, "filter", `unknown property "name"`},
			{&kp.ListKeysOptions{Filter: str(`creationDate=after:"2026-01-01T00:00:00Z"`)}, "filter", `unknown operator "after"`},
			{&kp.ListKeysOptions{Filter: str("state=4")}, "filter", `state "4" is not one of`},
		} {
			_, err := c.ListKeys(ctx, tc.opts)
			code, status := reason(t, err)
			assert.Equal(t, "INVALID_QUERY_PARAM_ERR", code, tc.msg)
			assert.Equal(t, http.StatusBadRequest, status, tc.msg)
			assert.Contains(t, err.Error(), tc.msg)
		}
		// The raw envelope: the target and crkvol's id of the sentinel.
		resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys?"+url.Values{"extractable": {"maybe"}}.Encode(), "", nil)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		resp = e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys?sort=-nope", "", nil)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		var env ErrorBody
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&env))
		r := env.Resources[0].Reasons[0]
		assert.Equal(t, "INVALID_QUERY_PARAM_ERR", r.Code)
		assert.Equal(t, "invalid_query", r.CrkvolError)
		require.NotNil(t, r.Target)
		assert.Equal(t, "sort", r.Target.Name)
		after, err := svc.Events(ctx, crk.EventFilter{Action: crk.ActionDefault})
		require.NoError(t, err)
		assert.Len(t, after, len(before)+8, "every refusal is audited")
		assert.Equal(t, []string{web.ID, db.ID, std.ID}, ids(nil), "refusals change nothing")
	})
}

// TestListKeysAliasSearchOfficialClient: ListKeys searches of keyprotect-go-client v0.15.1
// look at a key's aliases (made with the client's CreateKeyAlias): an alias-scoped search and
// a plain one find the key by its alias, a name-scoped one does not, an exact search matches
// the whole alias, and not: leaves the key out.
func TestListKeysAliasSearchOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		first, err := c.CreateRootKey(ctx, "first", nil)
		require.NoError(t, err)
		e.clock.Advance(time.Minute)
		second, err := c.CreateRootKey(ctx, "second", nil)
		require.NoError(t, err)
		_, err = c.CreateKeyAlias(ctx, "web-alias", first.ID)
		require.NoError(t, err)

		for _, tc := range []struct {
			name string
			opts []kp.SearchOpts
			text string
			want []string
		}{
			{"alias scope", []kp.SearchOpts{kp.AddAliasScope()}, "web", []string{first.ID}},
			{"plain", nil, "web", []string{first.ID}},
			{"name scope", []kp.SearchOpts{kp.AddKeyNameScope()}, "web", []string{}},
			{"exact alias", []kp.SearchOpts{kp.WithExactMatch()}, "web-alias", []string{first.ID}},
			{"exact part of the alias", []kp.SearchOpts{kp.WithExactMatch()}, "web", []string{}},
			{"not", []kp.SearchOpts{kp.ApplyNot()}, "web", []string{second.ID}},
			// A key id is found whole (Key Protect: by key ID on an exact match only).
			{"key id", nil, second.ID, []string{second.ID}},
			{"exact key id", []kp.SearchOpts{kp.WithExactMatch()}, strings.ToUpper(second.ID), []string{second.ID}},
			{"part of a key id", nil, second.ID[:8], []string{}},
			{"key id in name scope", []kp.SearchOpts{kp.AddKeyNameScope()}, second.ID, []string{}},
		} {
			text := tc.text
			q, err := kp.GetKeySearchQuery(&text, tc.opts...)
			require.NoError(t, err)
			keys, err := c.ListKeys(ctx, &kp.ListKeysOptions{Search: q})
			require.NoError(t, err, tc.name)
			got := []string{}
			for _, k := range keys.Keys {
				got = append(got, k.ID)
			}
			assert.Equal(t, tc.want, got, "%s (search %q)", tc.name, *q)
		}
	})
}

// TestBodyTypeError: a body member of the wrong JSON type is refused with 400, naming the
// member's path and the JSON type it must have, without Go's type names; nothing changes.
func TestBodyTypeError(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ path, body, want string }{
		{"/api/v2/instance/policies?policy=metrics", `{"metadata":{"collectionType":"application/vnd.ibm.kms.policy+json","collectionTotal":1},"resources":[{"policy_type":"metrics","policy_data":{"enabled":"yes"}}]}`,
			"member resources.policy_data.enabled must be a boolean, not a string"},
		{"/api/v2/instance/policies?policy=rotation", `{"metadata":{"collectionType":"application/vnd.ibm.kms.policy+json","collectionTotal":1},"resources":[{"policy_type":"rotation","policy_data":{"enabled":true,"attributes":{"interval_month":"3"}}}]}`,
			"member resources.policy_data.attributes.interval_month must be an integer, not a string"},
		{"/api/v2/instance/policies?policy=metrics", `[1]`, "the body must be an object, not an array"},
	} {
		resp := e.do(t, http.MethodPut, e.srv.URL+tc.path, tc.body, http.Header{"Content-Type": {"application/json"}})
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s", body)
		r := reasonOf(t, body)
		assert.Equal(t, "BAD_BODY_ERR", r.Code)
		assert.Contains(t, r.Message, tc.want)
		assert.NotContains(t, r.Message, "Go ")
	}
	all, err := e.client.GetInstancePolicies(e.ctx)
	require.NoError(t, err)
	assert.Empty(t, all, "nothing changed")
}

func minID(a, b string) string { return min(a, b) }
func maxID(a, b string) string { return max(a, b) }

// TestKeyDatesAndPurgeOfficialClient: a new key has no lastUpdateDate and no lastRotateDate
// until it changes; a deleted key is purged from 4 hours after its deletion (409
// REQ_TOO_EARLY_ERR before, nothing changed), after which it no longer exists for the API
// (404 on its id and alias, in no listing); ListKeyVersions sends totalCount and
// allKeyStates.
func TestKeyDatesAndPurgeOfficialClient(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		k, err := c.CreateRootKey(ctx, "fresh", nil)
		require.NoError(t, err)
		assert.Nil(t, k.LastUpdateDate)
		assert.Nil(t, k.LastRotateDate)
		got, err := c.GetKey(ctx, k.ID)
		require.NoError(t, err)
		assert.Nil(t, got.LastUpdateDate, "a new key has no lastUpdateDate")
		assert.Nil(t, got.LastRotateDate)
		e.clock.Advance(time.Minute)
		require.NoError(t, c.Rotate(ctx, k.ID, ""))
		got, err = c.GetKey(ctx, k.ID)
		require.NoError(t, err)
		require.NotNil(t, got.LastUpdateDate)
		require.NotNil(t, got.LastRotateDate)
		assert.True(t, got.LastUpdateDate.Equal(e.clock.Now().Truncate(time.Second)))

		// Versions: totalCount only when asked for; allKeyStates accepted.
		yes, no := true, false
		one := uint32(1)
		vs, err := c.ListKeyVersions(ctx, k.ID, &kp.ListKeyVersionsOptions{Limit: &one, TotalCount: &yes, AllKeyStates: &yes})
		require.NoError(t, err)
		require.Len(t, vs.KeyVersion, 1)
		require.NotNil(t, vs.Metadata.TotalCount)
		assert.Equal(t, uint32(2), *vs.Metadata.TotalCount)
		assert.Equal(t, uint32(1), *vs.Metadata.CollectionTotal)
		vs, err = c.ListKeyVersions(ctx, k.ID, &kp.ListKeyVersionsOptions{TotalCount: &no})
		require.NoError(t, err)
		assert.Nil(t, vs.Metadata.TotalCount)
		assert.Len(t, vs.KeyVersion, 2)
		resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys/"+k.ID+"/versions?totalCount=yes", "", nil)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		resp = e.do(t, http.MethodGet, e.srv.URL+"/api/v2/keys/"+k.ID+"/versions?allKeyStates=1", "", nil)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

		// Purge: not within 4 hours of the deletion; then for good.
		_, err = c.CreateKeyAlias(ctx, "fresh-alias", k.ID)
		require.NoError(t, err)
		_, err = c.DeleteKey(ctx, k.ID, kp.ReturnMinimal)
		require.NoError(t, err)
		e.clock.Advance(crk.PurgeWait - time.Second)
		_, err = c.PurgeKey(ctx, k.ID, kp.ReturnMinimal)
		code, status := reason(t, err)
		assert.Equal(t, "REQ_TOO_EARLY_ERR", code)
		assert.Equal(t, http.StatusConflict, status)
		assert.Contains(t, err.Error(), "less than 4 hours ago")
		e.clock.Advance(time.Second)
		deleted, err := c.GetKey(ctx, "fresh-alias")
		require.NoError(t, err, "a deleted key is still there by its alias")
		assert.Equal(t, k.ID, deleted.ID)
		purged, err := c.PurgeKey(ctx, k.ID, kp.ReturnRepresentation)
		require.NoError(t, err)
		assert.Equal(t, k.ID, purged.ID)

		// A purged key no longer exists: every call on its id or alias is 404
		// KEY_NOT_FOUND_ERR, and no listing has it, whatever the states asked for.
		notFound := func(what string, err error) {
			t.Helper()
			code, status := reason(t, err)
			assert.Equal(t, "KEY_NOT_FOUND_ERR", code, what)
			assert.Equal(t, http.StatusNotFound, status, what)
		}
		_, err = c.RestoreKey(ctx, k.ID)
		notFound("restore", err)
		_, err = c.PurgeKey(ctx, k.ID, kp.ReturnMinimal)
		notFound("purge again", err)
		_, err = c.GetKey(ctx, k.ID)
		notFound("get", err)
		_, err = c.GetKey(ctx, "fresh-alias")
		notFound("get by alias", err)
		_, err = c.GetKeyMetadata(ctx, k.ID)
		notFound("metadata", err)
		_, err = c.ListKeyVersions(ctx, k.ID, &kp.ListKeyVersionsOptions{AllKeyStates: &yes})
		notFound("versions", err)
		_, err = c.GetPolicies(ctx, k.ID)
		notFound("policies", err)
		for _, path := range []string{"/api/v2/keys/" + k.ID, "/api/v2/keys/fresh-alias/metadata", "/api/v2/keys/" + k.ID + "/registrations"} {
			status, code := e.rawStatus(t, http.MethodGet, path, "")
			assert.Equal(t, http.StatusNotFound, status, path)
			assert.Equal(t, "KEY_NOT_FOUND_ERR", code, path)
		}
		all, err := c.ListKeys(ctx, &kp.ListKeysOptions{State: []kp.KeyState{kp.Active, kp.Destroyed}})
		require.NoError(t, err)
		assert.Empty(t, all.Keys, "a purged key is not listed")
		// crk keeps its record for the audit trail.
		rec, err := e.svc(t).GetKeyMetadata(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, crk.StateDestroyed, rec.State)
	})
}

// TestListQueryState: the state parameter is bounded like search, filter and sort: too
// long is refused naming the parameter; a state given twice counts once.
func TestListQueryState(t *testing.T) {
	for _, c := range []struct {
		state string
		want  []crk.State
		err   string
	}{
		{"1,5", []crk.State{1, 5}, ""},
		{"1, 1,5,1", []crk.State{1, 5}, ""},
		{"0,1,2,3,5", []crk.State{0, 1, 2, 3, 5}, ""},
		{strings.Repeat("1,", 40) + "1", nil, "at most 64"},
		{"4", nil, "must list key states"},
	} {
		opts, err := listQuery(url.Values{"state": {c.state}})
		if c.err != "" {
			var ae *apiError
			require.ErrorAs(t, err, &ae, c.state)
			assert.Equal(t, http.StatusBadRequest, ae.status)
			assert.Equal(t, "INVALID_QUERY_PARAM_ERR", ae.code)
			assert.Contains(t, ae.msg, c.err)
			continue
		}
		require.NoError(t, err, c.state)
		assert.Equal(t, c.want, opts.States, c.state)
	}
}

// TestBoolParam: every route's boolean query parameters (totalCount, force, extractable,
// allKeyStates) accept exactly true or false, and false when absent.
func TestBoolParam(t *testing.T) {
	for _, c := range []struct {
		query string
		want  bool
		ok    bool
	}{
		{"", false, true},
		{"force=true", true, true},
		{"force=false", false, true},
		{"force=", false, false},
		{"force", false, false},
		{"force=TRUE", false, false},
		{"force=True", false, false},
		{"force=1", false, false},
		{"force=t", false, false},
		{"force=yes", false, false},
		{"other=true", false, true},
	} {
		v, err := url.ParseQuery(c.query)
		require.NoError(t, err, c.query)
		got, err := boolParam(v, "force")
		if !c.ok {
			var ae *apiError
			require.ErrorAs(t, err, &ae, c.query)
			assert.Equal(t, http.StatusBadRequest, ae.status, c.query)
			assert.Equal(t, "INVALID_QUERY_PARAM_ERR", ae.code, c.query)
			assert.Contains(t, err.Error(), "force must be true or false", c.query)
			continue
		}
		require.NoError(t, err, c.query)
		assert.Equal(t, c.want, got, c.query)
	}
}
