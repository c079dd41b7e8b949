package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
)

// startKMSServe starts "crkvol kms serve" in dir over the state directory dir/served, on
// loopback with the static token, stopping it (SIGTERM) and logging its output on cleanup;
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

	serve := exec.Command("crkvol", "kms", "serve", "--listen", "127.0.0.1:0", "--addr-file", "addr.txt", "--static-token", token)
	serve.Dir = dir
	serve.Env = append(append(os.Environ(), "CRKVOL_MASTER_KEY="), served...)
	serveLog := &tooltest.SyncBuffer{}
	serve.Stderr = serveLog
	require.NoError(t, serve.Start())
	stopped := make(chan struct{})
	go func() { serve.Wait(); close(stopped) }()
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-stopped:
		case <-time.After(time.Minute):
			serve.Process.Kill()
		}
		t.Logf("kms serve log:\n%s", serveLog.String())
	})
	waitFor(t, "kms serve listening", time.Minute, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "addr.txt"))
		url = strings.TrimSpace(string(b))
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	return url, inst
}
