package kpapi

import (
	"time"

	"crkvol/crk"
)

// Collection types of the API.
const (
	TypeKey          = "application/vnd.ibm.kms.key+json"
	TypeKeyVersion   = "application/vnd.ibm.kms.key_version+json"
	TypePolicy       = "application/vnd.ibm.kms.policy+json"
	TypeRegistration = "application/vnd.ibm.kms.registration+json"
	TypeError        = "application/vnd.ibm.kms.error+json"
	TypeAction       = "application/vnd.ibm.kms.key_action+json"
	TypeAlias        = "application/vnd.ibm.kms.alias+json"
	TypeKeyRing      = "application/vnd.ibm.kms.key_ring+json"
)

// Metadata is a collection's metadata.
type Metadata struct {
	CollectionType  string `json:"collectionType"`
	CollectionTotal int    `json:"collectionTotal"`
	TotalCount      *int   `json:"totalCount,omitempty"`
}

// KeyVersion is a key version as the API shows it.
type KeyVersion struct {
	ID           string `json:"id"`
	CreationDate string `json:"creationDate,omitempty"`
	// Destroyed, in a version listing only, says whether the version's material has been
	// destroyed (pruned or purged). It is crkvol's extension: Key Protect does not send it
	// and its clients ignore it.
	Destroyed *bool `json:"destroyed,omitempty"`
}

// Rotation is a key's rotation settings.
type Rotation struct {
	Enabled       bool `json:"enabled"`
	IntervalMonth int  `json:"interval_month"`
}

// Key is a key as the API shows it.
type Key struct {
	ID             string      `json:"id"`
	Name           string      `json:"name"`
	Description    string      `json:"description,omitempty"`
	Type           string      `json:"type"`
	State          int         `json:"state"`
	Extractable    bool        `json:"extractable"`
	Imported       bool        `json:"imported"`
	CRN            string      `json:"crn"`
	AlgorithmType  string      `json:"algorithmType"`
	CreatedBy      string      `json:"createdBy"`
	CreationDate   string      `json:"creationDate"`
	LastUpdateDate string      `json:"lastUpdateDate,omitempty"`
	LastRotateDate string      `json:"lastRotateDate,omitempty"`
	KeyVersion     *KeyVersion `json:"keyVersion,omitempty"`
	Rotation       *Rotation   `json:"rotation,omitempty"`
	DualAuthDelete *DualAuth   `json:"dualAuthDelete,omitempty"`
	ExpirationDate string      `json:"expirationDate,omitempty"`
	Deleted        bool        `json:"deleted"`
	DeletionDate   string      `json:"deletionDate,omitempty"`
	DeletedBy      string      `json:"deletedBy,omitempty"`
	Payload        string      `json:"payload,omitempty"`
	Aliases        []string    `json:"aliases,omitempty"`
	KeyRingID      string      `json:"keyRingID,omitempty"`
}

// FromKey converts a crk key to the API form (without payload).
func FromKey(k *crk.Key) Key {
	j := Key{
		ID: k.ID, Name: k.Name, Description: k.Description, Type: TypeKey,
		State: int(k.State), Extractable: k.Extractable, Imported: k.Imported, CRN: k.CRN,
		AlgorithmType: "AES", CreatedBy: k.CreatedBy, CreationDate: RFC3339(k.CreationDate),
		LastUpdateDate: RFC3339(k.LastUpdateDate), LastRotateDate: RFC3339(k.LastRotateDate),
		KeyVersion:     &KeyVersion{ID: k.KeyVersion.ID, CreationDate: RFC3339(k.KeyVersion.CreationDate)},
		ExpirationDate: RFC3339(k.ExpirationDate), Deleted: k.Deleted, DeletionDate: RFC3339(k.DeletionDate),
		DeletedBy: k.DeletedBy, DualAuthDelete: dualAuthOf(k), Aliases: k.Aliases, KeyRingID: k.KeyRingID,
	}
	if p := k.RotationPolicy; p != nil {
		j.Rotation = &Rotation{Enabled: p.Enabled, IntervalMonth: p.IntervalMonths}
	}
	return j
}

// RFC3339 formats a time for the API, or "" for the zero time.
func RFC3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// Registration is a registration as the API shows it.
type Registration struct {
	KeyID              string     `json:"keyId"`
	ResourceCRN        string     `json:"resourceCrn"`
	CreatedBy          string     `json:"createdBy"`
	CreationDate       string     `json:"creationDate"`
	UpdatedBy          string     `json:"updatedBy"`
	LastUpdated        string     `json:"lastUpdated"`
	Description        string     `json:"description,omitempty"`
	PreventKeyDeletion bool       `json:"preventKeyDeletion"`
	KeyVersion         KeyVersion `json:"keyVersion"`
}

// FromRegistration converts a crk registration.
func FromRegistration(r crk.Registration) Registration {
	return Registration{
		KeyID: r.KeyID, ResourceCRN: r.ResourceCRN, CreatedBy: r.CreatedBy, CreationDate: RFC3339(r.CreationDate),
		UpdatedBy: r.UpdatedBy, LastUpdated: RFC3339(r.LastUpdated), Description: r.Description,
		PreventKeyDeletion: r.PreventKeyDeletion,
		KeyVersion:         KeyVersion{ID: r.KeyVersion.ID, CreationDate: RFC3339(r.KeyVersion.CreationDate)},
	}
}

// ErrorBody is the Key Protect error envelope, the body of every error response:
//
//	{"metadata":{"collectionType":"application/vnd.ibm.kms.error+json","collectionTotal":1},
//	 "resources":[{"errorMsg":"Conflict: ...","reasons":[{"code":"KEY_ACTION_INVALID_STATE_ERR",
//	   "message":"...","status":409,"moreInfo":"...","crkvolError":"key_suspended"}]}]}
type ErrorBody struct {
	Metadata  Metadata        `json:"metadata"`
	Resources []ErrorResource `json:"resources"`
}

// ErrorResource is the one resource of an [ErrorBody].
type ErrorResource struct {
	// ErrorMsg is the HTTP status text and the message, such as "Not Found: key does not exist".
	ErrorMsg string        `json:"errorMsg"`
	Reasons  []ErrorReason `json:"reasons"`
}

// ErrorReason is a reason of an [ErrorResource]: the Key Protect reason code and, as an
// extension, the stable id of the crk sentinel behind it.
type ErrorReason struct {
	Code     string       `json:"code"`
	Message  string       `json:"message"`
	Status   int          `json:"status"`
	MoreInfo string       `json:"moreInfo,omitempty"`
	Target   *ErrorTarget `json:"target,omitempty"`
	// CrkvolError is the [crk.ErrorInfo.ID] of the sentinel the error wraps, so that a client
	// can map a reason code that several sentinels share back to the right one. Key Protect
	// does not send it and its clients ignore it (keyprotect-go-client reads code, message,
	// status and moreInfo only).
	CrkvolError string `json:"crkvolError,omitempty"`
}

// ErrorTarget names the request field an [ErrorReason] is about.
type ErrorTarget struct {
	Type string `json:"type"`
	Name string `json:"name"`
}
