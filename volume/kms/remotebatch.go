package kms

import (
	"context"

	"crkvol/volume"
)

// RewrapBatch implements volume.KeyService with one Rewrap call per item, at most
// volume.EachConcurrency at once.
func (r *Remote) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := volume.RewrapEach(ctx, r, keyID, items)
	return out, errs, nil
}

// UpdateRegistrations implements volume.KeyService with one UpdateRegistration call per
// update, at most volume.EachConcurrency at once.
func (r *Remote) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	return volume.UpdateEach(ctx, r, keyID, updates), nil
}
