package crk

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"crkvol/internal/pgdb"
)

// Database is a PostgreSQL database holding the key services of any number of instances,
// which any number of processes (kms serve replicas) open at once. Every state change is one
// database transaction with the same invariants as in a bbolt store: a mutation of a key
// locks its row, so that two processes rotating one key at the same instant make one
// rotation and one "too soon" refusal; audit and lifecycle events take their sequence
// numbers under the instance row's lock, so their order is the commit order; a lifecycle
// event wakes the long polls of every process (LISTEN/NOTIFY), the events table being the
// source of truth. Key material is stored encrypted under the service master key, which
// never goes into the database: every process is given the same key (file).
//
// A Database is safe for concurrent use.
type Database struct {
	db  *pgdb.DB
	log *slog.Logger

	mu       sync.Mutex
	watchers map[string]map[int]func() // instance -> notify functions
	nextID   int
	listen   context.CancelFunc // stops the listener, once started
	listened chan struct{}      // closed when the listener returned
	closed   bool
}

// feedChannel is the NOTIFY channel of lifecycle events; the payload is the instance id.
const feedChannel = "crkvol_feed"

// OpenDatabase connects to the PostgreSQL database at url (postgres://… or postgresql://…),
// creating crkvol's tables or migrating them to this build's schema; a database whose schema
// is newer than this build knows is refused. Errors never show a password of the URL.
func OpenDatabase(ctx context.Context, url string, logger *slog.Logger) (*Database, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db, err := pgdb.Open(ctx, url, pgdb.Options{Logger: logger, ApplicationName: "crkvol"})
	if err != nil {
		return nil, fmt.Errorf("crk: %w", err)
	}
	return &Database{db: db, log: logger, watchers: map[string]map[int]func(){}}, nil
}

// Close stops the database's listener and closes its connections. Close the services
// opened on it first.
func (d *Database) Close() error {
	d.mu.Lock()
	d.closed = true
	stop, done := d.listen, d.listened
	d.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	d.db.Close()
	return nil
}

// Open opens the service of instance opts.Instance in the database, or of a new instance
// when opts.Instance is empty. The master key is opts.MasterKey or the key file
// opts.MasterKeyFile (required: a database has no path to put one beside); a new instance
// makes the key file when it does not exist, an existing instance needs it. Options.ReadOnly
// is not supported.
func (d *Database) Open(opts Options) (*Service, error) {
	if opts.ReadOnly {
		return nil, fmt.Errorf("%w: a PostgreSQL store cannot be opened read-only", ErrInvalidArgument)
	}
	if opts.MasterKey == nil && opts.MasterKeyFile == "" {
		return nil, masterKeyErrorf("a PostgreSQL store needs the master key or its key file")
	}
	s, err := newService(opts)
	if err != nil {
		return nil, err
	}
	if s.instance == "" {
		if s.instance, err = newUUID(s.rand); err != nil {
			return nil, err
		}
	}
	ctx := context.Background()
	// The instance's row exists before the service's first transaction, which locks it: two
	// processes opening a new instance at once make one check value, not two.
	var exists bool
	err = d.db.Tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO crk_instances (id, check_value) VALUES ($1, '') ON CONFLICT (id) DO NOTHING`, s.instance)
		if err != nil {
			return err
		}
		exists = tag.RowsAffected() == 0
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("crk: instance %s: %w", s.instance, unavailable(err))
	}
	if exists {
		// A row from an Open that failed before its first commit has no check value: the
		// instance is new all the same.
		var check []byte
		if err := d.db.ReadTx(ctx, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, `SELECT check_value FROM crk_instances WHERE id = $1`, s.instance).Scan(&check)
		}); err != nil {
			return nil, fmt.Errorf("crk: instance %s: %w", s.instance, unavailable(err))
		}
		exists = len(check) > 0
	}
	master, keyFile, err := loadMasterKey(opts, exists, "instance "+s.instance)
	if err != nil {
		return nil, err
	}
	be := &pgBackend{d: d, instance: s.instance, flushes: d.flushesOnCommit(ctx)}
	be.events = newCommitter(func(fn func(storeTx) error) error { return be.update(context.Background(), fn) })
	return s.start(be, master, keyFile)
}

// Instances returns the ids of the instances that have a store in the database.
func (d *Database) Instances(ctx context.Context) ([]string, error) {
	var out []string
	err := d.db.ReadTx(ctx, func(tx pgx.Tx) error {
		out = nil
		rows, err := tx.Query(ctx, `SELECT id FROM crk_instances WHERE check_value <> '' ORDER BY id COLLATE "C"`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("crk: listing instances: %w", unavailable(err))
	}
	return out, nil
}

// subscribe registers notify for lifecycle events of instance committed by any process,
// starting the listener on first use.
func (d *Database) subscribe(instance string, notify func()) func() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return func() {}
	}
	if d.listen == nil {
		ctx, cancel := context.WithCancel(context.Background())
		d.listen, d.listened = cancel, make(chan struct{})
		go func() {
			defer close(d.listened)
			d.db.Listen(ctx, feedChannel, d.dispatch)
		}()
	}
	id := d.nextID
	d.nextID++
	if d.watchers[instance] == nil {
		d.watchers[instance] = map[int]func(){}
	}
	d.watchers[instance][id] = notify
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.watchers[instance], id)
		if len(d.watchers[instance]) == 0 {
			delete(d.watchers, instance)
		}
	}
}

// dispatch wakes the watchers of the instance a notification names; an empty payload (the
// listener reconnected, and may have missed notifications) wakes every watcher.
func (d *Database) dispatch(instance string) {
	d.mu.Lock()
	var fns []func()
	for in, ws := range d.watchers {
		if instance == "" || in == instance {
			for _, fn := range ws {
				fns = append(fns, fn)
			}
		}
	}
	d.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// pgBackend is one instance's state in a Database.
type pgBackend struct {
	d        *Database
	instance string
	// events groups the audit events of concurrent callers into one transaction (group).
	events *committer
	// commits counts the transactions update committed; flushes tells whether each one
	// flushes the WAL (stats.go).
	commits atomic.Uint64
	flushes bool
	// keys caches decoded key records (keycache.go).
	keys keyCache
}

func (b *pgBackend) update(ctx context.Context, fn func(storeTx) error) error {
	err := b.d.db.Tx(ctx, func(tx pgx.Tx) error {
		return fn(&pgTx{ctx: ctx, tx: tx, instance: b.instance, write: true, cache: &b.keys})
	})
	if err == nil {
		b.commits.Add(1)
	}
	return unavailable(err)
}

// batch is update: PostgreSQL's group commit lets concurrent transactions share a flush.
// (Its functions lock key rows: grouping them would hold the locks of many keys at once.)
func (b *pgBackend) batch(ctx context.Context, fn func(storeTx) error) error {
	return b.update(ctx, fn)
}

// group runs fn in one transaction with the concurrent callers' events: one transaction,
// one round of statements, for many events.
func (b *pgBackend) group(fn func(storeTx) error) error { return b.events.run(fn) }

func (b *pgBackend) view(ctx context.Context, fn func(storeTx) error) error {
	return unavailable(b.d.db.ReadTx(ctx, func(tx pgx.Tx) error {
		return fn(&pgTx{ctx: ctx, tx: tx, instance: b.instance, cache: &b.keys})
	}))
}

// unavailable marks an error of a database that could not be reached (even after pgdb's
// retries), or of a commit whose outcome is unknown, with [ErrUnavailable]; any other error
// comes back as it is.
func unavailable(err error) error {
	switch {
	case err == nil || errors.Is(err, ErrUnavailable):
		return err
	case errors.Is(err, pgdb.ErrCommitUnknown):
		return fmt.Errorf("crk: %w: the change may or may not have happened: %w", ErrUnavailable, err)
	case errors.Is(err, pgdb.ErrUnavailable):
		return fmt.Errorf("crk: %w: %w", ErrUnavailable, err)
	}
	return err
}

func (b *pgBackend) watchFeed(notify func()) func() { return b.d.subscribe(b.instance, notify) }

// close leaves the Database open: it is shared by the services of its instances.
func (b *pgBackend) close() error {
	b.events.close()
	return nil
}

// pgTx is one transaction on an instance's rows.
type pgTx struct {
	ctx      context.Context
	tx       pgx.Tx
	instance string
	write    bool
	cache    *keyCache // nil: every key record is decoded
}

// errNoInstance is a store whose instance row is gone (deleted by hand): nothing can be
// written to it.
var errNoInstance = errors.New("crk: store: the instance's row is missing from the database")

// lockRow locks the rows a statement reads until the transaction ends, as a writer that
// changes none of their key columns: FOR NO KEY UPDATE, not FOR UPDATE. A row inserted into a
// table with a foreign key takes KEY SHARE on the row it references (every table of an
// instance references its crk_instances row), which FOR UPDATE conflicts with: two
// transactions that each inserted a registration and then locked the instance row for their
// events' sequence numbers would wait for each other (a deadlock, broken by PostgreSQL after
// a second, retried, and failed after the retries). FOR NO KEY UPDATE still excludes every
// other writer of the row, and UPDATEs of non-key columns take the same lock.
const lockRow = ` FOR NO KEY UPDATE`

func (t *pgTx) meta() (string, []byte, error) {
	q := `SELECT check_value FROM crk_instances WHERE id = $1`
	if t.write {
		q += lockRow
	}
	var check []byte
	err := t.tx.QueryRow(t.ctx, q, t.instance).Scan(&check)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, nil
	}
	if err != nil || len(check) == 0 {
		return "", nil, err
	}
	return t.instance, check, nil
}

// instanceCheck is an instance of the database and its master key check value.
type instanceCheck struct {
	id    string
	check []byte
}

// otherInstances returns the database's instances other than the transaction's, with their
// check values. Their rows are not locked (that would hold up their writers, and two
// instances rotating at once would deadlock): an instance changes its check value only by a
// rotation, which makes the same check of this one.
func (t *pgTx) otherInstances() ([]instanceCheck, error) {
	rows, err := t.tx.Query(t.ctx, `SELECT id, check_value FROM crk_instances
		WHERE id <> $1 AND check_value <> '' ORDER BY id COLLATE "C"`, t.instance)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (instanceCheck, error) {
		var c instanceCheck
		err := r.Scan(&c.id, &c.check)
		return c, err
	})
}

func (t *pgTx) setMeta(instance string, check []byte) error {
	if instance != t.instance {
		return fmt.Errorf("crk: internal error: instance %s in the store of %s", instance, t.instance)
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO crk_instances (id, check_value) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET check_value = EXCLUDED.check_value`, instance, check)
	return err
}

func (t *pgTx) key(id string) (*keyRecord, error) { return t.getKey(id, false) }

func (t *pgTx) keyForUpdate(id string) (*keyRecord, error) { return t.getKey(id, true) }

func (t *pgTx) getKey(id string, lock bool) (*keyRecord, error) {
	if !isText(id) {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, id)
	}
	q := `SELECT record FROM crk_keys WHERE instance = $1 AND id = $2`
	if lock {
		q += lockRow
	}
	var raw []byte
	err := t.tx.QueryRow(t.ctx, q, t.instance, id).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return t.cache.decode(id, raw)
}

func (t *pgTx) putKey(r *keyRecord) error {
	if err := r.check(); err != nil {
		return err
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO crk_keys (instance, id, record) VALUES ($1, $2, $3)
		ON CONFLICT (instance, id) DO UPDATE SET record = EXCLUDED.record`, t.instance, r.ID, string(raw))
	return err
}

func (t *pgTx) keys(forUpdate bool, fn func(*keyRecord) error) error {
	q := `SELECT record FROM crk_keys WHERE instance = $1 ORDER BY id COLLATE "C"`
	if forUpdate {
		q += lockRow
	}
	raws, err := t.records(q, t.instance)
	if err != nil {
		return err
	}
	for _, raw := range raws {
		r, err := decodeKey(raw)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// records runs a query of one column of records and returns them all: the connection can
// run no other statement while a result is open, and fn may.
func (t *pgTx) records(q string, args ...any) ([][]byte, error) {
	rows, err := t.tx.Query(t.ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[[]byte])
}

func (t *pgTx) reg(keyID, crn string) (*regRecord, error) {
	var raw []byte
	err := pgx.ErrNoRows
	if isText(keyID) && isText(crn) {
		err = t.tx.QueryRow(t.ctx, `SELECT record FROM crk_registrations WHERE instance = $1 AND key_id = $2 AND crn = $3`,
			t.instance, keyID, crn).Scan(&raw)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: key %s, resource %s", ErrRegistrationNotFound, keyID, crn)
	}
	if err != nil {
		return nil, err
	}
	return decodeReg(raw)
}

func (t *pgTx) putReg(r *regRecord) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO crk_registrations (instance, key_id, crn, record) VALUES ($1, $2, $3, $4)
		ON CONFLICT (instance, key_id, crn) DO UPDATE SET record = EXCLUDED.record`, t.instance, r.KeyID, r.ResourceCRN, string(raw))
	return err
}

func (t *pgTx) deleteReg(keyID, crn string) error {
	if !isText(keyID) || !isText(crn) {
		return nil // no row has it
	}
	_, err := t.tx.Exec(t.ctx, `DELETE FROM crk_registrations WHERE instance = $1 AND key_id = $2 AND crn = $3`, t.instance, keyID, crn)
	return err
}

func (t *pgTx) countRegs(keyID string) (int, error) {
	if !isText(keyID) {
		return 0, nil
	}
	var n int
	err := t.tx.QueryRow(t.ctx, `SELECT count(*) FROM crk_registrations WHERE instance = $1 AND key_id = $2`, t.instance, keyID).Scan(&n)
	return n, err
}

func (t *pgTx) keyRegs(keyID string) ([]*regRecord, error) {
	if !isText(keyID) {
		return nil, nil
	}
	raws, err := t.records(`SELECT record FROM crk_registrations WHERE instance = $1 AND key_id = $2 ORDER BY crn COLLATE "C"`, t.instance, keyID)
	if err != nil {
		return nil, err
	}
	out := make([]*regRecord, 0, len(raws))
	for _, raw := range raws {
		r, err := decodeReg(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (t *pgTx) regs(fn func(*regRecord) error) error {
	raws, err := t.records(`SELECT record FROM crk_registrations WHERE instance = $1 ORDER BY key_id COLLATE "C", crn COLLATE "C"`, t.instance)
	if err != nil {
		return err
	}
	for _, raw := range raws {
		r, err := decodeReg(raw)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// putEvents takes the events' sequence numbers and filing times from the instance row, whose
// lock it holds until the transaction ends: sequence numbers are given in commit order,
// without gaps, and filing times never go backwards, as in a bbolt store. Three statements
// store any number of events.
func (t *pgTx) putEvents(evs []*Event) error {
	if len(evs) == 0 {
		return nil
	}
	var seq, nanos int64
	err := t.tx.QueryRow(t.ctx, `SELECT events_seq, events_nanos FROM crk_instances WHERE id = $1`+lockRow, t.instance).Scan(&seq, &nanos)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNoInstance
	}
	if err != nil {
		return err
	}
	n := len(evs)
	seqs, times, keyIDs, actions, records := make([]int64, n), make([]int64, n), make([]string, n), make([]string, n), make([]string, n)
	for i, ev := range evs {
		seq++
		nanos = max(nanos, clampInt64(eventNanos(ev.Time)))
		ev.Seq = uint64(seq)
		raw, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		seqs[i], times[i], keyIDs[i], actions[i], records[i] = seq, nanos, textColumn(ev.KeyID), textColumn(ev.Action), string(raw)
	}
	if _, err := t.tx.Exec(t.ctx, `UPDATE crk_instances SET events_seq = $2, events_nanos = $3 WHERE id = $1`, t.instance, seq, nanos); err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO crk_events (instance, seq, nanos, key_id, action, record)
		SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::json[])`,
		t.instance, seqs, times, keyIDs, actions, records)
	return err
}

// pruneEventsSQL deletes the oldest events of instance $1 up to the first one within both
// bounds, as the bbolt store does: within the count $2 (no bound if 0) and filed at or after
// $3 (Unix nanoseconds); at most $4 of them (all if NULL). The events it deletes are the
// oldest (a range of the primary key), so it reads them and the first one it keeps, a few
// times, but none of the others: it runs for every appended event, whatever the number kept.
// (The doomed sequence numbers go to the DELETE as an array, for which the planner assumes a
// few elements and takes the primary key; with a range or IN, it expects a third of the
// instance's events and scans them all.)
const pruneEventsSQL = `WITH
		head AS (SELECT CASE WHEN $2 > 0 THEN events_seq - $2 ELSE 0 END AS bound FROM crk_instances WHERE id = $1),
		kept AS (SELECT min(seq) AS seq FROM crk_events WHERE instance = $1
			AND seq > (SELECT bound FROM head) AND nanos >= $3),
		doomed AS (SELECT seq FROM crk_events WHERE instance = $1
			AND seq < COALESCE((SELECT seq FROM kept), 9223372036854775807) ORDER BY seq LIMIT $4)
		DELETE FROM crk_events WHERE instance = $1 AND seq = ANY (ARRAY(SELECT seq FROM doomed))`

func (t *pgTx) pruneEvents(maxCount int, cutoff uint64, limit int) (int, error) {
	tag, err := t.tx.Exec(t.ctx, pruneEventsSQL, t.instance, int64(max(maxCount, 0)), clampInt64(cutoff), limitArg(limit))
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}

// limitArg is a LIMIT argument: NULL (no limit) for limit <= 0.
func limitArg(limit int) *int64 {
	if limit <= 0 {
		return nil
	}
	l := int64(limit)
	return &l
}

func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// scanPage is how many events one query of a scan reads.
const scanPage = 256

func (t *pgTx) scanEvents(s eventScan, fn func([]byte, *Event) (bool, error)) error {
	// The position of an event is its filing time and sequence number; the sequence
	// number alone orders events.
	var bound int64 = 0
	if s.desc {
		bound = math.MaxInt64
	}
	if len(s.after) == eventKeyLen {
		bound = clampInt64(binary.BigEndian.Uint64(s.after[8:]))
	}
	cmp, order := ">", "ASC"
	if s.desc {
		cmp, order = "<", "DESC"
	}
	// The key id and action columns are text columns (textColumn): a filter on them finds
	// the events the caller's own comparison of their records keeps, and maybe a few more.
	q := `SELECT seq, nanos, record FROM crk_events WHERE instance = $1 AND seq ` + cmp + ` $2 AND nanos >= $3`
	args := []any{t.instance, bound, clampInt64(s.from)}
	if s.keyID != "" {
		args = append(args, textColumn(s.keyID))
		q += ` AND key_id = $` + strconv.Itoa(len(args))
	}
	if s.action != "" {
		args = append(args, textColumn(s.action))
		q += ` AND action = $` + strconv.Itoa(len(args))
	}
	if s.outcome != "" {
		// The outcome is one of two ASCII words: the record's field holds it exactly.
		args = append(args, s.outcome)
		q += ` AND record->>'outcome' = $` + strconv.Itoa(len(args))
	}
	q += ` ORDER BY seq ` + order + ` LIMIT ` + strconv.Itoa(scanPage)
	type row struct {
		seq, nanos int64
		raw        []byte
	}
	for {
		rows, err := t.tx.Query(t.ctx, q, args...)
		if err != nil {
			return err
		}
		var page []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.seq, &r.nanos, &r.raw); err != nil {
				rows.Close()
				return err
			}
			page = append(page, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range page {
			var ev Event
			if err := json.Unmarshal(r.raw, &ev); err != nil {
				return fmt.Errorf("crk: store: event %d: %w", r.seq, err)
			}
			more, err := fn(eventKey(uint64(r.nanos), uint64(r.seq)), &ev)
			if err != nil || !more {
				return err
			}
		}
		if len(page) < scanPage {
			return nil
		}
		args[1] = page[len(page)-1].seq
	}
}

func (t *pgTx) eventNamesKey(id string) (bool, error) {
	if isText(id) && !strings.ContainsRune(id, utf8.RuneError) {
		// The column holds exactly the ids that are text; U+FFFD also stands for what is not.
		var found bool
		err := t.tx.QueryRow(t.ctx, `SELECT EXISTS (SELECT 1 FROM crk_events WHERE instance = $1 AND key_id = $2)`, t.instance, id).Scan(&found)
		return found, err
	}
	// As the bbolt store decides it: an event whose record names the id as JSON encodes it,
	// and gives it back.
	want, err := json.Marshal(id)
	if err != nil {
		return false, err
	}
	needle := append([]byte(`"keyId":`), want...)
	raws, err := t.records(`SELECT record FROM crk_events WHERE instance = $1 AND key_id = $2 ORDER BY seq`, t.instance, textColumn(id))
	if err != nil {
		return false, err
	}
	for _, raw := range raws {
		var ev Event
		if bytes.Contains(raw, needle) && json.Unmarshal(raw, &ev) == nil && ev.KeyID == id {
			return true, nil
		}
	}
	return false, nil
}

// isText reports whether s can be stored in a text column: PostgreSQL's text holds valid
// UTF-8 without NUL. A key id or CRN that is not text names nothing in the store (a bbolt
// store has no such key or registration either: every one is made with a text id).
func isText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// textColumn is the text an event's key id or action is filed under: the string itself, or,
// for one that is not text (a refused request's id), the string with each NUL and each byte
// that is not UTF-8 replaced by U+FFFD — as the event's JSON record gives it back, with NUL
// replaced as well. Strings that JSON gives back alike are filed alike; a few others share
// their text, which is why the rows found are checked against their records.
func textColumn(s string) string {
	if isText(s) {
		return s
	}
	var b strings.Builder
	for _, r := range s { // an invalid byte comes as utf8.RuneError, one at a time
		if r == 0 {
			r = utf8.RuneError
		}
		b.WriteRune(r)
	}
	return b.String()
}

// putFeed takes the event's sequence number under the instance row's lock (commit order)
// and notifies the listeners of every process when the transaction commits.
func (t *pgTx) putFeed(ev *LifecycleEvent) error {
	var seq int64
	err := t.tx.QueryRow(t.ctx, `UPDATE crk_instances SET feed_seq = feed_seq + 1 WHERE id = $1 RETURNING feed_seq`, t.instance).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNoInstance
	}
	if err != nil {
		return err
	}
	ev.Cursor = strconv.FormatInt(seq, 10)
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if _, err := t.tx.Exec(t.ctx, `INSERT INTO crk_feed (instance, seq, time, record) VALUES ($1, $2, $3, $4)`,
		t.instance, seq, ev.Time, string(raw)); err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `SELECT pg_notify($1, $2)`, feedChannel, t.instance)
	return err
}

// pruneFeed deletes the oldest events up to the first one within both bounds, as the bbolt
// store does (event times may go back with the clock, so they are not a prefix by
// themselves).
func (t *pgTx) pruneFeed(maxCount int, cutoff time.Time, limit int) (int, error) {
	var cut *time.Time
	if !cutoff.IsZero() {
		cut = &cutoff
	}
	var n, last int64
	err := t.tx.QueryRow(t.ctx, `WITH
		head AS (SELECT feed_seq FROM crk_instances WHERE id = $1),
		kept AS (SELECT min(seq) AS seq FROM crk_feed WHERE instance = $1 AND NOT (
			($2 > 0 AND seq <= (SELECT feed_seq FROM head) - $2) OR ($3::timestamptz IS NOT NULL AND time < $3))),
		doomed AS (SELECT seq FROM crk_feed WHERE instance = $1
			AND seq < COALESCE((SELECT seq FROM kept), 9223372036854775807) ORDER BY seq LIMIT $4),
		gone AS (DELETE FROM crk_feed WHERE instance = $1 AND seq IN (SELECT seq FROM doomed) RETURNING seq)
		SELECT count(*), COALESCE(max(seq), 0) FROM gone`,
		t.instance, int64(max(maxCount, 0)), cut, limitArg(limit)).Scan(&n, &last)
	if err != nil || n == 0 {
		return 0, err
	}
	_, err = t.tx.Exec(t.ctx, `UPDATE crk_instances SET feed_pruned = GREATEST(feed_pruned, $2) WHERE id = $1`, t.instance, last)
	return int(n), err
}

func (t *pgTx) feed(after uint64, limit int) ([]LifecycleEvent, uint64, uint64, error) {
	var head, pruned int64
	err := t.tx.QueryRow(t.ctx, `SELECT feed_seq, feed_pruned FROM crk_instances WHERE id = $1`, t.instance).Scan(&head, &pruned)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, 0, errNoInstance
	}
	if err != nil {
		return nil, 0, 0, err
	}
	if after >= uint64(head) {
		return nil, uint64(head), uint64(pruned), nil
	}
	raws, err := t.records(`SELECT record FROM crk_feed WHERE instance = $1 AND seq > $2 ORDER BY seq LIMIT $3`,
		t.instance, int64(after), limitArg(limit))
	if err != nil {
		return nil, 0, 0, err
	}
	out := make([]LifecycleEvent, 0, len(raws))
	for _, raw := range raws {
		var ev LifecycleEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			return nil, 0, 0, fmt.Errorf("crk: store: feed event: %w", err)
		}
		out = append(out, ev)
	}
	return out, uint64(head), uint64(pruned), nil
}

func (t *pgTx) putAck(a *HostAck) error {
	raw, err := json.Marshal(a)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO crk_host_acks (instance, key_id, host, record) VALUES ($1, $2, $3, $4)
		ON CONFLICT (instance, key_id, host) DO UPDATE SET record = EXCLUDED.record`, t.instance, a.KeyID, a.Host, string(raw))
	return err
}

func (t *pgTx) hasAck(keyID, host string) (bool, error) {
	if !isText(keyID) || !isText(host) {
		return false, nil
	}
	var n int
	err := t.tx.QueryRow(t.ctx, `SELECT count(*) FROM crk_host_acks WHERE instance = $1 AND key_id = $2 AND host = $3`,
		t.instance, keyID, host).Scan(&n)
	return n > 0, err
}

func (t *pgTx) countAcks(keyID string) (int, error) {
	if !isText(keyID) {
		return 0, nil
	}
	var n int
	err := t.tx.QueryRow(t.ctx, `SELECT count(*) FROM crk_host_acks WHERE instance = $1 AND key_id = $2`, t.instance, keyID).Scan(&n)
	return n, err
}

func (t *pgTx) keyAcks(keyID string) ([]HostAck, error) {
	if !isText(keyID) {
		return nil, nil
	}
	return t.decodeAcks(`SELECT record FROM crk_host_acks WHERE instance = $1 AND key_id = $2 ORDER BY host COLLATE "C"`, t.instance, keyID)
}

func (t *pgTx) deleteAck(keyID, host string) (bool, error) {
	if !isText(keyID) || !isText(host) {
		return false, nil
	}
	tag, err := t.tx.Exec(t.ctx, `DELETE FROM crk_host_acks WHERE instance = $1 AND key_id = $2 AND host = $3`, t.instance, keyID, host)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() > 0, nil
}

func (t *pgTx) deleteAcks(keyID string) error {
	if !isText(keyID) {
		return nil
	}
	_, err := t.tx.Exec(t.ctx, `DELETE FROM crk_host_acks WHERE instance = $1 AND key_id = $2`, t.instance, keyID)
	return err
}

func (t *pgTx) acks(fn func(*HostAck) error) error {
	all, err := t.decodeAcks(`SELECT record FROM crk_host_acks WHERE instance = $1 ORDER BY key_id COLLATE "C", host COLLATE "C"`, t.instance)
	if err != nil {
		return err
	}
	for i := range all {
		if err := fn(&all[i]); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) decodeAcks(q string, args ...any) ([]HostAck, error) {
	raws, err := t.records(q, args...)
	if err != nil {
		return nil, err
	}
	out := make([]HostAck, 0, len(raws))
	for _, raw := range raws {
		var a HostAck
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, fmt.Errorf("crk: store: acknowledgement: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

func (t *pgTx) heads() (uint64, uint64, uint64, error) {
	var events, feed, pruned int64
	err := t.tx.QueryRow(t.ctx, `SELECT events_seq, feed_seq, feed_pruned FROM crk_instances WHERE id = $1`, t.instance).Scan(&events, &feed, &pruned)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, 0, errNoInstance
	}
	return uint64(events), uint64(feed), uint64(pruned), err
}

func (t *pgTx) importEvent(pos []byte, ev *Event) error {
	if len(pos) != eventKeyLen || binary.BigEndian.Uint64(pos[8:]) != ev.Seq {
		return fmt.Errorf("crk: store: event %d has the position %x", ev.Seq, pos)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO crk_events (instance, seq, nanos, key_id, action, record) VALUES ($1, $2, $3, $4, $5, $6)`,
		t.instance, clampInt64(ev.Seq), clampInt64(binary.BigEndian.Uint64(pos)), textColumn(ev.KeyID), textColumn(ev.Action), string(raw))
	return err
}

func (t *pgTx) importFeed(ev *LifecycleEvent) error {
	seq, err := ParseFeedCursor(ev.Cursor)
	if err != nil || seq == 0 {
		return fmt.Errorf("crk: store: feed event with cursor %q", ev.Cursor)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO crk_feed (instance, seq, time, record) VALUES ($1, $2, $3, $4)`,
		t.instance, clampInt64(seq), ev.Time, string(raw))
	return err
}

// setHeads also sets the filing time of the last event, which later events do not go
// before.
func (t *pgTx) setHeads(events, feed, feedPruned uint64) error {
	_, err := t.tx.Exec(t.ctx, `UPDATE crk_instances SET events_seq = $2, feed_seq = $3, feed_pruned = $4,
		events_nanos = GREATEST(events_nanos, COALESCE((SELECT max(nanos) FROM crk_events WHERE instance = $1), 0)) WHERE id = $1`,
		t.instance, clampInt64(events), clampInt64(feed), clampInt64(feedPruned))
	return err
}
