package main

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// startKMSServe starts "crkvol kms serve" in dir over the state directory dir/served, on
// loopback with the static token (serveProcess: stopped with SIGTERM on cleanup, its output
// logged if the test failed);
// env is added to the server's environment. It returns the service's URL and the id of its
// default instance.
func startKMSServe(t *testing.T, dir string, env []string, token string) (url, inst string) {
	t.Helper()
	served := append([]string{"CRKVOL_STATE=" + filepath.Join(dir, "served")}, env...)
	code, out, errOut := runEnv(t, dir, served, "--json", "kms", "instance", "list")
	require.Zero(t, code, errOut)
	var insts []struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &insts), out)
	require.NotEmpty(t, insts)
	inst = insts[0].ID

	_, url, _ = serveProcess(t, dir, served, "addr.txt", token)
	return url, inst
}
