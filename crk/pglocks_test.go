package crk

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// deadlocks returns the number of deadlocks PostgreSQL detected in the database at url, once
// every other session of it ended (a backend reports its counters when it exits).
func deadlocks(t *testing.T, url string) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	guard := time.Now().Add(time.Minute) // a hang guard, not a threshold
	for {
		var others int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&others))
		if others == 0 {
			break
		}
		require.True(t, time.Now().Before(guard), "%d sessions still open", others)
		time.Sleep(20 * time.Millisecond)
	}
	_, err = conn.Exec(ctx, `SELECT pg_stat_clear_snapshot()`)
	require.NoError(t, err)
	var n int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`).Scan(&n))
	return n
}

// TestReplicasRegistrationsNoDeadlock: registrations made, changed and deleted on different
// keys by two replicas at once, while the keys are used and rotated, never deadlock: every
// request succeeds or is refused for what it asks, none fails after the store's retries.
func TestReplicasRegistrationsNoDeadlock(t *testing.T) {
	t.Parallel() // a database of its own
	url := pgtest.Start(t).NewDatabase(t)
	ctx := context.Background()
	keyFile := filepath.Join(t.TempDir(), "master.key")
	before := deadlocks(t, url)
	var dbs []*Database
	var rs []*Service
	instance := ""
	for range 2 {
		db, err := OpenDatabase(ctx, url, nil)
		require.NoError(t, err)
		svc, err := db.Open(Options{MasterKeyFile: keyFile, Instance: instance})
		require.NoError(t, err)
		instance = svc.Instance()
		dbs, rs = append(dbs, db), append(rs, svc)
	}
	var keys []string
	for i := range 8 {
		k, err := rs[0].CreateRootKey(ctx, fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		keys = append(keys, k.ID)
	}
	// 16 goroutines of 12 steps in CI; 8 of 8 (every kind of step twice each) in a plain run.
	goroutines, steps := tooltest.Scale(16, 8), tooltest.Scale(12, 8)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			svc := rs[g%2]
			for i := range steps {
				key := keys[(g+i)%len(keys)]
				crn := fmt.Sprintf("crn:v1:local:public:is:local:a/crkvol::volume:g%d-%d", g, i)
				var err error
				switch i % 4 {
				case 0, 1:
					_, err = svc.Register(ctx, key, crn, RegisterOptions{})
					if err == nil {
						desc := "changed"
						_, err = svc.UpdateRegistration(ctx, key, crn, RegistrationUpdate{Description: &desc})
					}
					if err == nil && i%4 == 1 {
						err = svc.DeleteRegistration(ctx, key, crn)
					}
				case 2:
					_, err = svc.Wrap(ctx, key, []byte("plaintext"), nil)
				case 3:
					_, err = svc.RotateKey(ctx, key, nil)
					if errors.Is(err, ErrRotationTooSoon) {
						err = nil // a proper refusal
					}
				}
				if err != nil {
					failures.Add(1)
					t.Errorf("goroutine %d, step %d: %v", g, i, err)
				}
			}
		})
	}
	wg.Wait()
	assert.Zero(t, failures.Load())
	for i := range rs {
		require.NoError(t, rs[i].Close())
		require.NoError(t, dbs[i].Close())
	}
	assert.Equal(t, before, deadlocks(t, url), "deadlocks detected by PostgreSQL")
}
