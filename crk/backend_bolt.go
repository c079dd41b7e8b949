package crk

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The store is one bbolt file. Buckets:
//
//	meta           "check": the master key check value; "schema": "2"; "instance": the id
//	keys           key id -> keyRecord (JSON)
//	registrations  key id + "\x00" + resource CRN -> regRecord (JSON)
//	events         big-endian Unix nanoseconds + big-endian sequence number -> Event (JSON)
//	acks           key id + "\x00" + host -> HostAck (JSON)
//	docs           kind + "\x00" + name -> document (JSON; docs.go)
//
// Schema 1 keyed events by the sequence number alone; opening such a store rekeys them
// (migrateEvents) in the transaction that sets schema 2, so an older build refuses the
// migrated store instead of appending keys of the old kind to it.
//
// Root and standard key material is kept only encrypted under the service master key
// (AES-256-GCM, with the key and version ids as additional data).
var (
	bucketMeta          = []byte("meta")
	bucketKeys          = []byte("keys")
	bucketRegistrations = []byte("registrations")
	bucketEvents        = []byte("events")
	// bucketAcks was added within schema 2: a store opened read-write makes it, and one
	// opened read-only without it has no acknowledgements.
	bucketAcks = []byte("acks")
	// bucketDocs was added within schema 2, as bucketAcks was.
	bucketDocs = []byte("docs")

	metaCheck  = []byte("check")
	metaSchema = []byte("schema")
)

const (
	schemaVersion = "2"
	// schemaSeqEvents is the schema whose events are keyed by sequence number only.
	schemaSeqEvents = "1"
)

// The feed bucket is keyed by the 8-byte big-endian sequence number of the event (the
// bucket's own sequence: never reused, even after deletion). Meta "feedPruned" holds the
// sequence number of the last event the retention deleted.
var (
	bucketFeed     = []byte("feed")
	metaFeedPruned = []byte("feedPruned")
	metaInstance   = []byte("instance")
)

// boltBackend keeps a service's state in one bbolt file.
type boltBackend struct {
	db *bolt.DB
	// commits groups the transactions of batch and group (audit events, registration
	// updates, acknowledgements): bbolt has one writer at a time, and each commit flushes
	// twice, so concurrent callers share a commit.
	commits *committer
	// counter counts commits and flushes (stats.go); nil for a read-only store.
	counter *boltCounter
	// keys caches decoded key records (keycache.go).
	keys *keyCache
}

// openBolt opens (creating, unless read-only) the bbolt store at path and brings its schema
// up to date; a read-only store must already be current.
func openBolt(path string, opts Options, log func(msg string, args ...any)) (*boltBackend, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: opts.NoSync, ReadOnly: opts.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("crk: opening store %s: %w", path, err)
	}
	if opts.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{bucketMeta, bucketKeys, bucketRegistrations, bucketEvents} {
				if tx.Bucket(name) == nil {
					return fmt.Errorf("crk: store has no %s bucket: open it once read-write", name)
				}
			}
			if v := string(tx.Bucket(bucketMeta).Get(metaSchema)); v != schemaVersion {
				return fmt.Errorf("crk: store schema %q, this build reads %q: open it once read-write to migrate it", v, schemaVersion)
			}
			return nil
		})
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{bucketMeta, bucketKeys, bucketRegistrations, bucketEvents, bucketFeed, bucketAcks, bucketDocs} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			meta := tx.Bucket(bucketMeta)
			switch v := string(meta.Get(metaSchema)); v {
			case "", schemaVersion:
			case schemaSeqEvents:
				n, err := migrateEvents(tx)
				if err != nil {
					return err
				}
				log("crk: store migrated to schema "+schemaVersion, "events", n)
			default:
				return fmt.Errorf("crk: store schema %q, this build reads %q", v, schemaVersion)
			}
			return meta.Put(metaSchema, []byte(schemaVersion))
		})
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	b := &boltBackend{db: db, keys: &keyCache{}}
	b.commits = newCommitter(func(fn func(storeTx) error) error { return b.update(context.Background(), fn) })
	if !opts.ReadOnly {
		b.counter = newBoltCounter(db, opts.NoSync)
	}
	return b, nil
}

func (b *boltBackend) update(_ context.Context, fn func(storeTx) error) error {
	return b.db.Update(func(tx *bolt.Tx) error { b.counter.begin(tx); return fn(boltTx{tx: tx, cache: b.keys}) })
}

// batch shares a commit with the concurrent callers of batch and group, with no wait for a
// lone caller (bbolt's own db.Batch holds every call for MaxBatchDelay).
func (b *boltBackend) batch(_ context.Context, fn func(storeTx) error) error {
	return b.commits.run(fn)
}

func (b *boltBackend) stats() StoreStats {
	if b.counter == nil {
		return StoreStats{}
	}
	return b.counter.stats()
}

func (b *boltBackend) group(fn func(storeTx) error) error { return b.commits.run(fn) }

func (b *boltBackend) view(_ context.Context, fn func(storeTx) error) error {
	return b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx: tx, cache: b.keys}) })
}

// watchFeed notifies nothing: a bbolt store has one writer, this process, whose commits the
// service notifies itself.
func (b *boltBackend) watchFeed(func()) func() { return func() {} }

func (b *boltBackend) close() error {
	b.commits.close()
	return b.db.Close()
}

// boltTx is a bbolt transaction. bbolt serialises writers, so keyForUpdate needs no lock.
type boltTx struct {
	tx    *bolt.Tx
	cache *keyCache // nil: every key record is decoded
}

func (t boltTx) meta() (string, []byte, error) {
	m := t.tx.Bucket(bucketMeta)
	return string(m.Get(metaInstance)), bytes.Clone(m.Get(metaCheck)), nil
}

func (t boltTx) setMeta(instance string, check []byte) error {
	m := t.tx.Bucket(bucketMeta)
	if err := m.Put(metaInstance, []byte(instance)); err != nil {
		return err
	}
	return m.Put(metaCheck, check)
}

func (t boltTx) key(id string) (*keyRecord, error) {
	raw := t.tx.Bucket(bucketKeys).Get([]byte(id))
	if raw == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, id)
	}
	return t.cache.decode(id, raw)
}

func (t boltTx) keyForUpdate(id string) (*keyRecord, error) { return t.key(id) }

func (t boltTx) putKey(r *keyRecord) error {
	if err := r.check(); err != nil {
		return err
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketKeys).Put([]byte(r.ID), raw)
}

func (t boltTx) keys(_ bool, fn func(*keyRecord) error) error {
	return t.tx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
		r, err := decodeKey(v)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

func regKey(keyID, crn string) []byte { return []byte(keyID + "\x00" + crn) }

func (t boltTx) reg(keyID, crn string) (*regRecord, error) {
	raw := t.tx.Bucket(bucketRegistrations).Get(regKey(keyID, crn))
	if raw == nil {
		return nil, fmt.Errorf("%w: key %s, resource %s", ErrRegistrationNotFound, keyID, crn)
	}
	return decodeReg(raw)
}

func (t boltTx) putReg(r *regRecord) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketRegistrations).Put(regKey(r.KeyID, r.ResourceCRN), raw)
}

func (t boltTx) deleteReg(keyID, crn string) error {
	return t.tx.Bucket(bucketRegistrations).Delete(regKey(keyID, crn))
}

func (t boltTx) countRegs(keyID string) (int, error) {
	n := 0
	prefix := []byte(keyID + "\x00")
	c := t.tx.Bucket(bucketRegistrations).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n, nil
}

func (t boltTx) keyRegs(keyID string) ([]*regRecord, error) {
	var out []*regRecord
	prefix := []byte(keyID + "\x00")
	c := t.tx.Bucket(bucketRegistrations).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		r, err := decodeReg(v)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (t boltTx) regs(fn func(*regRecord) error) error {
	return t.tx.Bucket(bucketRegistrations).ForEach(func(_, v []byte) error {
		r, err := decodeReg(v)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

func (t boltTx) putEvents(evs []*Event) error {
	for _, ev := range evs {
		if err := t.putEvent(ev); err != nil {
			return err
		}
	}
	return nil
}

func (t boltTx) putEvent(ev *Event) error {
	b := t.tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	nanos := eventNanos(ev.Time)
	if last, _ := b.Cursor().Last(); len(last) == eventKeyLen {
		nanos = max(nanos, binary.BigEndian.Uint64(last))
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return b.Put(eventKey(nanos, seq), raw)
}

// pruneEvents: keys are contiguous in sequence (events are deleted oldest first only), so the
// count is the span of the first and last sequence.
func (t boltTx) pruneEvents(maxCount int, cutoff uint64, limit int) (int, error) {
	c := t.tx.Bucket(bucketEvents).Cursor()
	last, _ := c.Last()
	if last == nil {
		return 0, nil
	}
	lastSeq := binary.BigEndian.Uint64(last[8:])
	n := 0
	for k, _ := c.First(); k != nil && (limit <= 0 || n < limit); k, _ = c.First() {
		count := lastSeq - binary.BigEndian.Uint64(k[8:]) + 1
		overCount := maxCount > 0 && count > uint64(maxCount)
		tooOld := binary.BigEndian.Uint64(k) < cutoff
		if !overCount && !tooOld {
			break
		}
		if err := c.Delete(); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (t boltTx) scanEvents(s eventScan, fn func([]byte, *Event) (bool, error)) error {
	c := t.tx.Bucket(bucketEvents).Cursor()
	var k, v []byte
	next := c.Next
	switch {
	case !s.desc && s.after != nil:
		if k, v = c.Seek(s.after); k != nil && bytes.Equal(k, s.after) {
			k, v = c.Next()
		}
	case !s.desc && s.from > 0:
		// A key's time is at least its event's time: nothing before from's key matches.
		k, v = c.Seek(eventKey(s.from, 0))
	case !s.desc:
		k, v = c.First()
	case s.after != nil:
		next = c.Prev
		if k, v = c.Seek(s.after); k == nil {
			k, v = c.Last()
		}
		if k != nil && bytes.Compare(k, s.after) >= 0 {
			k, v = c.Prev()
		}
	default:
		next = c.Prev
		k, v = c.Last()
	}
	for ; k != nil; k, v = next() {
		if s.desc && binary.BigEndian.Uint64(k) < s.from {
			return nil // this key and every earlier one are before from
		}
		var ev Event
		if err := json.Unmarshal(v, &ev); err != nil {
			return fmt.Errorf("crk: store: event %x: %w", k, err)
		}
		more, err := fn(k, &ev)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (t boltTx) eventNamesKey(id string) (bool, error) {
	want, err := json.Marshal(id)
	if err != nil {
		return false, err
	}
	needle := append([]byte(`"keyId":`), want...)
	c := t.tx.Bucket(bucketEvents).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if !bytes.Contains(v, needle) {
			continue
		}
		var ev Event
		if json.Unmarshal(v, &ev) == nil && ev.KeyID == id {
			return true, nil
		}
	}
	return false, nil
}

func (t boltTx) putFeed(ev *LifecycleEvent) error {
	b := t.tx.Bucket(bucketFeed)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Cursor = strconv.FormatUint(seq, 10)
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return b.Put(seqKey(seq), raw)
}

func seqKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

func (t boltTx) pruneFeed(maxCount int, cutoff time.Time, limit int) (int, error) {
	b := t.tx.Bucket(bucketFeed)
	head := b.Sequence()
	c := b.Cursor()
	var pruned uint64
	n := 0
	for k, v := c.First(); k != nil && (limit <= 0 || n < limit); k, v = c.First() {
		seq := binary.BigEndian.Uint64(k)
		overCount := maxCount > 0 && head-seq+1 > uint64(maxCount)
		tooOld := false
		if !cutoff.IsZero() {
			var ev LifecycleEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return n, fmt.Errorf("crk: store: feed event %d: %w", seq, err)
			}
			tooOld = ev.Time.Before(cutoff)
		}
		if !overCount && !tooOld {
			break
		}
		if err := c.Delete(); err != nil {
			return n, err
		}
		pruned = seq
		n++
	}
	if n > 0 {
		if err := t.tx.Bucket(bucketMeta).Put(metaFeedPruned, seqKey(pruned)); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (t boltTx) feed(after uint64, limit int) ([]LifecycleEvent, uint64, uint64, error) {
	var head, pruned uint64
	b := t.tx.Bucket(bucketFeed)
	if b != nil { // a store from before the feed, opened read-only, has an empty feed
		head = b.Sequence()
	}
	if v := t.tx.Bucket(bucketMeta).Get(metaFeedPruned); len(v) == 8 {
		pruned = binary.BigEndian.Uint64(v)
	}
	if b == nil || after >= head {
		return nil, head, pruned, nil
	}
	var out []LifecycleEvent
	c := b.Cursor()
	for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
		var ev LifecycleEvent
		if err := json.Unmarshal(v, &ev); err != nil {
			return nil, 0, 0, fmt.Errorf("crk: store: feed event %d: %w", binary.BigEndian.Uint64(k), err)
		}
		out = append(out, ev)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, head, pruned, nil
}

func ackKey(keyID, host string) []byte { return []byte(keyID + "\x00" + host) }

func (t boltTx) putAck(a *HostAck) error {
	raw, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketAcks).Put(ackKey(a.KeyID, a.Host), raw)
}

func (t boltTx) hasAck(keyID, host string) (bool, error) {
	b := t.tx.Bucket(bucketAcks)
	return b != nil && b.Get(ackKey(keyID, host)) != nil, nil
}

// scanAcks calls fn with the acknowledgements whose bucket key starts with prefix.
func (t boltTx) scanAcks(prefix []byte, fn func(k, v []byte) error) error {
	b := t.tx.Bucket(bucketAcks)
	if b == nil {
		return nil // a store opened read-only that predates acknowledgements
	}
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (t boltTx) countAcks(keyID string) (int, error) {
	n := 0
	err := t.scanAcks([]byte(keyID+"\x00"), func(_, _ []byte) error { n++; return nil })
	return n, err
}

func (t boltTx) keyAcks(keyID string) ([]HostAck, error) {
	var out []HostAck
	err := t.acksUnder([]byte(keyID+"\x00"), func(a *HostAck) error { out = append(out, *a); return nil })
	return out, err
}

func (t boltTx) deleteAck(keyID, host string) (bool, error) {
	b := t.tx.Bucket(bucketAcks)
	if b == nil || b.Get(ackKey(keyID, host)) == nil {
		return false, nil
	}
	return true, b.Delete(ackKey(keyID, host))
}

func (t boltTx) deleteAcks(keyID string) error {
	var doomed [][]byte
	if err := t.scanAcks([]byte(keyID+"\x00"), func(k, _ []byte) error {
		doomed = append(doomed, bytes.Clone(k))
		return nil
	}); err != nil {
		return err
	}
	for _, k := range doomed {
		if err := t.tx.Bucket(bucketAcks).Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (t boltTx) acks(fn func(*HostAck) error) error { return t.acksUnder(nil, fn) }

func (t boltTx) acksUnder(prefix []byte, fn func(*HostAck) error) error {
	return t.scanAcks(prefix, func(k, v []byte) error {
		var a HostAck
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("crk: store: acknowledgement %q: %w", k, err)
		}
		return fn(&a)
	})
}

func (t boltTx) heads() (uint64, uint64, uint64, error) {
	var feed, pruned uint64
	if b := t.tx.Bucket(bucketFeed); b != nil {
		feed = b.Sequence()
	}
	if v := t.tx.Bucket(bucketMeta).Get(metaFeedPruned); len(v) == 8 {
		pruned = binary.BigEndian.Uint64(v)
	}
	return t.tx.Bucket(bucketEvents).Sequence(), feed, pruned, nil
}

func (t boltTx) importEvent(pos []byte, ev *Event) error {
	if len(pos) != eventKeyLen || binary.BigEndian.Uint64(pos[8:]) != ev.Seq {
		return fmt.Errorf("crk: store: event %d has the position %x", ev.Seq, pos)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketEvents).Put(pos, raw)
}

func (t boltTx) importFeed(ev *LifecycleEvent) error {
	seq, err := ParseFeedCursor(ev.Cursor)
	if err != nil || seq == 0 {
		return fmt.Errorf("crk: store: feed event with cursor %q", ev.Cursor)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketFeed).Put(seqKey(seq), raw)
}

func (t boltTx) setHeads(events, feed, feedPruned uint64) error {
	if err := t.tx.Bucket(bucketEvents).SetSequence(events); err != nil {
		return err
	}
	if err := t.tx.Bucket(bucketFeed).SetSequence(feed); err != nil {
		return err
	}
	return t.tx.Bucket(bucketMeta).Put(metaFeedPruned, seqKey(feedPruned))
}

func decodeKey(v []byte) (*keyRecord, error) {
	var r keyRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("crk: store: key: %w", err)
	}
	return &r, nil
}

func decodeReg(v []byte) (*regRecord, error) {
	var r regRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("crk: store: registration: %w", err)
	}
	return &r, nil
}

// migrateEvents rekeys the events of a schema 1 store to time-ordered keys in tx and returns
// how many it moved. Keys take the event's time, never going backwards in sequence order.
func migrateEvents(tx *bolt.Tx) (int, error) {
	old := tx.Bucket(bucketEvents)
	seq := old.Sequence()
	type entry struct {
		seq uint64
		raw []byte
	}
	var evs []entry
	err := old.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("crk: store: schema 1 event key %x is not a sequence number", k)
		}
		evs = append(evs, entry{seq: binary.BigEndian.Uint64(k), raw: bytes.Clone(v)})
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := tx.DeleteBucket(bucketEvents); err != nil {
		return 0, fmt.Errorf("crk: store: migrating events: %w", err)
	}
	b, err := tx.CreateBucket(bucketEvents)
	if err != nil {
		return 0, fmt.Errorf("crk: store: migrating events: %w", err)
	}
	if err := b.SetSequence(seq); err != nil {
		return 0, fmt.Errorf("crk: store: migrating events: %w", err)
	}
	var last uint64
	for _, e := range evs {
		var ev Event
		if err := json.Unmarshal(e.raw, &ev); err != nil {
			return 0, fmt.Errorf("crk: store: event %d: %w", e.seq, err)
		}
		last = max(last, eventNanos(ev.Time))
		if err := b.Put(eventKey(last, e.seq), e.raw); err != nil {
			return 0, fmt.Errorf("crk: store: migrating events: %w", err)
		}
	}
	return len(evs), nil
}
