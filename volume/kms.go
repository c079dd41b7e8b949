package volume

import (
	"context"
	"errors"
	"sync"
)

// ErrKeyRefused marks an error of a [KeyService] that is a refusal of the request (the key is
// suspended, destroyed or unknown, the ciphertext does not authenticate, the caller may not
// ...), not a failure to reach or run the service: trying again cannot change the answer, so
// the rewrap retry loop gives up at once. Implementations wrap every refusal in it beside the
// service's own error, so errors.Is finds both.
var ErrKeyRefused = errors.New("key service refused the request")

// KeyService is what a volume needs from a key management service: envelope encryption of
// the LUKS passphrase under a customer root key, registrations of the volumes each key
// protects, and notice of rotations. Package crkvol/volume/kms implements it over the
// in-process crk service; a remote Key Protect–compatible service implements it too.
//
// Every ciphertext crossing this interface (in [Wrapped], [Unwrapped] and the ciphertext
// arguments) is binary: the bytes a Key Protect ciphertext string, standard base64, stands for.
// An implementation over the HTTP API encodes and decodes that string at the wire, so a
// ciphertext made through one implementation is accepted by every other over the same store,
// and a volume's token (which holds the Key Protect ciphertext string) opens whichever way
// the service is reached.
type KeyService interface {
	// Wrap encrypts plaintext with the latest version of root key keyID, binding aad.
	Wrap(ctx context.Context, keyID string, plaintext []byte, aad []string) (Wrapped, error)
	// Unwrap decrypts a ciphertext; when it was made with an older version, the result
	// also carries it rewrapped under the latest version.
	Unwrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (Unwrapped, error)
	// Rewrap converts a ciphertext to the latest version without revealing the plaintext.
	Rewrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (Wrapped, error)
	// KeyCRN returns the CRN of a key.
	KeyCRN(ctx context.Context, keyID string) (string, error)
	// Register records that resource crn is protected by keyID, wrapped with versionID.
	Register(ctx context.Context, keyID, crn, versionID string, preventKeyDeletion bool) error
	// UpdateRegistration records the version a resource is now wrapped with. It should never
	// move a registration back to an older version than it names (a late update racing a
	// newer rewrap); the in-process service guarantees it.
	UpdateRegistration(ctx context.Context, keyID, crn, versionID string) error
	// DeleteRegistration removes a registration.
	DeleteRegistration(ctx context.Context, keyID, crn string) error
	// Registrations lists the registrations of a key and returns its latest version.
	Registrations(ctx context.Context, keyID string) (regs []Registration, latest string, err error)
	// KeyState returns a key's state and latest version.
	KeyState(ctx context.Context, keyID string) (KeyStatus, error)
	// OnRotate subscribes to rotations of every key; the returned function unsubscribes.
	OnRotate(hook func(ctx context.Context, n RotationNotice) error) (unsubscribe func())

	// RewrapBatch is Rewrap for many ciphertexts of root key keyID, with as few commits of
	// the service as it can (the in-process service and `crkvol kms serve` make one per
	// MaxBatchItems items, audit events included). out[i] and errs[i] are item i's result
	// and refusal, the errors Rewrap would give; err is for the call as a whole (the key
	// unknown or unusable, the service out of reach, ctx): then out and errs are nil, and
	// no item may be taken as rewrapped. Any number of items may be given; an
	// implementation splits them into calls of the size its service takes.
	RewrapBatch(ctx context.Context, keyID string, items []RewrapItem) (out []Wrapped, errs []error, err error)
	// UpdateRegistrations is UpdateRegistration for many resources of key keyID, with as few
	// commits as RewrapBatch. It never moves a registration back to an older version than
	// it names. errs[i] is update i's error; err is for the call as a whole (then errs is
	// nil, and any of the updates may or may not have been stored: they are safe to send
	// again).
	UpdateRegistrations(ctx context.Context, keyID string, updates []RegistrationUpdate) (errs []error, err error)
}

// RewrapItem is one ciphertext of a [KeyService.RewrapBatch], with the AAD it was wrapped
// with.
type RewrapItem struct {
	// Ciphertext is binary (see [KeyService]).
	Ciphertext []byte
	AAD        []string
}

// RegistrationUpdate moves the registration of resource CRN to key version VersionID (see
// [KeyService.UpdateRegistrations]).
type RegistrationUpdate struct {
	CRN, VersionID string
}

// EachConcurrency is how many single calls [RewrapEach] and [UpdateEach] make at once.
const EachConcurrency = 8

// RewrapEach is RewrapBatch made of single ks.Rewrap calls, at most EachConcurrency at
// once: for a key service without a batch call (a Key Protect that has no crkvol
// extensions, a test double). out[i] and errs[i] are item i's; once ctx is done, the items
// not yet sent fail with its error.
func RewrapEach(ctx context.Context, ks KeyService, keyID string, items []RewrapItem) (out []Wrapped, errs []error) {
	out, errs = make([]Wrapped, len(items)), make([]error, len(items))
	each(ctx, len(items), errs, func(i int) {
		out[i], errs[i] = ks.Rewrap(ctx, keyID, items[i].Ciphertext, items[i].AAD)
	})
	return out, errs
}

// UpdateEach is UpdateRegistrations made of single ks.UpdateRegistration calls, at most
// EachConcurrency at once (see [RewrapEach]).
func UpdateEach(ctx context.Context, ks KeyService, keyID string, updates []RegistrationUpdate) (errs []error) {
	errs = make([]error, len(updates))
	each(ctx, len(updates), errs, func(i int) {
		errs[i] = ks.UpdateRegistration(ctx, keyID, updates[i].CRN, updates[i].VersionID)
	})
	return errs
}

// each runs fn(0..n-1), at most EachConcurrency at once; an index not started when ctx is
// done gets ctx's error in errs.
func each(ctx context.Context, n int, errs []error, fn func(i int)) {
	sem := make(chan struct{}, EachConcurrency)
	var wg sync.WaitGroup
	for i := range n {
		if ctx.Err() != nil {
			errs[i] = context.Cause(ctx)
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = context.Cause(ctx)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}

// Wrapped is a ciphertext and the key version that made it.
type Wrapped struct {
	// Ciphertext is binary (see [KeyService]), not the base64 text of the API.
	Ciphertext []byte
	VersionID  string
}

// Unwrapped is the result of an unwrap.
type Unwrapped struct {
	Plaintext []byte
	// VersionID is the version that made the ciphertext.
	VersionID string
	// Rewrapped is set when VersionID is not the latest: the plaintext under the latest
	// version, to be stored in place of the old ciphertext.
	Rewrapped *Wrapped
}

// Registration is a resource protected by a key.
type Registration struct {
	CRN       string
	VersionID string
}

// RotationNotice tells a subscriber that a key's latest version changed, or (from a sync)
// that resources are still on older versions.
type RotationNotice struct {
	KeyID      string
	NewVersion string
	// Stale are the CRNs of the registrations not on NewVersion.
	Stale []string
}
