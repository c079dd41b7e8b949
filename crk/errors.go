package crk

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the service returns for a refused request wraps one of these,
// with context; test for them with errors.Is. [Errors] is the table that says, for each, whether
// it is a refusal (the caller's request cannot be served: HTTP 4xx) or an internal failure (5xx),
// and how the Key Protect API reports it; [IsUserError] and [LookupError] read it.
var (
	// ErrKeyNotFound: no key with that id.
	ErrKeyNotFound = errors.New("key does not exist")
	// ErrNotRootKey: the action needs a root key (wrap, unwrap, rotate, policies, ...).
	ErrNotRootKey = errors.New("requested action can only be completed with a root key")
	// ErrInvalidMaterial: imported key material is not 128, 192 or 256 bits of base64.
	ErrInvalidMaterial = errors.New("invalid key material")
	// ErrMaterialRequired: an imported key is rotated without new material.
	ErrMaterialRequired = errors.New("key material is required to rotate an imported key")
	// ErrMaterialNotAllowed: a generated key is rotated with material.
	ErrMaterialNotAllowed = errors.New("key material must be provided only if the key is imported")
	// ErrRotationTooSoon: a second rotation within an hour.
	ErrRotationTooSoon = errors.New("this root key has been rotated within the last hour: only one rotate action per hour is permitted")
	// ErrInvalidPolicy: a rotation interval outside 1 to 12 months.
	ErrInvalidPolicy = errors.New("the rotation interval must be an integer between 1 and 12 months")
	// ErrPolicyNotAllowed: rotation policies are for generated root keys only.
	ErrPolicyNotAllowed = errors.New("rotation policies can only be set on generated root keys")
	// ErrKeySuspended: the key is disabled (suspended).
	ErrKeySuspended = errors.New("key is suspended")
	// ErrKeyDeactivated: the key has expired and only unwraps.
	ErrKeyDeactivated = errors.New("key is deactivated")
	// ErrKeyDestroyed: the key is deleted; it may be restorable.
	ErrKeyDestroyed = errors.New("key has been deleted and is no longer available")
	// ErrKeyPurged: the key's material has been destroyed for good.
	ErrKeyPurged = errors.New("key material has been purged")
	// ErrInvalidState: the action is not allowed in the key's current state.
	ErrInvalidState = errors.New("key is not in a valid state for this action")
	// ErrTooEarly: the action comes too soon after the previous one (enable or restore
	// within 30 s, sync within an hour, purge within 4 hours of the deletion).
	ErrTooEarly = errors.New("request too early")
	// ErrRestoreExpired: the 30-day restore window has passed.
	ErrRestoreExpired = errors.New("the key can no longer be restored")
	// ErrProtectedResource: delete without force while registrations exist.
	ErrProtectedResource = errors.New("key is protecting one or more cloud resources")
	// ErrPreventKeyDeletion: a registration with preventKeyDeletion blocks even a forced
	// delete.
	ErrPreventKeyDeletion = errors.New("a registration with preventKeyDeletion blocks deleting the key")
	// ErrAuth: a ciphertext is corrupt, was made under another key, or the AAD differs.
	ErrAuth = errors.New("the provided ciphertext is invalid or corrupted")
	// ErrVersionNotFound: the ciphertext or request names a version this key never had.
	ErrVersionNotFound = errors.New("key version does not exist")
	// ErrVersionDestroyed: the version's material has been pruned.
	ErrVersionDestroyed = errors.New("key version material has been destroyed")
	// ErrVersionInUse: pruning a version that registrations still reference.
	ErrVersionInUse = errors.New("key version is referenced by registrations")
	// ErrRegistrationNotFound: no registration for that key and resource.
	ErrRegistrationNotFound = errors.New("registration does not exist")
	// ErrRegistrationExists: the resource is already registered with the key.
	ErrRegistrationExists = errors.New("registration already exists")
	// ErrInvalidArgument: a malformed request (empty name, bad CRN, oversized DEK, ...).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrInvalidQuery: a key listing's search, filter or sort query is malformed.
	ErrInvalidQuery = errors.New("invalid query parameter")
	// ErrMasterKey: the service master key does not open the store, or there is no usable
	// one (no key file for an existing store, a key of the wrong size, a key file others can
	// read); the error's text says which.
	ErrMasterKey = errors.New("service master key does not match the store")
	// ErrAudit: an audit event could not be stored. The operation it records did not take
	// effect: a state change is committed in the same transaction as its event, and a read or
	// a wrap returns nothing. It is an internal failure, not a refusal of the request.
	ErrAudit = errors.New("audit event could not be stored")
	// ErrResyncNeeded is the answer to a feed cursor the feed cannot continue from: events after
	// it were deleted by the feed's retention, or the cursor is ahead of the feed's head (it was
	// made by another store, or the store was restored from an older copy). The follower must
	// reconcile every resource against the keys' current state, then follow the feed from its
	// head (an empty cursor).
	ErrResyncNeeded = errors.New("lifecycle feed cursor is outside the retained events: resync needed")
	// ErrUnavailable: the store could not be reached (a PostgreSQL database down or cut off,
	// even after retries), or a commit's outcome is unknown (the connection broke after it
	// was sent: the change may or may not have happened). It is a failure of the service,
	// not a refusal; the request may succeed when tried again.
	ErrUnavailable = errors.New("the key service's store is unavailable")
	// ErrImportTokenNotFound: the instance has no import token.
	ErrImportTokenNotFound = errors.New("the instance has no import token")
	// ErrImportTokenExpired: the import token's expiration date has passed.
	ErrImportTokenExpired = errors.New("the import token has expired")
	// ErrImportTokenUsedUp: the import token has no retrieval left.
	ErrImportTokenUsedUp = errors.New("the import token has reached its maximum number of retrievals")
	// ErrIncorrectNonce: an import's encrypted nonce is not the import token's nonce.
	ErrIncorrectNonce = errors.New("the encrypted nonce given does not match the import token's nonce")
	// ErrNonceIV: an import's encrypted nonce does not open under the imported material and
	// the given IV.
	ErrNonceIV = errors.New("the encrypted nonce was not encrypted with the key material given, or the IV does not match it")
	// ErrEncryptionAlgorithm: an import names an encryption algorithm the service does not
	// know.
	ErrEncryptionAlgorithm = errors.New("unsupported encryption algorithm")
	// ErrCreateImportAccess: the keyCreateImportAccess instance policy does not allow the
	// creation, import or import token asked for.
	ErrCreateImportAccess = errors.New("keyCreateImportAccess instance policy does not allow this action")
	// ErrNetworkNotAllowed: the allowedNetwork instance policy (private-only) refuses a
	// request from a public address.
	ErrNetworkNotAllowed = errors.New("requested change is not compliant with configuration rules")
	// ErrDualAuthNotMet: deleting a key with a dual authorization policy needs a prior,
	// unexpired setKeyForDeletion by another principal.
	ErrDualAuthNotMet = errors.New("number of authorizations required to delete is not met")
	// ErrNotDualAuth: setKeyForDeletion or unsetKeyForDeletion on a key without a dual
	// authorization policy.
	ErrNotDualAuth = errors.New("the key is not dual auth enabled and cannot be set for deletion")

	// ErrInvalidAlias: an alias that breaks Key Protect's rules (2 to 90 letters, digits,
	// dashes and underscores; not shaped like a UUID; not a reserved word).
	ErrInvalidAlias = errors.New("invalid key alias")
	// ErrAliasNotUnique: the alias names another key of the instance, or this one already.
	ErrAliasNotUnique = errors.New("the alias is already in use in this instance")
	// ErrAliasQuota: a key has at most five aliases.
	ErrAliasQuota = errors.New("a key can have at most 5 aliases")
	// ErrAliasNotFound: the key has no such alias.
	ErrAliasNotFound = errors.New("the key has no such alias")
	// ErrInvalidKeyRing: a key ring id that breaks Key Protect's rules (2 to 100 letters,
	// digits and dashes), or an action the default key ring does not allow.
	ErrInvalidKeyRing = errors.New("invalid key ring")
	// ErrKeyRingNotFound: the instance has no key ring with that id.
	ErrKeyRingNotFound = errors.New("key ring does not exist")
	// ErrKeyRingExists: a key ring with that id exists already.
	ErrKeyRingExists = errors.New("key ring already exists")
	// ErrKeyRingNotEmpty: deleting a key ring that holds keys (any that is not deleted, or
	// deleted ones without force).
	ErrKeyRingNotEmpty = errors.New("key ring is not empty")
	// ErrKeyRingQuota: an instance has at most 50 key rings besides the default one.
	ErrKeyRingQuota = errors.New("an instance can have at most 50 key rings")
)

// Class says what an error means for the caller: a refusal of the request or a failure of the
// service.
type Class int

// The classes of [ErrorInfo].
const (
	// Refusal: the request cannot be served as asked (4xx in HTTP terms); trying it again
	// unchanged gets the same answer.
	Refusal Class = iota + 1
	// Failure: the service could not run the request (5xx); it may succeed later.
	Failure
)

// String returns "refusal" or "failure".
func (c Class) String() string {
	switch c {
	case Refusal:
		return "refusal"
	case Failure:
		return "failure"
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// ErrorInfo is one row of the error table: what a sentinel means and how the Key Protect API
// reports it. Package crkvol/crk/kpapi derives its HTTP responses and its client-side mapping
// from these rows; the core itself never imports net/http, so the status is a plain int.
type ErrorInfo struct {
	// Err is the sentinel.
	Err error
	// ID is a stable identifier of the sentinel, unique in the table. It travels in the error
	// envelope beside Code, so that a client can tell apart sentinels that share a reason code
	// (suspended and deactivated are both KEY_ACTION_INVALID_STATE_ERR). Never change one.
	ID string
	// Class tells a refusal from a failure.
	Class Class
	// Status is the HTTP status code of the response.
	Status int
	// Code is the Key Protect reason code.
	Code string
	// Target is the request field the reason names ("payload", "ciphertext"), or "".
	Target string
}

// errorTable is the one list of the sentinels, their class, HTTP status and reason code. A
// sentinel without a row here is a bug (a test parses this file to check).
func errorTable() []ErrorInfo {
	const (
		badRequest  = 400
		forbidden   = 403
		notFound    = 404
		conflict    = 409
		gone        = 410
		unprocessed = 422
		internal    = 500
		unavailable = 503
	)
	return []ErrorInfo{
		{ErrKeyNotFound, "key_not_found", Refusal, notFound, "KEY_NOT_FOUND_ERR", ""},
		{ErrNotRootKey, "not_root_key", Refusal, badRequest, "KEY_ROOT_REQ_ERR", ""},
		{ErrInvalidMaterial, "invalid_material", Refusal, badRequest, "INVALID_FIELD_ERR", "payload"},
		{ErrMaterialRequired, "material_required", Refusal, badRequest, "KEY_PAYLOAD_REQ_ERR", "payload"},
		{ErrMaterialNotAllowed, "material_not_allowed", Refusal, badRequest, "INVALID_QUERY_PARAM_ERR", "payload"},
		{ErrRotationTooSoon, "rotation_too_soon", Refusal, conflict, "KEY_ROTATION_NOT_PERMITTED", ""},
		{ErrInvalidPolicy, "invalid_policy", Refusal, badRequest, "INVALID_FIELD_ERR", "interval_month"},
		{ErrPolicyNotAllowed, "policy_not_allowed", Refusal, badRequest, "KEY_IMPORTED_ROTATION_POLICY_ERR", "rotation"},
		{ErrKeySuspended, "key_suspended", Refusal, conflict, "KEY_ACTION_INVALID_STATE_ERR", ""},
		{ErrKeyDeactivated, "key_deactivated", Refusal, conflict, "KEY_ACTION_INVALID_STATE_ERR", ""},
		{ErrKeyDestroyed, "key_destroyed", Refusal, gone, "KEY_DELETED_ERR", ""},
		{ErrKeyPurged, "key_purged", Refusal, gone, "KEY_DELETED_ERR", ""},
		{ErrInvalidState, "invalid_state", Refusal, conflict, "KEY_ACTION_INVALID_STATE_ERR", ""},
		{ErrTooEarly, "too_early", Refusal, conflict, "REQ_TOO_EARLY_ERR", ""},
		{ErrRestoreExpired, "restore_expired", Refusal, conflict, "KEY_RESTORE_EXPIRED_ERR", ""},
		{ErrProtectedResource, "protected_resource", Refusal, conflict, "PROTECTED_RESOURCE_ERR", ""},
		{ErrPreventKeyDeletion, "prevent_key_deletion", Refusal, conflict, "PREV_KEY_DEL_ERR", ""},
		{ErrAuth, "ciphertext_invalid", Refusal, unprocessed, "UNPROCESSABLE_CIPHERTEXT_ERR", "ciphertext"},
		{ErrVersionNotFound, "version_not_found", Refusal, notFound, "NOT_FOUND_ERR", ""},
		{ErrVersionDestroyed, "version_destroyed", Refusal, gone, "KEY_VERSION_DELETED_ERR", ""},
		{ErrVersionInUse, "version_in_use", Refusal, conflict, "KEY_VERSION_IN_USE_ERR", ""},
		{ErrRegistrationNotFound, "registration_not_found", Refusal, notFound, "NOT_FOUND_ERR", ""},
		{ErrRegistrationExists, "registration_exists", Refusal, conflict, "CONFLICT_ERR", ""},
		{ErrInvalidArgument, "invalid_argument", Refusal, badRequest, "INVALID_FIELD_ERR", ""},
		{ErrInvalidQuery, "invalid_query", Refusal, badRequest, "INVALID_QUERY_PARAM_ERR", ""},
		{ErrMasterKey, "master_key", Failure, internal, "INTERNAL_SERVER_ERR", ""},
		{ErrAudit, "audit", Failure, internal, "INTERNAL_SERVER_ERR", ""},
		{ErrResyncNeeded, "resync_needed", Refusal, gone, "FEED_RESYNC_REQUIRED_ERR", "cursor"},
		{ErrUnavailable, "unavailable", Failure, unavailable, "SERVICE_UNAVAILABLE_ERR", ""},
		{ErrImportTokenNotFound, "import_token_not_found", Refusal, notFound, "NOT_FOUND_ERR", ""},
		{ErrImportTokenExpired, "import_token_expired", Refusal, conflict, "IMPORT_TOKEN_EXPIRED_ERR", ""},
		{ErrImportTokenUsedUp, "import_token_used_up", Refusal, conflict, "IMPORT_TOKEN_EXPIRED_ERR", ""},
		{ErrIncorrectNonce, "incorrect_nonce", Refusal, badRequest, "INCORRECT_NONCE_ERR", "encryptedNonce"},
		{ErrNonceIV, "incorrect_nonce_iv", Refusal, badRequest, "INCORRECT_NONCE_IV_ERR", "iv"},
		{ErrEncryptionAlgorithm, "encryption_algorithm", Refusal, badRequest, "INVALID_FIELD_ERR", "encryptionAlgorithm"},
		{ErrCreateImportAccess, "create_import_access", Refusal, conflict, "KEY_CREATE_IMPORT_ACCESS_ERR", ""},
		{ErrNetworkNotAllowed, "network_not_allowed", Refusal, forbidden, "CONFIG_RULE_CONFLICT_ERR", ""},
		{ErrDualAuthNotMet, "dual_auth_not_met", Refusal, conflict, "AUTHORIZATIONS_NOT_MET", ""},
		{ErrNotDualAuth, "not_dual_auth", Refusal, conflict, "NOT_DUAL_AUTH_ERR", ""},
		{ErrInvalidAlias, "invalid_alias", Refusal, badRequest, "INVALID_FIELD_ERR", "alias"},
		{ErrAliasNotUnique, "alias_not_unique", Refusal, conflict, "KEY_ALIAS_NOT_UNIQUE_ERR", "alias"},
		{ErrAliasQuota, "alias_quota", Refusal, badRequest, "KEY_ALIAS_QUOTA_ERR", "alias"},
		{ErrAliasNotFound, "alias_not_found", Refusal, notFound, "KEY_ALIAS_NOT_FOUND_ERR", "alias"},
		{ErrInvalidKeyRing, "invalid_key_ring", Refusal, badRequest, "INVALID_FIELD_ERR", "keyRingID"},
		{ErrKeyRingNotFound, "key_ring_not_found", Refusal, notFound, "KEY_RING_NOT_FOUND_ERR", "keyRingID"},
		{ErrKeyRingExists, "key_ring_exists", Refusal, conflict, "KEY_RING_ALREADY_EXISTS_ERR", "keyRingID"},
		{ErrKeyRingNotEmpty, "key_ring_not_empty", Refusal, conflict, "KEY_RING_NOT_EMPTY_ERR", "keyRingID"},
		{ErrKeyRingQuota, "key_ring_quota", Refusal, badRequest, "KEY_RING_QUOTA_ERR", "keyRingID"},
	}
}

// Errors returns the error table: one row per sentinel of this package, in the order of their
// declaration. The slice is the caller's to keep.
func Errors() []ErrorInfo { return errorTable() }

// LookupError returns the row of the sentinel err wraps. When err wraps several sentinels
// (an unauthentic ciphertext that names an unknown version is both [ErrAuth] and
// [ErrVersionNotFound]) the first one met in the error tree, walked depth first as
// errors.Is does, decides: the order in which the error was built, not the table's.
func LookupError(err error) (ErrorInfo, bool) {
	table := errorTable()
	if info, ok := lookupTree(table, err); ok {
		return info, true
	}
	// An error with its own Is method can match a sentinel that is not in its tree.
	for _, info := range table {
		if errors.Is(err, info.Err) {
			return info, true
		}
	}
	return ErrorInfo{}, false
}

func lookupTree(table []ErrorInfo, err error) (ErrorInfo, bool) {
	for err != nil {
		for _, info := range table {
			if err == info.Err {
				return info, true
			}
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if info, ok := lookupTree(table, e); ok {
					return info, true
				}
			}
			return ErrorInfo{}, false
		default:
			return ErrorInfo{}, false
		}
	}
	return ErrorInfo{}, false
}

// ErrorByID returns the row with the given [ErrorInfo.ID].
func ErrorByID(id string) (ErrorInfo, bool) {
	for _, info := range errorTable() {
		if info.ID == id {
			return info, true
		}
	}
	return ErrorInfo{}, false
}

// IsUserError reports whether err is a refusal of the request (a 4xx in HTTP terms) rather
// than an internal failure.
func IsUserError(err error) bool {
	info, ok := LookupError(err)
	return ok && info.Class == Refusal
}
