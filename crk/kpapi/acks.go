package kpapi

import (
	"net/http"

	"crkvol/crk"
)

// AcksPath is the path of an instance's host acknowledgements ([crk.Service.Acknowledge],
// [crk.Service.HostAcks]), beside [LifecyclePath] under crkvol's own prefix:
//
//	POST   /api/crkvol/v1/acks
//	GET    /api/crkvol/v1/acks?keyId=K
//	DELETE /api/crkvol/v1/acks?keyId=K&host=H
//
// Requests are authorised as every other API request: a bearer token and a bluemix-instance
// header naming the instance.
//
// POST records what a host did for a root key's lifecycle event (or found by a
// reconciliation), replacing the host's previous acknowledgement of that key. Its body is one
// JSON object ([AckBody]); a member the object does not define, a member given twice or a
// value of the wrong type is refused with 400 BAD_BODY_ERR:
//
//	{"host":"web-1","keyId":"…","type":"disable","state":"suspended",
//	 "version":"…","volumes":3,"stopped":1,"cursor":"7"}
//
// host is 1 to 253 bytes of letters, digits and . _ - :; type is a lifecycle type (rotate,
// disable, enable, delete, restore, purge, sync); state the key state the host now enforces
// (active, suspended, deactivated, destroyed), consistent with type ([crk.Service.Acknowledge]);
// version, optional, the key version the host's volumes are on; volumes, 0 to the key's
// number of registrations, the host's registered volumes of the key that state now applies
// to; stopped, 0 to volumes, the attach processes the host's agent told to stop for a
// lockout; cursor, optional, the feed cursor of the event acted on ("" or absent for a
// reconciliation). The reporter of the acknowledgement is the request's API key
// ("kpapi:<API key id>"), never taken from the body. The answer is 204 with no body. A
// malformed or contradictory field is 400 (the reason names it), an unknown key 404, a
// standard key 400 and a purged key 410, in the error envelope of every other request.
//
// GET answers 200 with the latest acknowledgement of each host, sorted by host name:
//
//	{"acks":[{"host":"web-1","keyId":"…","type":"disable","state":"suspended",
//	  "volumes":3,"stopped":1,"cursor":"7","reporter":"kpapi:0123456789abcdef",
//	  "time":"2026-06-01T12:00:05Z"}]}
//
// acks is never null. keyId is required, once; an unknown key is 404.
//
// DELETE forgets host H's acknowledgement of key K ([crk.Service.ForgetHostAck]), freeing its
// place among the key's [crk.MaxHostAcksPerKey]: for a decommissioned host, or hosts a holder
// of one of the instance's API keys made up. It is audited, answers 204 with no body, and 204
// again for a host with no acknowledgement of the key. keyId and host are required, once
// each; a malformed host is 400, an unknown key 404, a purged key 410.
const AcksPath = "/api/crkvol/v1/acks"

// AckBody is the body of a POST to [AcksPath].
type AckBody struct {
	Host    string `json:"host"`
	KeyID   string `json:"keyId"`
	Type    string `json:"type"`
	State   string `json:"state"`
	Version string `json:"version,omitempty"`
	Volumes int    `json:"volumes"`
	Stopped int    `json:"stopped"`
	Cursor  string `json:"cursor,omitempty"`
}

// AcksAnswer is the answer of a GET of [AcksPath].
type AcksAnswer struct {
	Acks []crk.HostAck `json:"acks"`
}

// acknowledge answers a POST of [AcksPath].
func (s *Server) acknowledge(q *request) error {
	var body AckBody
	if err := decodeKnown(q.r, &body); err != nil {
		return err
	}
	err := q.svc.Acknowledge(q.ctx, crk.HostAck{Host: body.Host, KeyID: body.KeyID, Type: body.Type, State: body.State,
		Version: body.Version, Volumes: body.Volumes, Stopped: body.Stopped, Cursor: body.Cursor})
	if err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}

// hostAcks answers a GET of [AcksPath].
func (s *Server) hostAcks(q *request) error {
	v := q.r.URL.Query()
	if len(v["keyId"]) != 1 || v.Get("keyId") == "" {
		return badRequest("INVALID_QUERY_PARAM_ERR", "keyId must be given once: the id of the key whose acknowledgements to list", "keyId")
	}
	acks, err := q.svc.HostAcks(q.ctx, v.Get("keyId"))
	if err != nil {
		return err
	}
	writeJSON(q.w, http.StatusOK, AcksAnswer{Acks: acks})
	return nil
}

// forgetHostAck answers a DELETE of [AcksPath].
func (s *Server) forgetHostAck(q *request) error {
	v := q.r.URL.Query()
	if len(v["keyId"]) != 1 || v.Get("keyId") == "" {
		return badRequest("INVALID_QUERY_PARAM_ERR", "keyId must be given once: the id of the key whose acknowledgement to forget", "keyId")
	}
	if len(v["host"]) != 1 || v.Get("host") == "" {
		return badRequest("INVALID_QUERY_PARAM_ERR", "host must be given once: the host whose acknowledgement to forget", "host")
	}
	if err := q.svc.ForgetHostAck(q.ctx, v.Get("keyId"), v.Get("host")); err != nil {
		return err
	}
	q.w.WriteHeader(http.StatusNoContent)
	return nil
}
