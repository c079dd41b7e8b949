package crk

import (
	"context"
	"time"
)

// backend is where a Service keeps its state: one bbolt file (boltBackend, the default) or
// one instance's rows in a PostgreSQL database shared by any number of processes
// (pgBackend). The service's logic — states, invariants, events — is written once against
// it; a backend only stores and finds records, and makes each transaction atomic and
// isolated:
//
//   - update and batch run fn in one read-write transaction that commits all of its writes or
//     none. A key read with [storeTx.keyForUpdate] stays locked against other writers (in any
//     process) until the transaction ends, so a check made on it still holds at commit.
//     Event and feed sequence numbers are given in commit order.
//   - fn may run more than once (a conflict with another process, or batch's sharing of one
//     commit): it must have no effect outside tx, and must reset what it computes on each run.
//   - view runs fn on one consistent snapshot, and must not write.
type backend interface {
	update(ctx context.Context, fn func(tx storeTx) error) error
	// batch is update for small, frequent transactions, which concurrent callers may share.
	batch(ctx context.Context, fn func(tx storeTx) error) error
	view(ctx context.Context, fn func(tx storeTx) error) error
	// watchFeed calls notify whenever another process may have appended lifecycle events to
	// this instance's feed (its own commits are notified by the service), until the returned
	// function is called. A backend no other process writes calls nothing.
	watchFeed(notify func()) (stop func())
	close() error
	// stats counts the commits and flushes of the backend's transactions (stats.go).
	stats() StoreStats
}

// storeTx is one transaction of a backend. Records returned are the caller's to change; they
// are stored only by the put methods.
type storeTx interface {
	// meta returns the instance id and the master key check value, both empty in a new
	// store; setMeta stores them.
	meta() (instance string, check []byte, err error)
	setMeta(instance string, check []byte) error

	// key returns a key; an unknown id is ErrKeyNotFound.
	key(id string) (*keyRecord, error)
	// keyForUpdate is key, locking the key against other writers until the transaction
	// ends.
	keyForUpdate(id string) (*keyRecord, error)
	// putKey stores a key; its invariants are checked first (keyRecord.check).
	putKey(r *keyRecord) error
	// keys calls fn with every key, in id order, locked as by keyForUpdate if forUpdate.
	keys(forUpdate bool, fn func(r *keyRecord) error) error

	// reg returns a registration; an unknown one is ErrRegistrationNotFound.
	reg(keyID, crn string) (*regRecord, error)
	putReg(r *regRecord) error
	deleteReg(keyID, crn string) error
	// keyRegs returns the registrations of one key, in CRN order.
	keyRegs(keyID string) ([]*regRecord, error)
	// countRegs returns how many registrations key keyID has.
	countRegs(keyID string) (int, error)
	// regs calls fn with every registration, in key id then CRN order.
	regs(fn func(r *regRecord) error) error

	// putEvents appends audit events in order, setting their Seq. Each is filed under its
	// time, or the time of the last event filed when that is later (filing times never go
	// backwards).
	putEvents(evs []*Event) error
	// pruneEvents deletes the oldest events while there are more than maxCount (no limit
	// if maxCount <= 0) or the oldest is filed before cutoff (Unix nanoseconds), at most
	// limit of them (no limit if limit <= 0), and returns how many it deleted.
	pruneEvents(maxCount int, cutoff uint64, limit int) (int, error)
	// scanEvents calls fn with events in filing order, or newest first if s.desc, starting
	// after the event whose position (eventKey) is s.after, if set. An ascending scan may
	// skip events filed before s.from; a descending one may stop there. It may skip the
	// events whose KeyID, Action or Outcome differ from s.keyID, s.action or s.outcome when
	// those are set (PostgreSQL's does, in its query; bbolt's reads every event of the
	// range, and the caller's filter drops them). fn returns false to stop the scan.
	scanEvents(s eventScan, fn func(pos []byte, ev *Event) (bool, error)) error
	// eventNamesKey reports whether an event names key id.
	eventNamesKey(id string) (bool, error)

	// putFeed appends a lifecycle event, setting its Cursor.
	putFeed(ev *LifecycleEvent) error
	// pruneFeed deletes the oldest feed events while there are more than maxCount (no
	// limit if maxCount <= 0) or the oldest is older than cutoff (none if zero), at most
	// limit of them, records the last sequence number it deleted, and returns how many.
	pruneFeed(maxCount int, cutoff time.Time, limit int) (int, error)
	// feed returns at most limit events (0: no limit) with sequence numbers above after,
	// the sequence number of the last event ever appended (the head) and the last one the
	// retention deleted.
	feed(after uint64, limit int) (events []LifecycleEvent, head, pruned uint64, err error)

	// putAck stores a host's acknowledgement, replacing the one it had for the key.
	putAck(a *HostAck) error
	// hasAck reports whether host has an acknowledgement of key keyID.
	hasAck(keyID, host string) (bool, error)
	// countAcks returns how many hosts have an acknowledgement of key keyID.
	countAcks(keyID string) (int, error)
	// keyAcks returns the acknowledgements of key keyID, in host order.
	keyAcks(keyID string) ([]HostAck, error)
	// deleteAck deletes host's acknowledgement of key keyID, reporting whether it had one.
	deleteAck(keyID, host string) (bool, error)
	// deleteAcks deletes every acknowledgement of key keyID.
	deleteAcks(keyID string) error
	// acks calls fn with every acknowledgement, in key id then host order.
	acks(fn func(a *HostAck) error) error

	// Documents (docs.go): small JSON records under a kind and a name.
	//
	// doc returns the document stored under kind and name, or errNoDoc.
	doc(kind, name string) ([]byte, error)
	// lockDoc is doc, locking the document until the transaction ends against other
	// processes' writers: shared (exclusive false) against deleteDoc and putDoc, exclusive
	// against lockDoc's shared locks as well. A key ring's keys lock it shared while they
	// join it; deleting the ring locks it exclusive first.
	lockDoc(kind, name string, exclusive bool) ([]byte, error)
	// insertDoc stores a new document; errDocExists if one is there (also across processes on
	// PostgreSQL: a concurrent insert of the same name fails one of them).
	insertDoc(kind, name string, data []byte) error
	// putDoc stores a document, replacing any.
	putDoc(kind, name string, data []byte) error
	// deleteDoc deletes a document (no error if absent).
	deleteDoc(kind, name string) error
	// docs calls fn with every document of kind, in name order.
	docs(kind string, fn func(name string, data []byte) error) error
	// allDocs calls fn with every document, in kind then name order (CopyStore,
	// RotateMasterKey).
	allDocs(fn func(kind, name string, data []byte) error) error

	// heads returns the sequence counters: the last audit event ever appended (deleted or
	// not), the last feed event and the last feed event the retention deleted.
	heads() (events, feed, feedPruned uint64, err error)
	// Copying a store (CopyStore): importEvent stores an event at its position in the
	// source (eventKey: filing time and sequence number), importFeed a feed event under its
	// cursor, and setHeads the counters, so that sequence numbers and cursors carry over.
	importEvent(pos []byte, ev *Event) error
	importFeed(ev *LifecycleEvent) error
	setHeads(events, feed, feedPruned uint64) error
}

// eventScan describes a scan of the audit events (see storeTx.scanEvents).
type eventScan struct {
	after   []byte // an event position: eventKeyLen bytes
	desc    bool
	from    uint64 // Unix nanoseconds
	keyID   string
	action  string
	outcome string
}

// Transactions of the service, on its backend. ctx bounds a transaction on PostgreSQL
// (retries included); a bbolt transaction does not wait for anything it could end.

func (s *Service) update(ctx context.Context, fn func(tx storeTx) error) error {
	return s.store.update(ctx, fn)
}

func (s *Service) batch(ctx context.Context, fn func(tx storeTx) error) error {
	return s.store.batch(ctx, fn)
}

func (s *Service) view(ctx context.Context, fn func(tx storeTx) error) error {
	return s.store.view(ctx, fn)
}
