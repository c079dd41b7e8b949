package kpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"crkvol/crk"
)

// Batch calls: crkvol extensions beside Key Protect's API, under the crkvol prefix of
// [LifecyclePath], for clients that rewrap or re-register many resources of one key at once
// (a fleet rotation). Each is one call of the service, so one commit of its store, audit
// events included, where the same work through Key Protect's single calls makes one commit
// per item. They are authorised, resolve {id} (a key id or an alias, in the ring of the
// x-kms-key-ring header), apply the allowedNetwork policy and decode their bodies strictly
// (unknown members refused too), as every other route.
//
//	POST  /api/crkvol/v1/keys/{id}/rewrap
//	  {"items":[{"ciphertext":"<base64>","aad":["..."]}, ...]}
//	200 {"items":[{"ciphertext":"<base64>","keyVersion":{"id":"<old>"},
//	                "rewrappedKeyVersion":{"id":"<latest>"}},
//	               {"error":{"status":422,"errorMsg":"...","reasons":[{...,"crkvolError":"auth"}]}}, ...]}
//
//	PATCH /api/crkvol/v1/keys/{id}/registrations
//	  {"items":[{"resourceCrn":"crn:v1:...","keyVersion":{"id":"<version>"}}, ...]}
//	200 {"items":[{"resourceCrn":"crn:v1:..."},
//	               {"resourceCrn":"crn:v1:...","error":{"status":404,...}}, ...]}
//
// The answer's items are in the order of the request's. An item is either its result — for
// a rewrap the members of Key Protect's rewrap action answer — or "error": the one resource
// of the error envelope the single call would have answered for it ([ErrorResource]: reason
// code, message, crkvolError id), with that answer's HTTP status. A registration moves to
// its keyVersion unless it is on a newer version already (never back, as the single PATCH).
//
// A request is refused as a whole, with the error envelope as a single call would be
// answered, when its key is unknown or in a state that refuses the operation (disabled,
// destroyed: every item is refused, audited by one event that counts them), or when the body is malformed:
// 400 for a body that is not JSON of this shape, no items or more than [MaxBatchItems], an
// item without its ciphertext (or resourceCrn, or keyVersion id), a ciphertext that is not
// base64, a null inside aad; 413 for a body over [MaxBatchBody]. Every item is audited by
// its own event, as its single call would be.
//
// Every answer of these routes, success or error, carries the header [BatchHeader]: a 404 or
// 405 without it comes from a service that has no such route (a Key Protect), and a client
// falls back to the single calls (crkvol's does, remembering it); with it, a 404 is the
// refusal of the key (KEY_NOT_FOUND_ERR).
const (
	// BatchHeader is the response header of every answer of the batch routes, "1".
	BatchHeader = "Crkvol-Batch"
	// RewrapBatchPattern is the route of the batch rewrap.
	RewrapBatchPattern = "POST /api/crkvol/v1/keys/{id}/rewrap"
	// RegistrationsBatchPattern is the route of the batch registration update.
	RegistrationsBatchPattern = "PATCH /api/crkvol/v1/keys/{id}/registrations"
	// MaxBatchItems is the most items a batch request holds: crk's limit of one call.
	MaxBatchItems = crk.MaxBatchItems
	// MaxBatchBody caps the body of a batch request (the other routes have [MaxBody]).
	MaxBatchBody = 4 << 20
)

// BatchPath returns the path of a batch call on key id: op is "rewrap" or "registrations".
func BatchPath(id, op string) string {
	return "/api/crkvol/v1/keys/" + url.PathEscape(id) + "/" + op
}

// RewrapBatchRequest is the body of a batch rewrap.
type RewrapBatchRequest struct {
	Items []RewrapBatchItem `json:"items"`
}

// RewrapBatchItem is one ciphertext of a batch rewrap, as Key Protect's rewrap action takes
// it: base64, with the AAD it was wrapped with.
type RewrapBatchItem struct {
	Ciphertext string   `json:"ciphertext"`
	AAD        []string `json:"aad,omitempty"`
}

// RewrapBatchAnswer is the answer of a batch rewrap.
type RewrapBatchAnswer struct {
	Items []RewrapBatchResult `json:"items"`
}

// RewrapBatchResult is one item of a batch rewrap's answer: Key Protect's rewrap answer
// members, or Error.
type RewrapBatchResult struct {
	Ciphertext string `json:"ciphertext,omitempty"`
	// KeyVersion is the version that made the item's ciphertext; RewrappedKeyVersion the
	// (latest) version of the new one.
	KeyVersion          *KeyVersion     `json:"keyVersion,omitempty"`
	RewrappedKeyVersion *KeyVersion     `json:"rewrappedKeyVersion,omitempty"`
	Error               *BatchItemError `json:"error,omitempty"`
}

// RegistrationsBatchRequest is the body of a batch registration update.
type RegistrationsBatchRequest struct {
	Items []RegistrationBatchItem `json:"items"`
}

// RegistrationBatchItem moves the registration of ResourceCRN to KeyVersion.
type RegistrationBatchItem struct {
	ResourceCRN string     `json:"resourceCrn"`
	KeyVersion  KeyVersion `json:"keyVersion"`
}

// RegistrationsBatchAnswer is the answer of a batch registration update.
type RegistrationsBatchAnswer struct {
	Items []RegistrationBatchResult `json:"items"`
}

// RegistrationBatchResult is one item of a batch registration update's answer.
type RegistrationBatchResult struct {
	ResourceCRN string          `json:"resourceCrn"`
	Error       *BatchItemError `json:"error,omitempty"`
}

// BatchItemError is the refusal of one item of a batch: the resource of the error envelope
// ([ErrorBody]) the item's single call would have been answered, and that answer's status.
type BatchItemError struct {
	Status int `json:"status"`
	ErrorResource
}

// Err returns the item's error as a client sees it: the [ResponseError] [ParseError] makes of
// the single call's answer, wrapping the same crk sentinel.
func (e *BatchItemError) Err() *ResponseError {
	body, err := json.Marshal(ErrorBody{Resources: []ErrorResource{e.ErrorResource}})
	if err != nil { // cannot happen: strings and numbers only
		return &ResponseError{Status: e.Status, Message: http.StatusText(e.Status)}
	}
	return ParseError(e.Status, body)
}

// itemError is the BatchItemError of err, as writeError would answer it.
func itemError(err error) *BatchItemError {
	ae := statusOf(err)
	reason := ErrorReason{Code: ae.code, Message: ae.msg, Status: ae.status, MoreInfo: moreInfo, CrkvolError: ae.id}
	if ae.target != "" {
		reason.Target = &ErrorTarget{Type: "field", Name: ae.target}
	}
	text := http.StatusText(ae.status)
	return &BatchItemError{Status: ae.status, ErrorResource: ErrorResource{
		ErrorMsg: text + ": " + strings.TrimPrefix(ae.msg, text+": "),
		Reasons:  []ErrorReason{reason},
	}}
}

// batchRoute serves a batch route: serveAPI, with BatchHeader set on every answer.
func (s *Server) batchRoute(h func(*request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(BatchHeader, "1")
		s.serveAPI(w, r, h)
	}
}

// bodyLimit is the body cap of a request: MaxBatchBody on the batch routes, MaxBody on the
// others.
func bodyLimit(r *http.Request) int64 {
	if r.Pattern == RewrapBatchPattern || r.Pattern == RegistrationsBatchPattern {
		return MaxBatchBody
	}
	return MaxBody
}

// decodeBatch decodes a batch body strictly into v (decodeKnown's rules: no duplicate
// member, no unknown member, types checked, nothing after the value) and refuses an empty
// body.
func decodeBatch(raw []byte, v any) error {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return badRequest("BAD_BODY_ERR", "the request needs a body with items", "items")
	}
	return decodeJSON(t, v, true)
}

// batchSize refuses a batch of n items outside 1..MaxBatchItems.
func batchSize(n int) error {
	if n < 1 || n > MaxBatchItems {
		return badRequest("BAD_BODY_ERR", fmt.Sprintf("items must hold 1 to %d items, not %d", MaxBatchItems, n), "items")
	}
	return nil
}

// rewrapBatchBody is RewrapBatchRequest as the server reads it: a missing ciphertext told from
// an empty one, null refused inside aad.
type rewrapBatchBody struct {
	Items []struct {
		Ciphertext *string `json:"ciphertext"`
		AAD        aadList `json:"aad"`
	} `json:"items"`
}

// parseRewrapBatch reads the body of a batch rewrap.
func parseRewrapBatch(raw []byte) ([]crk.RewrapItem, error) {
	var body rewrapBatchBody
	if err := decodeBatch(raw, &body); err != nil {
		return nil, err
	}
	if err := batchSize(len(body.Items)); err != nil {
		return nil, err
	}
	items := make([]crk.RewrapItem, len(body.Items))
	for i, it := range body.Items {
		field := fmt.Sprintf("items[%d].ciphertext", i)
		if it.Ciphertext == nil || *it.Ciphertext == "" {
			return nil, badRequest("BAD_BODY_ERR", field+" is required", field)
		}
		ct, err := base64.StdEncoding.DecodeString(*it.Ciphertext)
		if err != nil {
			return nil, badRequest("INVALID_FIELD_ERR", fmt.Sprintf("the field %q must be a base64 encoded string", field), field)
		}
		items[i] = crk.RewrapItem{Ciphertext: ct, AAD: it.AAD}
	}
	return items, nil
}

// registrationsBatchBody is RegistrationsBatchRequest as the server reads it.
type registrationsBatchBody struct {
	Items []struct {
		ResourceCRN *string `json:"resourceCrn"`
		KeyVersion  *struct {
			ID string `json:"id"`
			// CreationDate is accepted, as the single PATCH accepts the whole KeyVersion
			// (a client may echo a rewrap answer's keyVersion), and ignored.
			CreationDate string `json:"creationDate"`
		} `json:"keyVersion"`
	} `json:"items"`
}

// parseRegistrationsBatch reads the body of a batch registration update.
func parseRegistrationsBatch(raw []byte) ([]crk.RegistrationVersion, error) {
	var body registrationsBatchBody
	if err := decodeBatch(raw, &body); err != nil {
		return nil, err
	}
	if err := batchSize(len(body.Items)); err != nil {
		return nil, err
	}
	updates := make([]crk.RegistrationVersion, len(body.Items))
	for i, it := range body.Items {
		if it.ResourceCRN == nil || *it.ResourceCRN == "" {
			field := fmt.Sprintf("items[%d].resourceCrn", i)
			return nil, badRequest("BAD_BODY_ERR", field+" is required", field)
		}
		if it.KeyVersion == nil || it.KeyVersion.ID == "" {
			field := fmt.Sprintf("items[%d].keyVersion.id", i)
			return nil, badRequest("BAD_BODY_ERR", field+" is required", field)
		}
		updates[i] = crk.RegistrationVersion{CRN: *it.ResourceCRN, VersionID: it.KeyVersion.ID}
	}
	return updates, nil
}

// rewrapBatch serves RewrapBatchPattern: one crk.Service.RewrapBatch.
func (s *Server) rewrapBatch(q *request) error {
	raw, err := readBody(q.r)
	if err != nil {
		return err
	}
	items, err := parseRewrapBatch(raw)
	if err != nil {
		return err
	}
	res, errs, err := q.svc.RewrapBatch(q.ctx, q.id, items)
	if err != nil {
		return err
	}
	out := RewrapBatchAnswer{Items: make([]RewrapBatchResult, len(items))}
	for i := range items {
		if errs[i] != nil {
			out.Items[i].Error = itemError(errs[i])
			continue
		}
		out.Items[i] = RewrapBatchResult{
			Ciphertext: base64.StdEncoding.EncodeToString(res[i].Ciphertext),
			KeyVersion: version(res[i].OldVersion), RewrappedKeyVersion: version(res[i].KeyVersion),
		}
	}
	writeJSON(q.w, http.StatusOK, out)
	return nil
}

// registrationsBatch serves RegistrationsBatchPattern: one
// crk.Service.UpdateRegistrationVersions.
func (s *Server) registrationsBatch(q *request) error {
	raw, err := readBody(q.r)
	if err != nil {
		return err
	}
	updates, err := parseRegistrationsBatch(raw)
	if err != nil {
		return err
	}
	errs, err := q.svc.UpdateRegistrationVersions(q.ctx, q.id, updates)
	if err != nil {
		return err
	}
	out := RegistrationsBatchAnswer{Items: make([]RegistrationBatchResult, len(updates))}
	for i, u := range updates {
		out.Items[i].ResourceCRN = u.CRN
		if errs[i] != nil {
			out.Items[i].Error = itemError(errs[i])
		}
	}
	writeJSON(q.w, http.StatusOK, out)
	return nil
}
