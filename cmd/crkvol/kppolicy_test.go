package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kpRunner runs crkvol commands in process on one embedded state directory, as USER=alice.
func kpRunner(t *testing.T) (ok func(args ...string) string, fails func(code int, args ...string) string) {
	env := testEnv(t)
	env["USER"] = "alice"
	ok = func(args ...string) string {
		t.Helper()
		code, stdout, stderr := runCLI(t, env, args...)
		require.Equal(t, 0, code, "crkvol %s: %s", strings.Join(args, " "), stderr)
		return stdout
	}
	fails = func(want int, args ...string) string {
		t.Helper()
		code, _, stderr := runCLI(t, env, args...)
		require.Equal(t, want, code, "crkvol %s: %s", strings.Join(args, " "), stderr)
		return stderr
	}
	return ok, fails
}

// TestKPKeySetForDeletion: kp key show (table and JSON) and kp key policies say whether a key
// with dual authorization delete is set for deletion and until when, which the official
// client's key drops (keySetForDeletion, authExpiration).
func TestKPKeySetForDeletion(t *testing.T) {
	t.Parallel()
	ok, _ := kpRunner(t)
	out := ok("kp", "key", "create", "guarded")
	m := regexp.MustCompile(`\n([0-9a-f-]{36})   guarded\n`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	id := m[1]
	plain := ok("kp", "key", "show", id)
	assert.NotContains(t, plain, "Dual Authorization Delete", "a key without the policy shows the plug-in's table only")
	ok("kp", "key", "policy-update", "dual-auth-delete", id, "-e")
	assert.Regexp(t, `(?m)^Set For Deletion +false$`, ok("kp", "key", "show", id))

	ok("kp", "key", "schedule-delete", id)
	out = ok("kp", "key", "show", id)
	assert.Regexp(t, `(?m)^Grabbing info for key id: `+id+`\.\.\.\nSUCCESS\nKey ID +Key Name +Description +Creation Date +Expiration Date\n`+id+`   guarded .*\n\nDual Authorization Delete\nSet For Deletion +true\nAuthorization Expires +2026-06-08T12:00:[0-9]{2}Z\n$`, out)

	var k struct {
		ID             string `json:"id"`
		DualAuthDelete struct {
			Enabled           bool   `json:"enabled"`
			KeySetForDeletion *bool  `json:"keySetForDeletion"`
			AuthExpiration    string `json:"authExpiration"`
		} `json:"dualAuthDelete"`
	}
	require.NoError(t, json.Unmarshal([]byte(ok("kp", "key", "show", id, "-o", "json")), &k))
	assert.Equal(t, id, k.ID)
	assert.True(t, k.DualAuthDelete.Enabled)
	require.NotNil(t, k.DualAuthDelete.KeySetForDeletion)
	assert.True(t, *k.DualAuthDelete.KeySetForDeletion)
	assert.Regexp(t, `^2026-06-08T12:00:[0-9]{2}Z$`, k.DualAuthDelete.AuthExpiration)

	out = ok("kp", "key", "policies", id)
	assert.Regexp(t, `(?m)^Policy Type +Dual Authorization Delete\nEnabled +true\nSet For Deletion +true\nAuthorization Expires +2026-06-08T12:00:[0-9]{2}Z$`, out)
	var ps []struct {
		DualAuthDelete *struct {
			KeySetForDeletion *bool  `json:"keySetForDeletion"`
			AuthExpiration    string `json:"authExpiration"`
		} `json:"dualAuthDelete"`
	}
	require.NoError(t, json.Unmarshal([]byte(ok("kp", "key", "policies", id, "-d", "-o", "json")), &ps))
	require.Len(t, ps, 1)
	require.NotNil(t, ps[0].DualAuthDelete)
	require.NotNil(t, ps[0].DualAuthDelete.KeySetForDeletion)
	assert.True(t, *ps[0].DualAuthDelete.KeySetForDeletion)
	assert.NotEmpty(t, ps[0].DualAuthDelete.AuthExpiration)

	ok("kp", "key", "cancel-delete", id)
	assert.Regexp(t, `(?m)^Set For Deletion +false$`, ok("kp", "key", "show", id))
}

// TestKPInstancePolicyUpdates: kp instance policy-update sets every instance policy the
// service has (allowed-network, key-create-import-access, metrics besides rotation and
// dual-auth-delete), kp instance policies shows their settings, and usage errors name the
// flag that is missing or wrong.
func TestKPInstancePolicyUpdates(t *testing.T) {
	t.Parallel()
	ok, fails := kpRunner(t)
	ok("kp", "instance", "policy-update", "allowed-network", "-e", "-n", "private-only")
	ok("kp", "instance", "policy-update", "key-create-import-access", "-e", "--create-standard-key=false", "--enforce-token")
	ok("kp", "instance", "policy-update", "metrics", "-e")
	out := ok("kp", "instance", "policy-update", "rotation", "-e", "-m", "4")
	assert.Regexp(t, `^Updating instance policy rotation of instance: [0-9a-f-]{36}\.\.\.\nSUCCESS\n$`, out)
	out = ok("kp", "instance", "policies")
	for _, re := range []string{
		`(?m)^Policy Type +Enabled +Last Updated +Updated By +Settings$`,
		`(?m)^rotation +true +2026-06-01T12:00:[0-9]{2}Z +cli:alice +interval_month=4$`,
		`(?m)^allowedNetwork +true +.* +cli:alice +allowed_network=private-only$`,
		`(?m)^keyCreateImportAccess +true +.* +cli:alice +create_root_key=true, create_standard_key=false, import_root_key=true, import_standard_key=true, enforce_token=true$`,
		`(?m)^metrics +true +.* +cli:alice$`,
	} {
		assert.Regexp(t, re, out)
	}
	// The policy takes effect: no standard key may be created now.
	assert.Contains(t, fails(1, "kp", "key", "create", "std", "-s"), "KEY_CREATE_IMPORT_ACCESS_ERR")

	ok("kp", "instance", "policy-update", "key-create-import-access", "-d")
	ok("kp", "instance", "policy-update", "metrics", "-d")
	var ps []struct {
		PolicyType string `json:"policy_type"`
		PolicyData struct {
			Enabled bool `json:"enabled"`
		} `json:"policy_data"`
	}
	require.NoError(t, json.Unmarshal([]byte(ok("kp", "instance", "policies", "-o", "json")), &ps))
	enabled := map[string]bool{}
	for _, p := range ps {
		enabled[p.PolicyType] = p.PolicyData.Enabled
	}
	assert.Equal(t, map[string]bool{"rotation": true, "allowedNetwork": true, "keyCreateImportAccess": false, "metrics": false}, enabled)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"rotation", "-e"}, "--enable needs -m, --monthly-interval"},
		{[]string{"rotation", "-e", "-d", "-m", "3"}, "give --enable or --disable, not both"},
		{[]string{"metrics"}, "give --enable or --disable"},
		{[]string{"allowed-network", "-e"}, "--enable needs -n, --network-type"},
		{[]string{"allowed-network", "-e", "-n", "everywhere"}, `--network-type "everywhere": want public-and-private or private-only`},
		{[]string{"allowed-network", "-d", "-n", "private-only"}, "-n, --network-type goes with --enable"},
		{[]string{"key-create-import-access", "-d", "--enforce-token"}, "--enforce-token goes with --enable"},
	} {
		assert.Contains(t, fails(2, append([]string{"kp", "instance", "policy-update"}, tc.args...)...), tc.want, "%v", tc.args)
	}
	assert.Contains(t, fails(2, "kp", "key", "policy-update", "dual-auth-delete", "00000000-0000-4000-8000-000000000000", "-e", "-d"), "give --enable or --disable, not both")
}
