// Package pgdb is crkvol's access to PostgreSQL, shared by crk's PostgreSQL store and
// crk/kpapi's tenant store, so that any number of `crkvol kms serve` replicas can share one
// key service state.
//
// # Opening
//
// [Open] takes a postgres:// URL, connects a pgxpool connection pool and brings the schema
// up to date: the embedded migrations (migrations/0001_init.sql, …) hold the whole schema
// of every table crkvol creates, and each runs in a transaction of its own under a
// transaction-scoped advisory lock, so that replicas starting together do not race. A
// database whose schema is newer than the program knows is refused with [ErrSchemaTooNew].
// Errors never show the URL's password: see [Redact].
//
// # Transactions
//
// [DB.Tx] runs a function in a READ COMMITTED read-write transaction and [DB.ReadTx] in a
// REPEATABLE READ read-only one (one consistent snapshot). Both run the whole function
// again on a serialization failure or deadlock (SQLSTATE 40001, 40P01) and on a lost
// connection before COMMIT was sent, with jittered backoff, for up to DefaultRetryFor (10 s)
// ([Options.RetryFor]): the function must therefore do nothing but database work, or work
// it is safe to repeat. A database that stays unreachable gives [ErrUnavailable]; a COMMIT
// whose outcome is unknown (the connection broke after it was sent) gives
// [ErrCommitUnknown] and is never retried, since the change may have happened.
//
// # Notifications and leadership
//
// [DB.Listen] follows a LISTEN channel on a connection of its own, reconnecting by itself.
// [DB.Lead] elects one holder of a named lease among replicas, timed by the database's
// clock only, for work that must run on exactly one replica; [DB.Holder] tells who holds it.
//
// # Concurrency
//
// A [DB] is safe for concurrent use.
package pgdb
