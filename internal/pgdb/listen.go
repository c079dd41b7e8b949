package pgdb

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listen follows the notification channel until ctx ends, on a connection of its own
// (outside the pool), calling fn with each notification's payload in the order sent. After
// each (re)connection it calls fn("") once, before any payload, so that the caller re-reads
// whatever it may have missed while it was not listening. A lost connection (the server
// restarted, say) is reconnected with backoff by itself. fn runs on Listen's goroutine: a
// slow fn delays the notifications after it, which PostgreSQL queues meanwhile.
//
// An outage is logged twice: the loss of the connection (or the first failure to connect)
// at Warn, and the reconnection at Info with how long it took; the failed attempts between
// them at Debug.
func (db *DB) Listen(ctx context.Context, channel string, fn func(payload string)) {
	backoff := minBackoff
	o := &outage{log: db.log, what: "listen"}
	for ctx.Err() == nil {
		if db.listenOnce(ctx, channel, fn, o) {
			backoff = minBackoff // it was connected: start over
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// listenOnce connects, listens and hands notifications to fn until the connection fails or
// ctx ends. It reports whether it got as far as listening.
func (db *DB) listenOnce(ctx context.Context, channel string, fn func(string), o *outage) (listened bool) {
	conn, err := pgx.ConnectConfig(ctx, db.pool.Config().ConnConfig.Copy())
	if err != nil {
		if ctx.Err() == nil {
			o.failed("cannot connect", "channel", channel, "err", err)
		}
		return false
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		if ctx.Err() == nil {
			o.failed("LISTEN failed", "channel", channel, "err", err)
		}
		return false
	}
	db.log.Debug("listening", "channel", channel)
	o.recovered("reconnected", "channel", channel)
	fn("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() == nil {
				o.failed("connection lost; reconnecting", "channel", channel, "err", err)
			}
			return true
		}
		fn(n.Payload)
	}
}
