package kms

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"crkvol/crk/kpapi"
	"crkvol/volume"
)

// Batch calls. A crkvol server (`crkvol kms serve`) has a batch call for each (kpapi's
// RewrapBatchPattern and RegistrationsBatchPattern): one request, one commit of the
// service, per kpapi.MaxBatchItems items (fewer when their body would pass
// kpapi.MaxBatchBody). A Key Protect has none and answers 404 or 405 without the header
// kpapi.BatchHeader that every answer of those routes carries:
// Remote then makes single calls, volume.EachConcurrency at once, and remembers it, so it
// asks once per Remote. Per-item refusals cross the wire with the reason codes and
// crkvolError ids of single calls, so errors.Is finds the same crk sentinels and
// volume.ErrKeyRefused; a batch call makes one attempt, as Rewrap and UpdateRegistration do.

// batchBodyRoom is what a batch body leaves under kpapi.MaxBatchBody, for the JSON around
// the items.
const batchBodyRoom = 4 << 10

// RewrapBatch implements volume.KeyService with the crkvol batch rewrap, or Rewrap calls
// against a service without it.
func (r *Remote) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := make([]volume.Wrapped, len(items)), make([]error, len(items))
	reqs := make([]kpapi.RewrapBatchItem, len(items))
	sizes := make([]int, len(items))
	for i, it := range items {
		reqs[i] = kpapi.RewrapBatchItem{Ciphertext: base64.StdEncoding.EncodeToString(it.Ciphertext), AAD: it.AAD}
		sizes[i] = len(reqs[i].Ciphertext) + 32
		for _, a := range it.AAD {
			sizes[i] += len(a) + 8
		}
	}
	for lo := 0; lo < len(items); {
		hi := chunkEnd(sizes, lo)
		if r.noRewrapBatch.absent() {
			o, e := volume.RewrapEach(ctx, r, keyID, items[lo:])
			copy(out[lo:], o)
			copy(errs[lo:], e)
			break
		}
		var ans kpapi.RewrapBatchAnswer
		err := r.batch(ctx, http.MethodPost, kpapi.BatchPath(keyID, "rewrap"), kpapi.RewrapBatchRequest{Items: reqs[lo:hi]}, &ans, hi-lo, &r.noRewrapBatch)
		if errors.Is(err, errNoBatch) {
			continue // the single calls, above
		}
		if err == nil && len(ans.Items) != hi-lo {
			err = fmt.Errorf("%w: %d results for %d items", volume.ErrIncompleteAnswer, len(ans.Items), hi-lo)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("kms: rewrap batch: %w", err)
		}
		for j, res := range ans.Items {
			out[lo+j], errs[lo+j] = rewrapResult(res)
		}
		lo = hi
	}
	return out, errs, nil
}

// rewrapResult reads one item of a batch rewrap's answer as Rewrap reads its answer.
func rewrapResult(res kpapi.RewrapBatchResult) (volume.Wrapped, error) {
	if res.Error != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w", itemError(res.Error))
	}
	if res.Ciphertext == "" || res.RewrappedKeyVersion == nil || res.RewrappedKeyVersion.ID == "" {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w: the answer has no ciphertext or no key version", volume.ErrIncompleteAnswer)
	}
	if err := checkID("rewrapped key version", res.RewrappedKeyVersion.ID); err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w", err)
	}
	ct, err := decodeCiphertext(res.Ciphertext)
	if err != nil {
		return volume.Wrapped{}, fmt.Errorf("kms: rewrap: %w", err)
	}
	return volume.Wrapped{Ciphertext: ct, VersionID: res.RewrappedKeyVersion.ID}, nil
}

// UpdateRegistrations implements volume.KeyService with the crkvol batch registration
// update, or UpdateRegistration calls against a service without it.
func (r *Remote) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	errs := make([]error, len(updates))
	reqs := make([]kpapi.RegistrationBatchItem, len(updates))
	sizes := make([]int, len(updates))
	for i, u := range updates {
		reqs[i] = kpapi.RegistrationBatchItem{ResourceCRN: u.CRN, KeyVersion: kpapi.KeyVersion{ID: u.VersionID}}
		sizes[i] = len(u.CRN) + len(u.VersionID) + 48
	}
	for lo := 0; lo < len(updates); {
		hi := chunkEnd(sizes, lo)
		if r.noRegBatch.absent() {
			copy(errs[lo:], volume.UpdateEach(ctx, r, keyID, updates[lo:]))
			break
		}
		var ans kpapi.RegistrationsBatchAnswer
		err := r.batch(ctx, http.MethodPatch, kpapi.BatchPath(keyID, "registrations"), kpapi.RegistrationsBatchRequest{Items: reqs[lo:hi]}, &ans, hi-lo, &r.noRegBatch)
		if errors.Is(err, errNoBatch) {
			continue
		}
		if err == nil && len(ans.Items) != hi-lo {
			err = fmt.Errorf("%w: %d results for %d updates", volume.ErrIncompleteAnswer, len(ans.Items), hi-lo)
		}
		if err != nil {
			return nil, fmt.Errorf("kms: update registrations: %w", err)
		}
		for j, res := range ans.Items {
			if res.Error != nil {
				errs[lo+j] = fmt.Errorf("kms: update registration: %w", itemError(res.Error))
			}
		}
		lo = hi
	}
	return errs, nil
}

// chunkEnd returns the end of the batch starting at item lo: at most kpapi.MaxBatchItems
// items whose sizes (their JSON's, about) fit a batch body; at least one.
func chunkEnd(sizes []int, lo int) int {
	hi, total := lo, 0
	for hi < len(sizes) && hi-lo < kpapi.MaxBatchItems {
		if hi > lo && total+sizes[hi] > kpapi.MaxBatchBody-batchBodyRoom {
			break
		}
		total += sizes[hi]
		hi++
	}
	return hi
}

// errNoBatch means the service has no batch call: use single calls.
var errNoBatch = errors.New("the key service has no batch call")

// batchRetryAfter is how long a Remote makes single calls after a service answered that it
// has no batch call, before it asks again: a long-running process (crkvol agent) takes up
// the batch calls again once the service has them (an upgrade), or when the answer came
// from something in between (a proxy's 404 while a replica restarted).
const batchRetryAfter = 10 * time.Minute

// batchAbsence remembers until when a batch call is taken to be absent.
type batchAbsence struct{ until atomic.Int64 }

// absent reports whether the batch call is taken to be absent now.
func (b *batchAbsence) absent() bool { return time.Now().UnixNano() < b.until.Load() }

// mark takes the batch call to be absent for batchRetryAfter.
func (b *batchAbsence) mark() { b.until.Store(time.Now().Add(batchRetryAfter).UnixNano()) }

// batch makes one batch request of n items. A 404 or 405 without kpapi.BatchHeader (from a
// service without the route, not a refusal of the key by crkvol's) marks none absent and
// returns errNoBatch.
func (r *Remote) batch(ctx context.Context, method, path string, body, out any, n int, none *batchAbsence) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	// An answer item is about as large as its request item, plus two version ids.
	limit := maxAnswer + 2*len(b) + 256*n
	var header http.Header
	err = r.authorized(ctx, func(ctx context.Context, auth string) error {
		return r.sendLimit(ctx, r.http, auth, method, path, b, out, limit, &header)
	})
	var re *kpapi.ResponseError
	if errors.As(err, &re) && (re.Status == http.StatusNotFound || re.Status == http.StatusMethodNotAllowed) && header.Get(kpapi.BatchHeader) == "" {
		none.mark()
		return errNoBatch
	}
	return err
}

// itemError maps the error of one item of a batch answer as responseError maps a single
// call's error response.
func itemError(e *kpapi.BatchItemError) error {
	re := e.Err()
	return &serviceError{err: re, refused: re.Refused()}
}
