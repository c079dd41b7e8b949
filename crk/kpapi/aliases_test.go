package kpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
)

// aliasView is what alias and key ring requests may change, as the official client sees it:
// every key's aliases and ring, and the rings.
func aliasView(t *testing.T, e *env, c *kp.Client) string {
	t.Helper()
	keys, err := e.svc(t).ListKeys(e.ctx, crk.ListOptions{States: []crk.State{crk.StateActive, crk.StateSuspended, crk.StateDeactivated, crk.StateDestroyed}})
	require.NoError(t, err)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %v %s\n", k.ID, k.Aliases, k.KeyRingID)
	}
	rings, err := c.GetKeyRings(e.ctx)
	require.NoError(t, err)
	for _, r := range rings.KeyRings {
		fmt.Fprintf(&b, "ring %s\n", r.ID)
	}
	return b.String()
}

func TestOfficialClientAliases(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		k, err := c.CreateKeyWithAliases(ctx, "root", nil, false, []string{"vol-key", "first"})
		require.NoError(t, err)
		assert.Equal(t, []string{"first", "vol-key"}, k.Aliases)
		assert.Equal(t, "default", k.KeyRingID)
		other, err := c.CreateRootKey(ctx, "other", nil)
		require.NoError(t, err)

		a, err := c.CreateKeyAlias(ctx, "third", "vol-key")
		require.NoError(t, err)
		require.NotNil(t, a)
		assert.Equal(t, k.ID, a.KeyID)
		assert.Equal(t, "third", a.Alias)
		assert.NotEmpty(t, a.CreatedBy)
		require.NotNil(t, a.CreationDate)

		// The wire shape of the create answer.
		req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/api/v2/keys/"+k.ID+"/aliases/fourth", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+staticToken)
		req.Header.Set("bluemix-instance", e.inst)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var body struct {
			Metadata  Metadata `json:"metadata"`
			Resources []Alias  `json:"resources"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		resp.Body.Close()
		assert.Equal(t, http.StatusCreated, resp.StatusCode)
		assert.Equal(t, Metadata{CollectionType: "application/vnd.ibm.kms.alias+json", CollectionTotal: 1}, body.Metadata)
		require.Len(t, body.Resources, 1)
		assert.Equal(t, "fourth", body.Resources[0].Alias)
		assert.Equal(t, k.ID, body.Resources[0].KeyID)

		// Every key route takes an alias; what it records names the key by its id.
		got, err := c.GetKey(ctx, "vol-key")
		require.NoError(t, err)
		assert.Equal(t, k.ID, got.ID)
		assert.Equal(t, []string{"first", "fourth", "third", "vol-key"}, got.Aliases)
		meta, err := c.GetKeyMetadata(ctx, "first")
		require.NoError(t, err)
		assert.Equal(t, k.ID, meta.ID)
		aad := []string{"a"}
		ct, err := c.Wrap(ctx, "vol-key", []byte("c2VjcmV0"), &aad)
		require.NoError(t, err)
		pt, err := c.Unwrap(ctx, "third", ct, &aad)
		require.NoError(t, err)
		assert.Equal(t, "c2VjcmV0", string(pt))
		require.NoError(t, c.Rotate(ctx, "first", ""))
		vs, err := c.ListKeyVersions(ctx, "vol-key", nil)
		require.NoError(t, err)
		assert.Len(t, vs.KeyVersion, 2)
		_, err = c.SetRotationPolicy(ctx, "vol-key", 3)
		require.NoError(t, err)
		ps, err := c.GetPolicies(ctx, "first")
		require.NoError(t, err)
		require.NotEmpty(t, ps)
		require.NotNil(t, ps[0].Rotation)
		assert.Equal(t, 3, ps[0].Rotation.Interval)
		evs, err := e.svc(t).Events(ctx, crk.EventFilter{Action: crk.ActionWrap})
		require.NoError(t, err)
		require.NotEmpty(t, evs)
		assert.Equal(t, k.ID, evs[0].KeyID, "the audit event names the key id, not the alias")

		// Refusals: status, reason code, nothing changed.
		for _, r := range []struct {
			name   string
			do     func() error
			code   string
			status int
		}{
			{"sixth alias", nil, "KEY_ALIAS_QUOTA_ERR", http.StatusBadRequest}, // after a fifth, below
			{"alias of another key", func() error { _, err := c.CreateKeyAlias(ctx, "first", other.ID); return err }, "KEY_ALIAS_NOT_UNIQUE_ERR", http.StatusConflict},
			{"alias again", func() error { _, err := c.CreateKeyAlias(ctx, "first", "vol-key"); return err }, "KEY_ALIAS_NOT_UNIQUE_ERR", http.StatusConflict},
			{"bad syntax", func() error { _, err := c.CreateKeyAlias(ctx, "bad.alias", other.ID); return err }, "INVALID_FIELD_ERR", http.StatusBadRequest},
			{"reserved", func() error { _, err := c.CreateKeyAlias(ctx, "metadata", other.ID); return err }, "INVALID_FIELD_ERR", http.StatusBadRequest},
			{"version 4 UUID", func() error { _, err := c.CreateKeyAlias(ctx, other.ID, k.ID); return err }, "INVALID_FIELD_ERR", http.StatusBadRequest},
			{"version 1 UUID", func() error {
				_, err := c.CreateKeyAlias(ctx, "6BA7B810-9dad-11d1-80b4-00c04fd430c8", k.ID)
				return err
			}, "INVALID_FIELD_ERR", http.StatusBadRequest},
			{"unknown key or alias", func() error { _, err := c.CreateKeyAlias(ctx, "fine", "nobody"); return err }, "KEY_NOT_FOUND_ERR", http.StatusNotFound},
			{"get by unknown alias", func() error { _, err := c.GetKey(ctx, "nobody"); return err }, "KEY_NOT_FOUND_ERR", http.StatusNotFound},
			{"wrap by unknown alias", func() error { _, err := c.Wrap(ctx, "nobody", []byte("c2VjcmV0"), nil); return err }, "KEY_NOT_FOUND_ERR", http.StatusNotFound},
			{"delete an alias the key lacks", func() error { return c.DeleteKeyAlias(ctx, "vol-key", other.ID) }, "KEY_ALIAS_NOT_FOUND_ERR", http.StatusNotFound},
			{"create a key with a taken alias", func() error {
				_, err := c.CreateKeyWithAliases(ctx, "dup", nil, false, []string{"new-one", "third"})
				return err
			}, "KEY_ALIAS_NOT_UNIQUE_ERR", http.StatusConflict},
			{"create a key with six aliases", func() error {
				_, err := c.CreateKeyWithAliases(ctx, "many", nil, false, []string{"m1", "m2", "m3", "m4", "m5", "m6"})
				return err
			}, "KEY_ALIAS_QUOTA_ERR", http.StatusBadRequest},
		} {
			before := aliasView(t, e, c)
			if r.name == "sixth alias" {
				_, err := c.CreateKeyAlias(ctx, "fifth", k.ID)
				require.NoError(t, err)
				before = aliasView(t, e, c)
				_, err = c.CreateKeyAlias(ctx, "sixth", k.ID)
				code, status := reason(t, err)
				assert.Equal(t, r.code, code, r.name)
				assert.Equal(t, r.status, status, r.name)
				assert.Equal(t, before, aliasView(t, e, c), r.name)
				continue
			}
			code, status := reason(t, r.do())
			assert.Equal(t, r.code, code, r.name)
			assert.Equal(t, r.status, status, r.name)
			assert.Equal(t, before, aliasView(t, e, c), r.name)
		}

		// Delete, then the alias names nothing and is free again.
		require.NoError(t, c.DeleteKeyAlias(ctx, "fifth", "vol-key"))
		_, err = c.GetKey(ctx, "fifth")
		code, _ := reason(t, err)
		assert.Equal(t, "KEY_NOT_FOUND_ERR", code)
		_, err = c.CreateKeyAlias(ctx, "fifth", other.ID)
		require.NoError(t, err)

		// Delete and restore by alias: the key keeps its aliases.
		del, err := c.DeleteKey(ctx, "vol-key", kp.ReturnRepresentation)
		require.NoError(t, err)
		assert.Equal(t, k.ID, del.ID)
		e.clock.Advance(time.Minute)
		restored, err := c.RestoreKey(ctx, "first")
		require.NoError(t, err)
		assert.Equal(t, k.ID, restored.ID)
		assert.Equal(t, []string{"first", "fourth", "third", "vol-key"}, restored.Aliases)
	})
}

func TestOfficialClientKeyRings(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		c, ctx := e.client, e.ctx
		require.NoError(t, c.CreateKeyRing(ctx, "team-a"))
		require.NoError(t, c.CreateKeyRing(ctx, "team-b"))
		rings, err := c.GetKeyRings(ctx)
		require.NoError(t, err)
		assert.Equal(t, 3, rings.Metadata.NumberOfKeys)
		assert.Equal(t, "application/vnd.ibm.kms.key_ring+json", rings.Metadata.CollectionType)
		ids := []string{}
		for _, r := range rings.KeyRings {
			ids = append(ids, r.ID)
		}
		sort.Strings(ids)
		assert.Equal(t, []string{"default", "team-a", "team-b"}, ids)
		assert.Equal(t, "default", rings.KeyRings[0].ID)
		assert.NotNil(t, rings.KeyRings[1].CreationDate)
		resp := e.do(t, http.MethodGet, e.srv.URL+"/api/v2/key_rings?limit=1&offset=1&totalCount=true", "", nil)
		var page struct {
			Metadata  Metadata  `json:"metadata"`
			Resources []KeyRing `json:"resources"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
		resp.Body.Close()
		require.NotNil(t, page.Metadata.TotalCount)
		assert.Equal(t, 3, *page.Metadata.TotalCount)
		assert.Equal(t, 1, page.Metadata.CollectionTotal)
		require.Len(t, page.Resources, 1)
		assert.Equal(t, "team-a", page.Resources[0].ID)
		resp = e.do(t, http.MethodGet, e.srv.URL+"/api/v2/key_rings?limit=0", "", nil)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

		// A client configured with a ring creates its keys there and finds only them.
		inA := e.newClient(t, kp.ClientConfig{Authorization: "Bearer " + staticToken, InstanceID: e.inst, KeyRing: "team-a"})
		k, err := inA.CreateKeyWithAliases(ctx, "in-a", nil, false, []string{"ka"})
		require.NoError(t, err)
		assert.Equal(t, "team-a", k.KeyRingID)
		plain, err := c.CreateRootKey(ctx, "plain", nil)
		require.NoError(t, err)
		_, err = inA.GetKey(ctx, "ka")
		require.NoError(t, err)
		_, err = inA.GetKeyMetadata(ctx, plain.ID)
		code, status := reason(t, err)
		assert.Equal(t, "KEY_NOT_FOUND_ERR", code, "a key of another ring")
		assert.Equal(t, http.StatusNotFound, status)
		lost := e.newClient(t, kp.ClientConfig{Authorization: "Bearer " + staticToken, InstanceID: e.inst, KeyRing: "nowhere"})

		for _, r := range []struct {
			name   string
			do     func() error
			code   string
			status int
		}{
			{"ring id syntax", func() error { return c.CreateKeyRing(ctx, "bad_ring") }, "INVALID_FIELD_ERR", http.StatusBadRequest},
			{"ring exists", func() error { return c.CreateKeyRing(ctx, "team-a") }, "KEY_RING_ALREADY_EXISTS_ERR", http.StatusConflict},
			{"default exists", func() error { return c.CreateKeyRing(ctx, "default") }, "KEY_RING_ALREADY_EXISTS_ERR", http.StatusConflict},
			{"create in a missing ring", func() error { _, err := lost.CreateRootKey(ctx, "lost", nil); return err }, "KEY_RING_NOT_FOUND_ERR", http.StatusNotFound},
			{"move to a missing ring", func() error { _, err := c.SetKeyRing(ctx, "ka", "nowhere"); return err }, "KEY_RING_NOT_FOUND_ERR", http.StatusNotFound},
			{"move an unknown key", func() error { _, err := c.SetKeyRing(ctx, "nobody", "team-b"); return err }, "KEY_NOT_FOUND_ERR", http.StatusNotFound},
			{"delete default", func() error { return c.DeleteKeyRing(ctx, "default", kp.WithForce(true)) }, "INVALID_FIELD_ERR", http.StatusBadRequest},
			{"delete a ring with a live key", func() error { return c.DeleteKeyRing(ctx, "team-a", kp.WithForce(true)) }, "KEY_RING_NOT_EMPTY_ERR", http.StatusConflict},
			{"delete a missing ring", func() error { return c.DeleteKeyRing(ctx, "nowhere") }, "KEY_RING_NOT_FOUND_ERR", http.StatusNotFound},
		} {
			before := aliasView(t, e, c)
			code, status := reason(t, r.do())
			assert.Equal(t, r.code, code, r.name)
			assert.Equal(t, r.status, status, r.name)
			assert.Equal(t, before, aliasView(t, e, c), r.name)
		}

		moved, err := c.SetKeyRing(ctx, "ka", "team-b")
		require.NoError(t, err)
		assert.Equal(t, "team-b", moved.KeyRingID)
		assert.Equal(t, k.ID, moved.ID)
		require.NoError(t, c.DeleteKeyRing(ctx, "team-a"))
		_, err = c.DeleteKey(ctx, k.ID, kp.ReturnMinimal)
		require.NoError(t, err)
		before := aliasView(t, e, c)
		code, status = reason(t, c.DeleteKeyRing(ctx, "team-b"))
		assert.Equal(t, "KEY_RING_NOT_EMPTY_ERR", code, "deleted keys need force")
		assert.Equal(t, http.StatusConflict, status)
		assert.Equal(t, before, aliasView(t, e, c))
		require.NoError(t, c.DeleteKeyRing(ctx, "team-b", kp.WithForce(true)))
		rings, err = c.GetKeyRings(ctx)
		require.NoError(t, err)
		require.Len(t, rings.KeyRings, 1)
		k2, err := e.svc(t).GetKeyMetadata(ctx, k.ID)
		require.NoError(t, err)
		assert.Equal(t, "default", k2.KeyRingID, "force moved the deleted key to the default ring")
	})
}
