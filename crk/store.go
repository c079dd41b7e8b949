package crk

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The store is one bbolt file. Buckets:
//
//	meta           "check": the master key check value; "schema": "2"; "instance": the id
//	keys           key id -> keyRecord (JSON)
//	registrations  key id + "\x00" + resource CRN -> regRecord (JSON)
//	events         big-endian Unix nanoseconds + big-endian sequence number -> Event (JSON)
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

	metaCheck  = []byte("check")
	metaSchema = []byte("schema")
)

const (
	schemaVersion = "2"
	// schemaSeqEvents is the schema whose events are keyed by sequence number only.
	schemaSeqEvents = "1"
	checkText       = "crkvol service master key check v1"
)

// keyRecord is a key as stored. Times are UTC; zero means unset.
type keyRecord struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	CRN         string          `json:"crn"`
	Type        KeyType         `json:"type"`
	Imported    bool            `json:"imported"`
	State       State           `json:"state"`
	CreatedBy   string          `json:"createdBy"`
	Created     time.Time       `json:"creationDate"`
	LastUpdate  time.Time       `json:"lastUpdateDate"`
	LastRotate  time.Time       `json:"lastRotateDate"`
	LastAction  time.Time       `json:"lastActionDate"`
	LastSync    time.Time       `json:"lastSyncDate"`
	Expiration  time.Time       `json:"expirationDate"`
	Policy      *RotationPolicy `json:"rotationPolicy,omitempty"`
	Deleted     time.Time       `json:"deletionDate"`
	DeletedBy   string          `json:"deletedBy,omitempty"`
	Purged      bool            `json:"purged"`
	Versions    []versionRecord `json:"versions"` // oldest first
}

// versionRecord is one version of a key's material, encrypted under the master key.
type versionRecord struct {
	ID        string    `json:"id"`
	Created   time.Time `json:"creationDate"`
	Material  []byte    `json:"material,omitempty"` // nonce || AES-256-GCM(material)
	Destroyed bool      `json:"destroyed"`
}

func (r *keyRecord) latest() *versionRecord { return &r.Versions[len(r.Versions)-1] }

func (r *keyRecord) version(id string) *versionRecord {
	for i := range r.Versions {
		if r.Versions[i].ID == id {
			return &r.Versions[i]
		}
	}
	return nil
}

// effectiveState applies expiry: an active key past its expiration date is deactivated.
func (r *keyRecord) effectiveState(now time.Time) State {
	if r.State == StateActive && !r.Expiration.IsZero() && !now.Before(r.Expiration) {
		return StateDeactivated
	}
	return r.State
}

// check verifies the record's invariants; it runs before every write, so a bug can never
// persist an inconsistent key.
func (r *keyRecord) check() error {
	switch {
	case r.ID == "" || r.CRN == "":
		return fmt.Errorf("crk: internal error: key record without id or CRN")
	case len(r.Versions) == 0:
		return fmt.Errorf("crk: internal error: key %s has no version", r.ID)
	case r.Type != RootKey && r.Type != StandardKey:
		return fmt.Errorf("crk: internal error: key %s has type %q", r.ID, r.Type)
	case r.Type == StandardKey && len(r.Versions) != 1:
		return fmt.Errorf("crk: internal error: standard key %s has %d versions", r.ID, len(r.Versions))
	case r.Policy != nil && (r.Type != RootKey || r.Imported):
		return fmt.Errorf("crk: internal error: key %s has a policy it cannot have", r.ID)
	case r.latest().Destroyed && !r.Purged:
		return fmt.Errorf("crk: internal error: key %s lost its latest version", r.ID)
	}
	switch r.State {
	case StateActive, StateSuspended, StateDeactivated:
		if !r.Deleted.IsZero() {
			return fmt.Errorf("crk: internal error: live key %s has a deletion date", r.ID)
		}
	case StateDestroyed:
		if r.Deleted.IsZero() {
			return fmt.Errorf("crk: internal error: destroyed key %s has no deletion date", r.ID)
		}
	default:
		return fmt.Errorf("crk: internal error: key %s in state %d", r.ID, r.State)
	}
	return nil
}

// regRecord is a registration as stored.
type regRecord struct {
	KeyID              string    `json:"keyId"`
	ResourceCRN        string    `json:"resourceCrn"`
	VersionID          string    `json:"keyVersion"`
	Description        string    `json:"description,omitempty"`
	PreventKeyDeletion bool      `json:"preventKeyDeletion"`
	CreatedBy          string    `json:"createdBy"`
	UpdatedBy          string    `json:"updatedBy"`
	Created            time.Time `json:"creationDate"`
	Updated            time.Time `json:"lastUpdated"`
}

func regKey(keyID, crn string) []byte { return []byte(keyID + "\x00" + crn) }

func getKey(tx *bolt.Tx, id string) (*keyRecord, error) {
	raw := tx.Bucket(bucketKeys).Get([]byte(id))
	if raw == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, id)
	}
	return decodeKey(raw)
}

func decodeKey(v []byte) (*keyRecord, error) {
	var r keyRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("crk: store: key: %w", err)
	}
	return &r, nil
}

func putKey(tx *bolt.Tx, r *keyRecord) error {
	if err := r.check(); err != nil {
		return err
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketKeys).Put([]byte(r.ID), raw)
}

func getReg(tx *bolt.Tx, keyID, crn string) (*regRecord, error) {
	raw := tx.Bucket(bucketRegistrations).Get(regKey(keyID, crn))
	if raw == nil {
		return nil, fmt.Errorf("%w: key %s, resource %s", ErrRegistrationNotFound, keyID, crn)
	}
	var r regRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("crk: store: registration: %w", err)
	}
	return &r, nil
}

func putReg(tx *bolt.Tx, r *regRecord) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketRegistrations).Put(regKey(r.KeyID, r.ResourceCRN), raw)
}

// keyRegs returns the registrations of one key.
func keyRegs(tx *bolt.Tx, keyID string) ([]*regRecord, error) {
	var out []*regRecord
	prefix := []byte(keyID + "\x00")
	c := tx.Bucket(bucketRegistrations).Cursor()
	for k, v := c.Seek(prefix); k != nil && len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
		var r regRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("crk: store: registration: %w", err)
		}
		out = append(out, &r)
	}
	return out, nil
}

// sealer encrypts key material under the service master key.
type sealer struct {
	aead cipher.AEAD
}

func newSealer(master []byte) (*sealer, error) {
	if len(master) != 32 {
		return nil, masterKeyErrorf("the master key is %d bytes, want 32", len(master))
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func materialAAD(keyID, versionID string) []byte {
	return []byte("crkvol material v1\x00" + keyID + "\x00" + versionID)
}

func (s *sealer) seal(rand io.Reader, plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("crk: reading random nonce: %w", err)
	}
	return s.aead.Seal(nonce, nonce, plaintext, aad), nil
}

func (s *sealer) open(sealed, aad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: sealed material too short", ErrMasterKey)
	}
	out, err := s.aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot open stored material", ErrMasterKey)
	}
	return out, nil
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
