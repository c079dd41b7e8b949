package pgdb

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
)

// notifications collects what Listen hands its fn.
func listen(t *testing.T, db *DB, channel string) (<-chan string, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		db.Listen(ctx, channel, func(payload string) { got <- payload })
	}()
	stop := func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return got, stop
}

func next(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case p := <-got:
		return p
	case <-time.After(30 * time.Second): // a hang guard, not a timing requirement
		t.Fatal("no notification")
		return ""
	}
}

func notify(t *testing.T, db *DB, channel, payload string) {
	t.Helper()
	ctx := testCtx(t)
	require.NoError(t, db.Tx(ctx, func(tx pgx.Tx) error { // Tx: the pool may hold connections a restart cut
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", channel, payload)
		return err
	}))
}

// TestListen: fn gets "" once connected, then each notification's payload in order; after
// the server restarts it gets "" again and the notifications sent since; when ctx ends
// Listen returns.
func TestListen(t *testing.T) {
	t.Parallel()
	c := pgtest.New(t)
	db := open(t, c.NewDatabase(t))
	got, stop := listen(t, db, "crk feed") // a channel name that needs quoting
	require.Equal(t, "", next(t, got), "connected")
	notify(t, db, "crk feed", "a")
	notify(t, db, "other", "x")
	notify(t, db, "crk feed", "b")
	require.Equal(t, "a", next(t, got))
	require.Equal(t, "b", next(t, got))

	c.Restart(t)
	require.Equal(t, "", next(t, got), "reconnected")
	notify(t, db, "crk feed", "c")
	require.Equal(t, "c", next(t, got))

	stop()
	select {
	case p := <-got:
		t.Fatalf("notification %q after Listen returned", p)
	default:
	}
}
