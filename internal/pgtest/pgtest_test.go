package pgtest

import (
	"context"
	"crkvol/internal/tooltest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

func query(t *testing.T, url, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var s string
	require.NoError(t, conn.QueryRow(ctx, sql).Scan(&s))
	return s
}

// TestSharedCluster: Start returns one cluster for the whole binary; each NewDatabase is a
// distinct empty database in UTF8 reached over the unix socket only.
func TestSharedCluster(t *testing.T) {
	t.Parallel()
	c := Start(t)
	assert.Same(t, c, Start(t))
	a, b := c.NewDatabase(t), c.NewDatabase(t)
	assert.NotEqual(t, a, b)
	for _, tc := range []struct{ sql, want string }{
		{"SHOW listen_addresses", ""},
		{"SHOW fsync", "off"},
		{"SHOW server_encoding", "UTF8"},
		{"SELECT current_user", Superuser},
		{"SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'", "0"},
	} {
		assert.Equal(t, tc.want, query(t, a, tc.sql), tc.sql)
	}
	assert.NotEqual(t, query(t, a, "SELECT current_database()"), query(t, b, "SELECT current_database()"))
}

// TestRestartAndStop: a cluster of the test's own restarts with its data kept, and after
// Stop its postmaster is gone and nothing answers.
func TestRestartAndStop(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("starts, restarts and stops clusters of its own: runs with CRKVOL_LONG_TESTS=1 (CI)")
	}
	t.Parallel()
	c := New(t)
	url := c.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
	require.NoError(t, err)
	conn.Close(ctx)

	c.Restart(t)
	assert.Equal(t, "before", query(t, url, "SELECT v FROM kept"))

	c.mu.Lock()
	pid := c.proc.Process.Pid
	c.mu.Unlock()
	c.Stop()
	c.Stop() // twice is fine
	_, err = os.Stat("/proc/" + strconv.Itoa(pid))
	assert.True(t, os.IsNotExist(err), "postmaster %d still exists after Stop", pid)
	_, err = pgx.Connect(ctx, url)
	assert.Error(t, err)
	c.StartAgain(t)
	assert.Equal(t, "before", query(t, url, "SELECT v FROM kept"))
}
