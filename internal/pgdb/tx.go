package pgdb

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrCommitUnknown means the connection failed after COMMIT was sent: the transaction may
// or may not have committed. It is never retried; the caller must find out (or report) which.
var ErrCommitUnknown = errors.New("database commit outcome unknown")

// Backoff bounds of the retries of a transaction or a reconnection.
const (
	minBackoff = 10 * time.Millisecond
	maxBackoff = time.Second
)

// Tx runs fn in a READ COMMITTED read-write transaction and commits it when fn returns nil.
// On a serialization failure or deadlock (SQLSTATE 40001, 40P01), or a connection lost
// before COMMIT was sent, it rolls back and runs fn again, with jittered backoff, until ctx
// ends or the retry time (Options.RetryFor, [DefaultRetryFor] by default) is over; a database it could not reach by then
// gives an error wrapping [ErrUnavailable]. When ctx ends first the error wraps ctx's (and
// ErrUnavailable too if connections had failed before). A broken COMMIT gives [ErrCommitUnknown]. Any
// other error of fn rolls back and is returned as it is.
//
// fn may run more than once: it must do nothing but work on tx, or work safe to repeat.
func (db *DB) Tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return db.run(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted, AccessMode: pgx.ReadWrite}, fn)
}

// ReadTx is [DB.Tx] with a REPEATABLE READ read-only transaction: everything fn reads comes
// from one consistent snapshot.
func (db *DB) ReadTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return db.run(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// attemptError is the outcome of one attempt that may be retried: conn tells whether it was
// the connection that failed (as opposed to a serialization failure or deadlock).
type attemptError struct {
	err  error
	conn bool
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

func (db *DB) run(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	giveUp := time.Now().Add(db.retryFor)
	backoff := minBackoff
	connFailures := 0 // attempts that failed on the connection while ctx was live
	for attempt := 1; ; attempt++ {
		err := db.attempt(ctx, opts, fn)
		var retry *attemptError
		if !errors.As(err, &retry) {
			return err // nil, fn's own error, ErrCommitUnknown
		}
		if ctx.Err() != nil {
			// The failure may be ctx's doing (pgx closes a connection whose query is
			// cancelled): the database is unavailable only if earlier attempts said so.
			cause := ctxCause(ctx, retry.err)
			if connFailures > 0 || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				// Connections failed before, or the database gave no answer before the
				// caller's deadline (a server that stopped answering: no error comes).
				return fmt.Errorf("%w after %d attempts: %w", ErrUnavailable, attempt, cause)
			}
			return fmt.Errorf("transaction abandoned: %w", cause)
		}
		if retry.conn {
			connFailures++
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		if time.Now().Add(wait).After(giveUp) {
			if retry.conn {
				return fmt.Errorf("%w after %d attempts: %w", ErrUnavailable, attempt, retry.err)
			}
			return fmt.Errorf("transaction failed %d times: %w", attempt, retry.err)
		}
		db.log.Debug("retrying transaction", "attempt", attempt, "wait", wait, "err", retry.err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// ctxCause is the error of a transaction ended by ctx whose last attempt failed with err:
// both, so that errors.Is finds ctx's error and the attempt's, on one line, with ctx's error
// named once when err already wraps it (pgx reports a cancelled query as the context's
// error).
func ctxCause(ctx context.Context, err error) error {
	if errors.Is(err, ctx.Err()) {
		return err
	}
	return fmt.Errorf("%w: %w", ctx.Err(), err)
}

// attempt runs fn once in a transaction. A failure worth retrying comes back as an
// *attemptError.
func (db *DB) attempt(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	tx, err := db.pool.BeginTx(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			// ctx ended: run tells an abandoned transaction from an unreachable database
			// by the attempts before this one.
			return &attemptError{err: fmt.Errorf("begin transaction: %w", err)}
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && !connectionCode(pgErr.Code) {
			return fmt.Errorf("begin transaction: %w", err) // refused by the server: retrying will not help
		}
		return &attemptError{err: fmt.Errorf("begin transaction: %w", err), conn: true}
	}
	if err := fn(tx); err != nil {
		closed := tx.Conn().IsClosed() // before Rollback hands the connection back to the pool
		rollback(tx)
		if retry := retryable(err, closed); retry != nil {
			return retry
		}
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && retryCode(pgErr.Code):
			return &attemptError{err: err} // the server rolled it back
		case errors.As(err, &pgErr) && !connectionCode(pgErr.Code):
			return fmt.Errorf("commit: %w", err) // the server refused it: nothing committed
		case errors.Is(err, pgx.ErrTxCommitRollback):
			return fmt.Errorf("commit: %w", err) // fn ignored an error: rolled back
		case pgconn.SafeToRetry(err):
			return &attemptError{err: err, conn: true} // COMMIT never left
		default:
			return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
		}
	}
	return nil
}

// rollback ends a failed transaction, whose connection may be gone.
func rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// retryable returns the *attemptError for an error of fn worth retrying: a serialization
// failure or deadlock, or a failure of the connection (nothing committed: COMMIT was not
// sent). It returns nil for any other error.
func retryable(err error, connClosed bool) *attemptError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case retryCode(pgErr.Code):
			return &attemptError{err: err}
		case connectionCode(pgErr.Code):
			return &attemptError{err: err, conn: true}
		}
	}
	if connClosed || pgconn.SafeToRetry(err) {
		return &attemptError{err: err, conn: true}
	}
	return nil
}

// retryCode reports whether a SQLSTATE asks for the transaction to be run again.
func retryCode(code string) bool {
	return code == "40001" || code == "40P01" // serialization_failure, deadlock_detected
}

// connectionCode reports whether a SQLSTATE reports the server going away or unable to
// serve for now: class 08 (connection exception), class 53 (insufficient resources, such as
// too_many_connections when many replicas start at once), 57P01-57P03 (admin_shutdown,
// crash_shutdown, cannot_connect_now).
func connectionCode(code string) bool {
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "08", "53":
		return true
	}
	return code == "57P01" || code == "57P02" || code == "57P03"
}
