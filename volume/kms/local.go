// Package kms connects volumes to key management services: [Local] adapts the in-process
// crk service to volume.KeyService.
package kms

import (
	"context"

	"crkvol/crk"
	"crkvol/volume"
)

// Local is a volume.KeyService backed by an in-process *crk.Service. Its errors are the
// service's; every refusal (a sentinel of class refusal in [crk.Errors]) also matches
// volume.ErrKeyRefused.
type Local struct {
	svc *crk.Service
}

// NewLocal returns a key service for volumes over svc.
func NewLocal(svc *crk.Service) *Local { return &Local{svc: svc} }

// Wrap implements volume.KeyService.
func (l *Local) Wrap(ctx context.Context, keyID string, plaintext []byte, aad []string) (volume.Wrapped, error) {
	w, err := l.svc.Wrap(ctx, keyID, plaintext, aad)
	if err != nil {
		return volume.Wrapped{}, localError(err)
	}
	return volume.Wrapped{Ciphertext: w.Ciphertext, VersionID: w.KeyVersion.ID}, nil
}

// Unwrap implements volume.KeyService.
func (l *Local) Unwrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (volume.Unwrapped, error) {
	u, err := l.svc.Unwrap(ctx, keyID, ciphertext, aad)
	if err != nil {
		return volume.Unwrapped{}, localError(err)
	}
	out := volume.Unwrapped{Plaintext: u.Plaintext, VersionID: u.KeyVersion.ID}
	if u.Rewrapped != nil {
		out.Rewrapped = &volume.Wrapped{Ciphertext: u.Rewrapped, VersionID: u.RewrappedVersion.ID}
	}
	return out, nil
}

// Rewrap implements volume.KeyService.
func (l *Local) Rewrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (volume.Wrapped, error) {
	r, err := l.svc.Rewrap(ctx, keyID, ciphertext, aad)
	if err != nil {
		return volume.Wrapped{}, localError(err)
	}
	return volume.Wrapped{Ciphertext: r.Ciphertext, VersionID: r.KeyVersion.ID}, nil
}

// KeyCRN implements volume.KeyService.
func (l *Local) KeyCRN(ctx context.Context, keyID string) (string, error) {
	k, err := l.svc.GetKeyMetadata(ctx, keyID)
	if err != nil {
		return "", localError(err)
	}
	return k.CRN, nil
}

// Register implements volume.KeyService.
func (l *Local) Register(ctx context.Context, keyID, crn, versionID string, prevent bool) error {
	_, err := l.svc.Register(ctx, keyID, crn, crk.RegisterOptions{
		Description: "crkvol volume", PreventKeyDeletion: prevent, VersionID: versionID,
	})
	return localError(err)
}

// UpdateRegistration implements volume.KeyService.
func (l *Local) UpdateRegistration(ctx context.Context, keyID, crn, versionID string) error {
	_, err := l.svc.UpdateRegistration(ctx, keyID, crn, crk.RegistrationUpdate{VersionID: &versionID, NoDowngrade: true})
	return localError(err)
}

// DeleteRegistration implements volume.KeyService.
func (l *Local) DeleteRegistration(ctx context.Context, keyID, crn string) error {
	return localError(l.svc.DeleteRegistration(ctx, keyID, crn))
}

// Registrations implements volume.KeyService.
func (l *Local) Registrations(ctx context.Context, keyID string) ([]volume.Registration, string, error) {
	k, err := l.svc.GetKeyMetadata(ctx, keyID)
	if err != nil {
		return nil, "", localError(err)
	}
	regs, err := l.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: keyID})
	if err != nil {
		return nil, "", localError(err)
	}
	out := make([]volume.Registration, 0, len(regs))
	for _, r := range regs {
		out = append(out, volume.Registration{CRN: r.ResourceCRN, VersionID: r.KeyVersion.ID})
	}
	return out, k.KeyVersion.ID, nil
}

// OnRotate implements volume.KeyService.
func (l *Local) OnRotate(hook func(ctx context.Context, n volume.RotationNotice) error) func() {
	return l.svc.OnRotate(func(ctx context.Context, ev crk.RotationEvent) error {
		n := volume.RotationNotice{KeyID: ev.KeyID, NewVersion: ev.NewVersion.ID}
		for _, r := range ev.Stale {
			n.Stale = append(n.Stale, r.ResourceCRN)
		}
		return hook(ctx, n)
	})
}

var _ volume.KeyService = (*Local)(nil)
