package crk

import (
	"context"
	"os"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"
)

// StoreStats counts what the service's store did since Open (the commits Open made itself
// included): a basis for flush accounting, as deltas between two calls.
type StoreStats struct {
	// Commits is the number of read-write transactions committed through the service: one
	// per group commit of audit events, per key change, per batch call.
	Commits uint64
	// Flushes is the number of fsync and fdatasync calls the store issued for those commits.
	// bbolt: 2 per commit (the pages, then the meta page), none with Options.NoSync, plus 1
	// whenever a commit grows the file (bbolt syncs the new size, even with NoSync).
	// PostgreSQL: 1 per commit, the WAL flush of the commit record (an estimate made by this
	// process: PostgreSQL's group commit may share one flush among the commits of several
	// sessions), and 0 when the database runs with synchronous_commit off, which flushes
	// nothing when a transaction commits.
	Flushes uint64
}

// StoreStats returns what the service's store did since Open.
func (s *Service) StoreStats() StoreStats { return s.store.stats() }

// boltCounter counts the commits of a bbolt store and the flushes they made. Every write
// transaction goes through boltBackend.update or batch, which call begin first with the
// transaction: bbolt's db.Batch shares one transaction among several callers, so a commit is
// counted once per transaction (the first begin registers its commit handler).
type boltCounter struct {
	path   string // the store file: its size is stat'ed
	noSync bool
	// cur is the transaction whose commit handler is registered (until it runs).
	cur     atomic.Pointer[bolt.Tx]
	commits atomic.Uint64
	// size is the largest file size seen; growths counts how often it grew.
	size    atomic.Int64
	growths atomic.Uint64
}

func newBoltCounter(db *bolt.DB, noSync bool) *boltCounter {
	c := &boltCounter{path: db.Path(), noSync: noSync}
	if fi, err := os.Stat(c.path); err == nil {
		c.size.Store(fi.Size())
	}
	return c
}

// begin is called with a write transaction before each function it runs: the first call
// for tx registers the count of its commit. A rolled-back transaction registers nothing
// that counts (bbolt runs commit handlers only after a commit).
func (c *boltCounter) begin(tx *bolt.Tx) {
	if c == nil || c.cur.Swap(tx) == tx {
		return
	}
	// The previous commit finished (bbolt serialises writers): a growth of the file it
	// made is seen now, before this transaction can grow it again.
	c.observe()
	tx.OnCommit(func() {
		c.commits.Add(1)
		c.cur.CompareAndSwap(tx, nil)
	})
}

// observe counts a growth of the file since the last size seen. Only commits grow it, and
// one is always observed (by the next transaction's begin) before the next commit, so each
// growth is counted once.
func (c *boltCounter) observe() {
	fi, err := os.Stat(c.path)
	if err != nil {
		return
	}
	size := fi.Size()
	for {
		old := c.size.Load()
		if size <= old {
			return
		}
		if c.size.CompareAndSwap(old, size) {
			c.growths.Add(1)
			return
		}
	}
}

func (c *boltCounter) stats() StoreStats {
	c.observe()
	st := StoreStats{Commits: c.commits.Load(), Flushes: c.growths.Load()}
	if !c.noSync {
		st.Flushes += 2 * st.Commits
	}
	return st
}

// flushesOnCommit reports whether a commit of the database's sessions flushes the WAL: true
// unless synchronous_commit is off (or cannot be read: then the count errs on the side of a
// flush).
func (d *Database) flushesOnCommit(ctx context.Context) bool {
	var setting string
	err := d.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting)
	})
	return err != nil || setting != "off"
}

func (b *pgBackend) stats() StoreStats {
	st := StoreStats{Commits: b.commits.Load()}
	if b.flushes {
		st.Flushes = st.Commits
	}
	return st
}
