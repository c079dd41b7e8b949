package crk

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"io"
	"time"
)

// Records as stored, by either backend (as JSON). Root and standard key material is kept only
// encrypted under the service master key (AES-256-GCM, with the key and version ids as
// additional data).

const checkText = "crkvol service master key check v1"

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
	DualAuth    *dualAuthRecord `json:"dualAuthDelete,omitempty"`
	Deleted     time.Time       `json:"deletionDate"`
	DeletedBy   string          `json:"deletedBy,omitempty"`
	Purged      bool            `json:"purged"`
	Versions    []versionRecord `json:"versions"` // oldest first

	// Aliases (sorted) and KeyRingID ("" is the default ring): aliases.go, keyrings.go.
	Aliases   []string `json:"aliases,omitempty"`
	KeyRingID string   `json:"keyRingID,omitempty"`
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
