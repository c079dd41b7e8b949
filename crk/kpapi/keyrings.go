package kpapi

import (
	"net/http"

	"crkvol/crk"
)

// KeyRing is a key ring as the API shows it; the default ring has no creation date nor
// creator.
type KeyRing struct {
	// ID is the ring's id.
	ID string `json:"id"`
	// CreationDate is when the ring was created (RFC 3339; none for the default ring).
	CreationDate string `json:"creationDate,omitempty"`
	// CreatedBy is the principal that created the ring (none for the default ring).
	CreatedBy string `json:"createdBy,omitempty"`
}

func keyRings(q *request, status int, total *int, rings ...crk.KeyRing) {
	res := make([]KeyRing, 0, len(rings))
	for _, r := range rings {
		res = append(res, KeyRing{ID: r.ID, CreationDate: RFC3339(r.CreationDate), CreatedBy: r.CreatedBy})
	}
	md := Metadata{CollectionType: TypeKeyRing, CollectionTotal: len(res), TotalCount: total}
	writeJSON(q.w, status, map[string]any{"metadata": md, "resources": res})
}

// createKeyRing serves POST /api/v2/key_rings/{ring}: 201 with no body, as Key Protect
// answers (the official client decodes a body it is sent into nothing, and fails).
func (s *Server) createKeyRing(q *request) error {
	if _, err := q.svc.CreateKeyRing(q.ctx, q.r.PathValue("ring")); err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusCreated)
	return nil
}

// listKeyRings serves GET /api/v2/key_rings[?limit=&offset=&totalCount=true]: the default
// ring first, then the others in id order; a page holds 51 rings unless limit (1 to 5000)
// says otherwise, as Key Protect's does, and totalCount=true adds the number of all.
func (s *Server) listKeyRings(q *request) error {
	limit, offset, err := paging(q.r, defaultKeyRingPage)
	if err != nil {
		return err
	}
	withTotal, err := boolParam(q.r.URL.Query(), "totalCount")
	if err != nil {
		return err
	}
	var total *int
	if withTotal {
		total = new(int)
	}
	rings, err := q.svc.ListKeyRings(q.ctx)
	if err != nil {
		return err
	}
	if total != nil {
		*total = len(rings)
	}
	rings = rings[min(offset, len(rings)):]
	rings = rings[:min(limit, len(rings))]
	keyRings(q, http.StatusOK, total, rings...)
	return nil
}

// defaultKeyRingPage is how many key rings a listing holds without a limit: the most an
// instance can have, the default ring included.
const defaultKeyRingPage = crk.MaxKeyRings + 1

// deleteKeyRing serves DELETE /api/v2/key_rings/{ring}[?force=true]: 204.
func (s *Server) deleteKeyRing(q *request) error {
	force, err := boolParam(q.r.URL.Query(), "force")
	if err != nil {
		return err
	}
	if err := q.svc.DeleteKeyRing(q.ctx, q.r.PathValue("ring"), force); err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}

// setKeyRing serves PATCH /api/v2/keys/{id} with {"keyRingID": "<ring>"} (the official
// client sends the member as "KeyRingID"; JSON members match fields in any case): the key
// moves to that ring; 200 with the key.
func (s *Server) setKeyRing(q *request) error {
	var body struct {
		KeyRingID *string `json:"keyRingID"`
	}
	if err := decode(q.r, &body); err != nil {
		return err
	}
	if body.KeyRingID == nil || *body.KeyRingID == "" {
		return badRequest("BAD_BODY_ERR", `the body must name the key ring to move the key to: {"keyRingID": "<id>"}`, "keyRingID")
	}
	k, err := q.svc.SetKeyRing(q.ctx, q.id, *body.KeyRingID)
	if err != nil {
		return err
	}
	return keys(q, http.StatusOK, *k)
}
