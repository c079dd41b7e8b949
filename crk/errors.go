package crk

import "errors"

// Sentinel errors. Every error the service returns for a refused request wraps one of these,
// with context; test for them with errors.Is. [IsUserError] tells refusals (the caller's
// request cannot be served: HTTP 4xx) from internal failures (5xx).
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
	// within 30 s, sync within an hour, purge before 30 days).
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
	// ErrMasterKey: the service master key does not open the store.
	ErrMasterKey = errors.New("service master key does not match the store")
)

// userErrors are the sentinels that mean the request was refused, not that the service
// failed.
var userErrors = []error{
	ErrKeyNotFound, ErrNotRootKey, ErrInvalidMaterial, ErrMaterialRequired, ErrMaterialNotAllowed,
	ErrRotationTooSoon, ErrInvalidPolicy, ErrPolicyNotAllowed, ErrKeySuspended, ErrKeyDeactivated,
	ErrKeyDestroyed, ErrKeyPurged, ErrInvalidState, ErrTooEarly, ErrRestoreExpired,
	ErrProtectedResource, ErrPreventKeyDeletion, ErrAuth, ErrVersionNotFound, ErrVersionDestroyed,
	ErrVersionInUse, ErrRegistrationNotFound, ErrRegistrationExists, ErrInvalidArgument,
}

// IsUserError reports whether err is a refusal of the request (a 4xx in HTTP terms) rather
// than an internal failure.
func IsUserError(err error) bool {
	for _, u := range userErrors {
		if errors.Is(err, u) {
			return true
		}
	}
	return false
}
