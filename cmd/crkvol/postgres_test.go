package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// scriptCluster is the PostgreSQL server of the scripts that need one ([postgres]).
type scriptCluster struct {
	c *pgtest.Cluster
	n atomic.Int64
}

// scriptPostgres starts a PostgreSQL server for the scripts, stopped when t ends, in the long
// run (CRKVOL_LONG_TESTS=1, as CI) when PostgreSQL is installed; otherwise the [postgres]
// scripts skip themselves, except under CI=true, where a missing PostgreSQL fails t
// (tooltest).
func scriptPostgres(t *testing.T) *scriptCluster {
	t.Helper()
	if !tooltest.Long() {
		return nil // the [postgres] scripts run in the long run (CI), to keep a plain run short
	}
	installed, _ := filepath.Glob(filepath.Join(tooltest.PostgresRoot, "*", "bin", "initdb"))
	if len(installed) == 0 && os.Getenv(tooltest.CIEnv) != "true" {
		return nil
	}
	return &scriptCluster{c: pgtest.New(t)}
}

// cmdDatabase is the script command pgdatabase VAR [PASSWORD]: it creates an empty database
// of the script's own and sets VAR to its URL, with PASSWORD written in it when given (the
// test server trusts local connections, so any password is accepted: for checking that it is
// never shown).
func (sc *scriptCluster) cmdDatabase(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: pgdatabase VAR [PASSWORD]")
	}
	if sc == nil {
		ts.Fatalf("pgdatabase needs PostgreSQL: guard the script with [!postgres] skip")
	}
	name := fmt.Sprintf("crkvol_script_%d", sc.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.c.URL("postgres"))
	ts.Check(err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0")
	ts.Check(err)
	url := sc.c.URL(name)
	if len(args) == 2 {
		url = "postgres://" + pgtest.Superuser + ":" + args[1] + "@/" + name + "?host=" + sc.c.SocketDir() + "&sslmode=disable"
	}
	ts.Setenv(args[0], url)
}

// TestServeDatabaseOutage (long): kms serve --store keeps answering while its database is
// down (with a server error, not a hang or an exit) and serves again once the database is
// back, without a restart; its scheduler stops when the lease cannot be renewed and runs
// again once the database is back.
func TestServeDatabaseOutage(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long test: set CRKVOL_LONG_TESTS=1")
	}
	c := pgtest.New(t)
	url := c.NewDatabase(t)
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr tooltest.SyncBuffer
	a := &app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: &stderr, getenv: func(k string) string {
		return map[string]string{"CRKVOL_STATE": filepath.Join(dir, "state"), "CRKVOL_STORE": url}[k]
	}}
	root := a.rootCommand()
	root.SetArgs([]string{"kms", "serve", "--listen", "127.0.0.1:0", "--addr-file", addrFile, "--static-token", "tok"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("kms serve: %v", err)
		}
		t.Logf("kms serve's stderr:\n%s", stderr.String())
	})
	var base string
	for deadline := time.Now().Add(time.Minute); base == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("kms serve did not start: %s", stderr.String())
		}
		if b, err := os.ReadFile(addrFile); err == nil && strings.HasSuffix(string(b), "\n") {
			base = strings.TrimSpace(string(b))
		}
	}
	conn, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	var def string
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT id FROM kp_instances WHERE is_default").Scan(&def))
	conn.Close(context.Background())
	client := &http.Client{Timeout: 2 * time.Minute} // a hang guard, not a threshold
	list := func() int {
		req, err := http.NewRequest(http.MethodGet, base+"/api/v2/keys", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer tok")
		req.Header.Set("Bluemix-Instance", def)
		start := time.Now()
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		t.Logf("GET /api/v2/keys: %d after %v", resp.StatusCode, time.Since(start).Round(time.Millisecond))
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, list())

	c.Stop()
	// The scheduler stops once its lease can no longer be renewed (7/8 of its 8 s), even
	// while a token clean-up waits for the database.
	stopped := time.Now()
	for !strings.Contains(stderr.String(), "scheduler: this replica stopped running the scheduled work") {
		if time.Since(stopped) > time.Minute {
			t.Fatalf("the scheduler did not stop while the database was down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("scheduler stopped %v after the database", time.Since(stopped).Round(time.Millisecond))
	assert.GreaterOrEqual(t, list(), 500, "while the database is down")
	c.StartAgain(t)
	ok := false
	for deadline := time.Now().Add(2 * time.Minute); !ok && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		ok = list() == http.StatusOK
	}
	assert.True(t, ok, "kms serve did not serve again once the database was back")
	for deadline := time.Now().Add(time.Minute); strings.Count(stderr.String(), "scheduler: this replica runs the scheduled work") < 2; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the scheduler did not take the lease again once the database was back")
		}
	}
}
