package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"crkvol/internal/tooltest"
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

// TestKMSServeRefusesUnopenableStore: kms serve refuses to start, before serving anything,
// on a state directory whose key store it cannot open: one another kms serve serves (the
// refusal names that server's URL, whose record it leaves alone, and whose clients it does
// not disturb), or one whose key store is not a key store. Without the refusal the second
// server listened, handed out tokens and failed every key request.
func TestKMSServeRefusesUnopenableStore(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// setup prepares the state directory dir/served and returns what the refusal must
		// say (regular expressions).
		setup func(t *testing.T, dir string) []string
	}{
		{"served by another kms serve", func(t *testing.T, dir string) []string {
			url, _ := startKMSServe(t, dir, nil, "first-token")
			return []string{
				`the key store .*served/crk\.db is held by another crkvol process \(kms serve at ` + url + `, process \d+\)`,
				`hint: kms serve is already serving this state directory at ` + url,
			}
		}},
		{"held by another process", func(t *testing.T, dir string) []string {
			served := []string{"CRKVOL_STATE=" + filepath.Join(dir, "served")}
			code, _, errOut := runEnv(t, dir, served, "kms", "instance", "list")
			require.Zero(t, code, errOut)
			// A command of another process holds the store: no kms serve record names it.
			db, err := bolt.Open(filepath.Join(dir, "served", "crk.db"), 0o600, &bolt.Options{Timeout: time.Minute})
			require.NoError(t, err)
			t.Cleanup(func() { db.Close() })
			return []string{`the key store .*served/crk\.db is held by another crkvol process \(kms serve\?\)`}
		}},
		{"key store unreadable", func(t *testing.T, dir string) []string {
			served := []string{"CRKVOL_STATE=" + filepath.Join(dir, "served")}
			code, _, errOut := runEnv(t, dir, served, "kms", "instance", "list")
			require.Zero(t, code, errOut)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "served", "crk.db"), []byte("not a key store"), 0o600))
			return []string{`opening the default instance [0-9a-f-]+: `}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			want := tc.setup(t, dir)
			before, _ := readServeRecord(filepath.Join(dir, "served"))

			second := exec.Command("crkvol", "kms", "serve", "--listen", "127.0.0.1:0", "--addr-file", "addr2.txt")
			second.Dir = dir
			second.Env = append(os.Environ(), "CRKVOL_MASTER_KEY=", "CRKVOL_STATE="+filepath.Join(dir, "served"))
			errOut := &tooltest.SyncBuffer{}
			second.Stderr = errOut
			require.NoError(t, second.Start())
			ended := make(chan error, 1)
			go func() { ended <- second.Wait() }()
			var err error
			exited := false
			// The refusal, or (the defect) a second server that got as far as listening.
			waitFor(t, "the second kms serve to end or serve", time.Minute, func() bool {
				select {
				case err = <-ended:
					exited = true
					return true
				default:
				}
				_, serr := os.Stat(filepath.Join(dir, "addr2.txt"))
				return serr == nil
			})
			if !exited {
				second.Process.Kill()
				<-ended
				t.Fatalf("a second kms serve started on the state directory:\n%s", errOut.String())
			}
			var ee *exec.ExitError
			require.True(t, errors.As(err, &ee), "%v\n%s", err, errOut.String())
			assert.NotZero(t, ee.ExitCode())
			for _, re := range want {
				assert.Regexp(t, re, errOut.String())
			}
			assert.NotContains(t, errOut.String(), "serving the Key Protect API")
			assert.NoFileExists(t, filepath.Join(dir, "addr2.txt"))
			after, _ := readServeRecord(filepath.Join(dir, "served"))
			assert.Equal(t, before, after, "the first server's record is left alone")
		})
	}
}
