package pgdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// MinLeaseTTL is the shortest lease [DB.Lead] takes: a quarter of it is the interval of its
// polls and renewals.
const MinLeaseTTL = 100 * time.Millisecond

// acquireLease takes or renews the lease: it succeeds when nobody holds it, when holder
// already does, or when the current holder's lease has expired by the database's clock.
const acquireLease = `
INSERT INTO crkvol_leases AS l (name, holder, expires)
VALUES ($1, $2, now() + $3 * interval '1 microsecond')
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
WHERE l.holder = excluded.holder OR l.expires < now()
RETURNING expires`

// Lead competes for the lease name as holder (a name unique to this replica) until ctx
// ends, and runs run while it holds it, so that among replicas sharing the database at most
// one runs at a time. It polls for the lease every ttl/4; once it has it, it renews it every
// ttl/4, and cancels run's context as soon as the lease is lost or has not been renewed for
// 7/8 of ttl by the local monotonic clock (the lease itself lasts ttl by the database's
// clock, measured from when the database ran the renewal, which is after this replica sent
// it). Lead waits for run to return before competing again. When run returns while the
// lease is still held, Lead releases it and competes again a poll later; when ctx ends it
// cancels run, waits for it and releases the lease. A replica that dies without releasing
// is replaced once its lease expires: within ttl plus a poll.
//
// A database out of reach is logged twice per outage: its first failed poll or renewal at
// Warn and the first success after it at Info with how long it lasted (the failures between
// them at Debug); losing or giving up the lease is logged each time at Warn.
//
// The database's clock alone decides expiry, so replicas' clocks need not agree. A ttl
// under MinLeaseTTL is taken as MinLeaseTTL.
func (db *DB) Lead(ctx context.Context, name, holder string, ttl time.Duration, run func(ctx context.Context)) {
	ttl = max(ttl, MinLeaseTTL)
	poll := ttl / 4
	o := &outage{log: db.log, what: "lease"}
	for ctx.Err() == nil {
		sent := time.Now()
		held, err := db.acquire(ctx, name, holder, ttl, sent.Add(poll))
		switch {
		case err != nil && ctx.Err() == nil:
			o.failed("cannot reach the database", "lease", name, "err", err)
		case err == nil:
			o.recovered("database reachable again", "lease", name)
		}
		if held {
			db.log.Info("lease acquired", "lease", name, "holder", holder)
			db.hold(ctx, name, holder, ttl, sent, run, o)
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// hold runs run while it renews the lease, acquired by a statement sent at sent.
func (db *DB) hold(ctx context.Context, name, holder string, ttl time.Duration, sent time.Time, run func(context.Context), o *outage) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(runCtx)
	}()
	margin := ttl / 8
	deadline := sent.Add(ttl - margin)
	expire := time.NewTimer(time.Until(deadline))
	defer expire.Stop()
	renew := time.NewTicker(ttl / 4)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			cancel()
			<-done
			db.release(name, holder)
			return
		case <-done:
			db.log.Info("lease: run returned; releasing", "lease", name, "holder", holder)
			db.release(name, holder)
			return
		case <-expire.C:
			db.log.Warn("lease: not renewed in time; stopping", "lease", name, "holder", holder)
			cancel()
			<-done
			return
		case <-renew.C:
			sent := time.Now()
			held, err := db.acquire(ctx, name, holder, ttl, deadline)
			switch {
			case err != nil:
				if ctx.Err() == nil {
					o.failed("cannot reach the database", "lease", name, "renewal", true, "err", err)
				}
			case !held:
				db.log.Warn("lease: lost to another holder; stopping", "lease", name, "holder", holder)
				cancel()
				<-done
				return
			default:
				o.recovered("database reachable again", "lease", name)
				deadline = sent.Add(ttl - margin)
				expire.Reset(time.Until(deadline))
			}
		}
	}
}

// acquire runs acquireLease, giving up at until. It reports whether holder has the lease.
func (db *DB) acquire(ctx context.Context, name, holder string, ttl time.Duration, until time.Time) (bool, error) {
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	var expires time.Time
	err := db.pool.QueryRow(ctx, acquireLease, name, holder, ttl.Microseconds()).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	return true, nil
}

// release gives the lease up, if holder still has it; best effort, since it expires anyway.
func (db *DB) release(name, holder string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := db.pool.Exec(ctx, "DELETE FROM crkvol_leases WHERE name = $1 AND holder = $2", name, holder); err != nil {
		db.log.Warn("lease: release failed", "lease", name, "err", err)
		return
	}
	db.log.Info("lease released", "lease", name, "holder", holder)
}

// Holder returns who holds the lease name and until when by the database's clock, or ""
// and the zero time when nobody does (never taken, released, or expired).
func (db *DB) Holder(ctx context.Context, name string) (holder string, expires time.Time, err error) {
	err = db.pool.QueryRow(ctx, "SELECT holder, expires FROM crkvol_leases WHERE name = $1 AND expires > now()", name).
		Scan(&holder, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("lease %s: %w", name, err)
	}
	return holder, expires, nil
}
