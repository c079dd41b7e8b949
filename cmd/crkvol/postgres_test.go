package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rogpeppe/go-internal/testscript"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// scriptCluster is the PostgreSQL server of the scripts that need one ([postgres]).
type scriptCluster struct {
	c *pgtest.Cluster
	n atomic.Int64
}

// scriptPostgres starts a PostgreSQL server for the scripts, stopped when t ends, when
// PostgreSQL is installed; without it the [postgres] scripts skip themselves, except under
// CI=true, where t fails (tooltest).
func scriptPostgres(t *testing.T) *scriptCluster {
	t.Helper()
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
