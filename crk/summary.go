package crk

import (
	"context"
	"strconv"
)

// StoreSummary is what a tool verifying a copy of a store compares between the source and
// the copy ([Service.Summary]): every key with its versions, every registration, and the
// counters of the audit events and of the lifecycle feed. It holds no key material (a copy
// may re-encrypt it under another master key) and no event contents.
type StoreSummary struct {
	// Instance is the store's instance id.
	Instance string `json:"instance"`
	// Keys are every key of the store, deleted and purged ones included, in id order.
	Keys []KeySummary `json:"keys"`
	// Registrations are every registration, in key id then CRN order.
	Registrations []RegistrationSummary `json:"registrations"`
	// Events is the number of audit events the store holds (those the retention deleted
	// not counted); LastEvent is the sequence number of the last one ever recorded.
	Events    int    `json:"events"`
	LastEvent uint64 `json:"lastEvent"`
	// FeedHead is the lifecycle feed's head, the cursor [Service.Lifecycle] returns for an
	// empty cursor; FeedPruned is the last feed event the feed's retention deleted.
	FeedHead   string `json:"feedHead"`
	FeedPruned uint64 `json:"feedPruned"`
	// HostAcks is the number of hosts' acknowledgements the store holds (one per key and
	// host).
	HostAcks int `json:"hostAcks"`
}

// KeySummary is one key of a [StoreSummary].
type KeySummary struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	State    State    `json:"state"`
	Deleted  bool     `json:"deleted"`
	Purged   bool     `json:"purged"`
	Versions []string `json:"versions"` // version ids, oldest first
}

// RegistrationSummary is one registration of a [StoreSummary].
type RegistrationSummary struct {
	KeyID     string `json:"keyId"`
	CRN       string `json:"resourceCrn"`
	VersionID string `json:"keyVersion"`
}

// Summary lists the store's keys, registrations, event and feed counters and the number of
// hosts' acknowledgements, read in one
// transaction, for tools that verify a copy of the store (crkvol kms migrate compares the
// summary of the source with the copy's). It records no audit event, as [CopyStore] does
// not, so that summarising a store changes nothing in it; it works on a store opened
// read-only.
func (s *Service) Summary(ctx context.Context) (StoreSummary, error) {
	var sum StoreSummary
	err := s.view(ctx, func(tx storeTx) error {
		sum = StoreSummary{Instance: s.instance, Keys: []KeySummary{}, Registrations: []RegistrationSummary{}}
		if err := tx.keys(false, func(r *keyRecord) error {
			k := KeySummary{ID: r.ID, Name: r.Name, State: r.State, Deleted: !r.Deleted.IsZero(), Purged: r.Purged, Versions: []string{}}
			for _, v := range r.Versions {
				k.Versions = append(k.Versions, v.ID)
			}
			sum.Keys = append(sum.Keys, k)
			return nil
		}); err != nil {
			return err
		}
		if err := tx.regs(func(r *regRecord) error {
			sum.Registrations = append(sum.Registrations, RegistrationSummary{KeyID: r.KeyID, CRN: r.ResourceCRN, VersionID: r.VersionID})
			return nil
		}); err != nil {
			return err
		}
		if err := tx.scanEvents(eventScan{}, func([]byte, *Event) (bool, error) {
			sum.Events++
			return true, nil
		}); err != nil {
			return err
		}
		if err := tx.acks(func(*HostAck) error { sum.HostAcks++; return nil }); err != nil {
			return err
		}
		events, head, pruned, err := tx.heads()
		if err != nil {
			return err
		}
		sum.LastEvent, sum.FeedHead, sum.FeedPruned = events, strconv.FormatUint(head, 10), pruned
		return nil
	})
	return sum, err
}

// Empty reports whether the store holds nothing: no key, registration, event or lifecycle
// event, ever.
func (s StoreSummary) Empty() bool {
	return len(s.Keys) == 0 && len(s.Registrations) == 0 && s.Events == 0 && s.LastEvent == 0 &&
		(s.FeedHead == "" || s.FeedHead == "0") && s.FeedPruned == 0 && s.HostAcks == 0
}
