package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/tooltest"
)

// TestVolumeKeyAlias: `volume create --key ALIAS` takes a key alias on the embedded service
// (TestVolumeKeyAliasRemote: on a remote one, --kms-url): the alias is resolved to the key id before anything is
// registered or stored, so the volume and its registration name the key by its id, and
// an alias no key has is refused with nothing created.
func TestVolumeKeyAlias(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()

	// Embedded: the alias is given in the store itself (no CLI command makes one).
	embedded := []string{"CRKVOL_STATE=" + filepath.Join(dir, "embedded")}
	code, out, errOut := runEnv(t, dir, embedded, "--json", "key", "create", "local-key")
	require.Zero(t, code, errOut)
	key := jsonField(t, out, "id")
	svc, err := crk.Open(filepath.Join(dir, "embedded", "crk.db"), crk.Options{})
	require.NoError(t, err)
	_, err = svc.CreateAlias(ctx, key, "local-alias")
	require.NoError(t, err)
	require.NoError(t, svc.Close())
	checkAliasVolume(t, dir, embedded, "local.img", "local-alias", key)
}

// TestVolumeKeyAliasRemote (long) is TestVolumeKeyAlias with --kms-url: the remote key
// service resolves the alias through the API.
func TestVolumeKeyAliasRemote(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("starts a kms serve: CRKVOL_LONG_TESTS=1")
	}
	t.Parallel()
	dir := t.TempDir()
	url, inst := startKMSServe(t, dir, nil, "alias-token")
	host := []string{"CRKVOL_STATE=" + filepath.Join(dir, "host"), "CRKVOL_KMS_URL=" + url,
		"CRKVOL_KMS_INSTANCE=" + inst, "CRKVOL_KMS_TOKEN=alias-token"}
	code, out, errOut := runEnv(t, dir, host, "--json", "key", "create", "remote-key")
	require.Zero(t, code, errOut)
	key := jsonField(t, out, "id")
	req, err := http.NewRequest(http.MethodPost, url+"/api/v2/keys/"+key+"/aliases/remote-alias", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer alias-token")
	req.Header.Set("bluemix-instance", inst)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	checkAliasVolume(t, dir, host, "remote.img", "remote-alias", key)
}

// checkAliasVolume creates volume img with --key alias and checks that it is on key id, that
// the key's registration names the volume, and that an unknown alias is refused.
func checkAliasVolume(t *testing.T, dir string, env []string, img, alias, id string) {
	t.Helper()
	code, created, errOut := runEnv(t, dir, env, "--json", "volume", "create", img, "--size", "1MiB", "--key", alias)
	require.Zero(t, code, errOut)
	assert.Contains(t, created, `"`+id+`"`, "the volume names the key by its id")
	assert.NotContains(t, created, alias)
	code, out, errOut := runEnv(t, dir, env, "--json", "key", "show", alias)
	require.Zero(t, code, errOut)
	assert.Equal(t, id, jsonField(t, out, "id"))
	assert.Contains(t, out, alias, "the key shows its aliases")
	code, out, errOut = runEnv(t, dir, env, "key", "show", alias)
	require.Zero(t, code, errOut)
	assert.Regexp(t, `(?m)^Aliases +`+alias+`$`, out)
	code, out, errOut = runEnv(t, dir, env, "--json", "key", "registrations", id)
	require.Zero(t, code, errOut)
	var regs struct {
		Resources []struct {
			KeyID       string `json:"keyId"`
			ResourceCRN string `json:"resourceCrn"`
		} `json:"resources"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &regs), out)
	require.Len(t, regs.Resources, 1, "the volume is registered under the key id")
	assert.Equal(t, id, regs.Resources[0].KeyID)
	assert.Contains(t, created, regs.Resources[0].ResourceCRN, "the registration is the volume's")
	code, _, errOut = runEnv(t, dir, env, "volume", "create", "never.img", "--size", "1MiB", "--key", "no-such-alias")
	assert.NotZero(t, code)
	assert.Contains(t, errOut, "no-such-alias")
	_, err := os.Stat(filepath.Join(dir, "never.img"))
	assert.True(t, os.IsNotExist(err), "nothing created for an unknown alias")
}
