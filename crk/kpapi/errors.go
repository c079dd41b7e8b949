package kpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"crkvol/crk"
)

// apiError is a refusal with its HTTP status, Key Protect reason code and target field.
type apiError struct {
	status int
	code   string
	msg    string
	target string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(code, msg, target string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, msg: msg, target: target}
}

// statusOf maps a service error to its status and reason code: the one place where crk's
// sentinels meet HTTP.
func statusOf(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	msg := err.Error()
	for _, m := range []struct {
		err    error
		status int
		code   string
		target string
	}{
		{crk.ErrKeyNotFound, http.StatusNotFound, "KEY_NOT_FOUND_ERR", ""},
		{crk.ErrRegistrationNotFound, http.StatusNotFound, "NOT_FOUND_ERR", ""},
		{crk.ErrKeyPurged, http.StatusGone, "KEY_DELETED_ERR", ""},
		{crk.ErrKeyDestroyed, http.StatusGone, "KEY_DELETED_ERR", ""},
		{crk.ErrVersionDestroyed, http.StatusGone, "KEY_VERSION_DELETED_ERR", ""},
		{crk.ErrRotationTooSoon, http.StatusConflict, "KEY_ROTATION_NOT_PERMITTED", ""},
		{crk.ErrMaterialRequired, http.StatusBadRequest, "KEY_PAYLOAD_REQ_ERR", "payload"},
		{crk.ErrMaterialNotAllowed, http.StatusBadRequest, "INVALID_QUERY_PARAM_ERR", "payload"},
		{crk.ErrInvalidMaterial, http.StatusBadRequest, "INVALID_FIELD_ERR", "payload"},
		{crk.ErrNotRootKey, http.StatusBadRequest, "KEY_ROOT_REQ_ERR", ""},
		{crk.ErrPolicyNotAllowed, http.StatusBadRequest, "KEY_IMPORTED_ROTATION_POLICY_ERR", "rotation"},
		{crk.ErrInvalidPolicy, http.StatusBadRequest, "INVALID_FIELD_ERR", "interval_month"},
		{crk.ErrKeySuspended, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR", ""},
		{crk.ErrKeyDeactivated, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR", ""},
		{crk.ErrInvalidState, http.StatusConflict, "KEY_ACTION_INVALID_STATE_ERR", ""},
		{crk.ErrTooEarly, http.StatusConflict, "REQ_TOO_EARLY_ERR", ""},
		{crk.ErrRestoreExpired, http.StatusConflict, "KEY_RESTORE_EXPIRED_ERR", ""},
		{crk.ErrProtectedResource, http.StatusConflict, "PROTECTED_RESOURCE_ERR", ""},
		{crk.ErrPreventKeyDeletion, http.StatusConflict, "PREV_KEY_DEL_ERR", ""},
		{crk.ErrAuth, http.StatusUnprocessableEntity, "UNPROCESSABLE_CIPHERTEXT_ERR", "ciphertext"},
		{crk.ErrVersionNotFound, http.StatusNotFound, "NOT_FOUND_ERR", ""},
		{crk.ErrVersionInUse, http.StatusConflict, "KEY_VERSION_IN_USE_ERR", ""},
		{crk.ErrRegistrationExists, http.StatusConflict, "CONFLICT_ERR", ""},
		{crk.ErrInvalidArgument, http.StatusBadRequest, "INVALID_FIELD_ERR", ""},
	} {
		if errors.Is(err, m.err) {
			return &apiError{status: m.status, code: m.code, msg: msg, target: m.target}
		}
	}
	return &apiError{status: http.StatusInternalServerError, code: "INTERNAL_SERVER_ERR", msg: "internal error"}
}

// writeError writes the Key Protect error envelope.
func writeError(w http.ResponseWriter, err error) {
	ae := statusOf(err)
	reason := map[string]any{
		"code": ae.code, "message": ae.msg, "status": ae.status,
		"moreInfo": "https://cloud.ibm.com/apidocs/key-protect",
	}
	if ae.target != "" {
		reason["target"] = map[string]string{"type": "field", "name": ae.target}
	}
	body := map[string]any{
		"metadata":  Metadata{CollectionType: TypeError, CollectionTotal: 1},
		"resources": []any{map[string]any{"errorMsg": http.StatusText(ae.status) + ": " + strings.TrimPrefix(ae.msg, http.StatusText(ae.status)+": "), "reasons": []any{reason}}},
	}
	writeJSON(w, ae.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
