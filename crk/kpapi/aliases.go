package kpapi

import (
	"net/http"
	"strings"

	"crkvol/crk"
)

// KeyRingHeader is the request header naming a key ring: the ring a new key is created in,
// or, on a request about a key, the ring the key must be in (a key in another ring is not
// found, as Key Protect finds no such key in the ring).
const KeyRingHeader = "x-kms-key-ring"

// resolveID makes q.id the id of the key the request's {id} names: a key id or one of its
// aliases, in the ring of the x-kms-key-ring header when there is one. It is done once per
// request, before the handler, so that the service's actions, their audit events and the
// registrations they make name the key by its id. A path id shaped as a UUID of any version
// (crk.IsKeyIDShape: an alias never is) is a key id, in lower case as key ids are written,
// never looked up as an alias. A purged key's id or alias is not found, as in Key Protect: a
// purged key no longer exists there (crk keeps its record for the audit trail only). A
// request whose key is not found here is refused, and audited as kms.secrets.default.
func resolveID(q *request) error {
	ring := q.r.Header.Get(KeyRingHeader)
	if crk.IsKeyIDShape(q.id) {
		q.id = strings.ToLower(q.id) // key ids are lower case; any case names the key
	}
	if q.id == "" {
		return nil
	}
	var id string
	var err error
	if ring == "" && crk.IsKeyIDShape(q.id) {
		// A key id: the operation refuses an unknown one itself; a purged one is refused
		// here, as Key Protect answers 404 for every call on it.
		id, err = q.id, q.svc.CheckNotPurged(q.ctx, q.id)
	} else {
		id, err = q.svc.ResolveAPIKey(q.ctx, q.id, ring)
	}
	if err != nil {
		if info, ok := crk.LookupError(err); ok && info.Class == crk.Refusal {
			if aerr := q.svc.RecordFailure(q.ctx, crk.ActionDefault, q.id, err); aerr != nil {
				return aerr
			}
		}
		return err
	}
	q.id = id
	return nil
}

// Alias is a key alias as the API shows it.
type Alias struct {
	// KeyID is the id of the key the alias names.
	KeyID string `json:"keyId"`
	// Alias is the alias itself.
	Alias string `json:"alias"`
	// CreatedBy is the principal that created the alias.
	CreatedBy string `json:"createdBy"`
	// CreationDate is when the alias was created (RFC 3339).
	CreationDate string `json:"creationDate"`
}

// createAlias serves POST /api/v2/keys/{id}/aliases/{alias}: 201 with the alias collection.
func (s *Server) createAlias(q *request) error {
	a, err := q.svc.CreateAlias(q.ctx, q.id, q.r.PathValue("alias"))
	if err != nil {
		return err
	}
	writeJSON(q.w, http.StatusCreated, map[string]any{
		"metadata":  Metadata{CollectionType: TypeAlias, CollectionTotal: 1},
		"resources": []Alias{{KeyID: a.KeyID, Alias: a.Alias, CreatedBy: a.CreatedBy, CreationDate: RFC3339(a.CreationDate)}},
	})
	return nil
}

// deleteAlias serves DELETE /api/v2/keys/{id}/aliases/{alias}: 204.
func (s *Server) deleteAlias(q *request) error {
	if err := q.svc.DeleteAlias(q.ctx, q.id, q.r.PathValue("alias")); err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}
