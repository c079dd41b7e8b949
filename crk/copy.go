package crk

import (
	"context"
	"fmt"
	"io"
	"slices"
)

// CopyResult counts what CopyStore copied.
type CopyResult struct {
	Keys, Registrations, Events, FeedEvents int
	// HostAcks counts the hosts' acknowledgements copied.
	HostAcks int
	// Docs counts the documents copied (aliases, key rings, instance policies, import
	// tokens).
	Docs int
}

// CopyStore copies the whole state of the service from into the service to: keys (their
// material re-encrypted under to's master key when the two differ), registrations, the
// audit events, the lifecycle feed, the hosts' acknowledgements and the documents (aliases,
// key rings, instance policies, import tokens: their secrets re-sealed as material is), keeping event sequence numbers and feed cursors, so
// that followers of the feed carry on from their cursors. It moves a store from bbolt to
// PostgreSQL (crkvol kms migrate) or back. to must be the same instance as from, and empty:
// no key, registration or event of its own (opening a new store writes none). The copy is
// one transaction of to, read from one transaction of from: it is all there or not at all.
// It records no event of its own in either store. Stop the processes that change from first;
// it is read as it was when the copy began.
func CopyStore(ctx context.Context, from, to *Service) (CopyResult, error) {
	var res CopyResult
	if from.instance != to.instance {
		return res, fmt.Errorf("%w: copying instance %s into instance %s", ErrInvalidArgument, from.instance, to.instance)
	}
	to.mkMu.Lock() // no other change of to, in this process, while it is filled
	defer to.mkMu.Unlock()
	from.mkMu.RLock()
	defer from.mkMu.RUnlock()
	return res, from.store.view(ctx, func(src storeTx) error {
		// The material is copied as sealed when to's master key is from's (it opens from's
		// check value), and re-encrypted under to's otherwise.
		_, check, err := src.meta()
		if err != nil {
			return err
		}
		_, err = to.sealer.open(check, nil)
		reseal := err != nil
		return to.store.update(ctx, func(dst storeTx) error {
			res = CopyResult{}
			if err := requireEmpty(dst, to.instance); err != nil {
				return err
			}
			var keys []*keyRecord
			if err := src.keys(false, func(r *keyRecord) error { keys = append(keys, r); return nil }); err != nil {
				return err
			}
			for _, r := range keys {
				if reseal {
					if err := resealKey(r, from.sealer, to.sealer, to.rand); err != nil {
						return err
					}
				}
				if err := dst.putKey(r); err != nil {
					return fmt.Errorf("crk: copying key %s: %w", r.ID, err)
				}
				res.Keys++
			}
			var regs []*regRecord
			if err := src.regs(func(r *regRecord) error { regs = append(regs, r); return nil }); err != nil {
				return err
			}
			for _, r := range regs {
				if err := dst.putReg(r); err != nil {
					return fmt.Errorf("crk: copying registration %s of key %s: %w", r.ResourceCRN, r.KeyID, err)
				}
				res.Registrations++
			}
			type stored struct {
				pos []byte
				ev  *Event
			}
			var evs []stored
			if err := src.scanEvents(eventScan{}, func(pos []byte, ev *Event) (bool, error) {
				evs = append(evs, stored{slices.Clone(pos), ev})
				return true, nil
			}); err != nil {
				return err
			}
			for _, e := range evs {
				if err := dst.importEvent(e.pos, e.ev); err != nil {
					return fmt.Errorf("crk: copying event %d: %w", e.ev.Seq, err)
				}
				res.Events++
			}
			feed, _, _, err := src.feed(0, 0)
			if err != nil {
				return err
			}
			for i := range feed {
				if err := dst.importFeed(&feed[i]); err != nil {
					return fmt.Errorf("crk: copying lifecycle event %s: %w", feed[i].Cursor, err)
				}
				res.FeedEvents++
			}
			var acks []*HostAck
			if err := src.acks(func(a *HostAck) error { acks = append(acks, a); return nil }); err != nil {
				return err
			}
			for _, a := range acks {
				if err := dst.putAck(a); err != nil {
					return fmt.Errorf("crk: copying the acknowledgement of host %s for key %s: %w", a.Host, a.KeyID, err)
				}
				res.HostAcks++
			}
			var docs []storedDoc
			if err := src.allDocs(func(kind, name string, data []byte) error {
				docs = append(docs, storedDoc{kind, name, data})
				return nil
			}); err != nil {
				return err
			}
			for _, d := range docs {
				data := d.data
				if reseal {
					if data, _, err = resealDoc(d.kind, d.name, data, from.sealer, to.sealer, to.rand); err != nil {
						return err
					}
				}
				if err := dst.insertDoc(d.kind, d.name, data); err != nil {
					return fmt.Errorf("crk: copying %s document %q: %w", d.kind, d.name, err)
				}
				res.Docs++
			}
			events, head, pruned, err := src.heads()
			if err != nil {
				return err
			}
			return dst.setHeads(events, head, pruned)
		})
	})
}

// requireEmpty refuses a destination that holds anything: a copy never merges two stores.
func requireEmpty(tx storeTx, instance string) error {
	n := 0
	if err := tx.keys(false, func(*keyRecord) error { n++; return nil }); err != nil {
		return err
	}
	if err := tx.regs(func(*regRecord) error { n++; return nil }); err != nil {
		return err
	}
	if err := tx.allDocs(func(string, string, []byte) error { n++; return nil }); err != nil {
		return err
	}
	events, feed, _, err := tx.heads()
	if err != nil {
		return err
	}
	if n > 0 || events > 0 || feed > 0 {
		return fmt.Errorf("%w: instance %s already holds keys, registrations, documents or events in the destination store; a copy goes into an empty one", ErrInvalidArgument, instance)
	}
	return nil
}

// resealKey re-encrypts the material of every version of r from one master key to another.
// A reseal is made on a copy of the versions: r's are replaced only when all succeeded, so
// that a transaction run again starts from the source's material.
func resealKey(r *keyRecord, from, to *sealer, rand io.Reader) error {
	versions := slices.Clone(r.Versions)
	for i := range versions {
		v := &versions[i]
		if v.Material == nil {
			continue
		}
		aad := materialAAD(r.ID, v.ID)
		m, err := from.open(v.Material, aad)
		if err != nil {
			return fmt.Errorf("crk: copying key %s version %s: %w", r.ID, v.ID, err)
		}
		v.Material, err = to.seal(rand, m, aad)
		clear(m)
		if err != nil {
			return err
		}
	}
	r.Versions = versions
	return nil
}
