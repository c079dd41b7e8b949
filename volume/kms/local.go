// Package kms connects volumes to key management services: [Local] adapts the in-process
// crk service to volume.KeyService.
package kms

import (
	"context"
	"errors"
	"fmt"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

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

// KeyState implements volume.KeyService.
func (l *Local) KeyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	k, err := l.svc.GetKeyMetadata(ctx, keyID)
	if err != nil {
		return volume.KeyStatus{}, localError(err)
	}
	return volume.KeyStatus{State: k.State.String(), LatestVersion: k.KeyVersion.ID}, nil
}

// KeyEvents implements volume.KeyFeed over the service's lifecycle feed: a long poll that
// wakes when the service commits an event.
func (l *Local) KeyEvents(ctx context.Context, cursor string, wait time.Duration) (volume.KeyEventPage, error) {
	p, err := l.svc.WaitLifecycle(ctx, cursor, feedPageLimit, wait)
	if err != nil {
		return volume.KeyEventPage{}, localError(err)
	}
	return keyEventPage(p), nil
}

// AckKeyEvent implements volume.KeyAcker with crk.Service.Acknowledge.
func (l *Local) AckKeyEvent(ctx context.Context, a volume.KeyAck) error {
	return localError(l.svc.Acknowledge(ctx, hostAck(a)))
}

// hostAck converts an acknowledgement to crk's.
func hostAck(a volume.KeyAck) crk.HostAck {
	return crk.HostAck{Host: a.Host, KeyID: a.KeyID, Type: a.Type, State: a.State, Version: a.Version, Volumes: a.Volumes, Stopped: a.Stopped, Cursor: a.Cursor}
}

// feedPageLimit bounds the events of one feed answer.
const feedPageLimit = 1000

// keyEventPage converts a page of the crk lifecycle feed.
func keyEventPage(p crk.LifecyclePage) volume.KeyEventPage {
	out := volume.KeyEventPage{Cursor: p.Cursor, Events: make([]volume.KeyEvent, len(p.Events))}
	for i, e := range p.Events {
		out.Events[i] = volume.KeyEvent{Cursor: e.Cursor, Time: e.Time, Type: e.Type, KeyID: e.KeyID, KeyCRN: e.KeyCRN,
			State: e.State, OldVersion: e.OldVersion, NewVersion: e.NewVersion, Policy: e.Policy,
			Initiator: e.Initiator, Registrations: e.Registrations}
	}
	return out
}

// StoreFeed is a volume.KeyFeed over the store file of an embedded key service that other
// processes open and change (the state directory's crk.db): it polls the store, opening it
// read-only (without the master key) only while it reads, so that it never holds up the
// processes that write it.
type StoreFeed struct {
	// Path is the store file.
	Path string
	// Poll is the time between reads while waiting; default 500 ms.
	Poll time.Duration
	// LockTimeout bounds each wait for a writer's lock; default 2 s. A read that times out is
	// retried at the next poll while the wait lasts.
	LockTimeout time.Duration
}

// KeyEvents implements volume.KeyFeed.
func (f *StoreFeed) KeyEvents(ctx context.Context, cursor string, wait time.Duration) (volume.KeyEventPage, error) {
	poll, lock := f.Poll, f.LockTimeout
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	if lock <= 0 {
		lock = 2 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		p, err := crk.ReadLifecycle(f.Path, cursor, feedPageLimit, lock)
		timedOut := errors.Is(err, bolterrors.ErrTimeout)
		switch {
		case err != nil && !timedOut:
			return volume.KeyEventPage{}, localError(err)
		case err == nil && (len(p.Events) > 0 || cursor == ""):
			return keyEventPage(p), nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			if timedOut {
				return volume.KeyEventPage{}, fmt.Errorf("kms: lifecycle feed of %s: %w", f.Path, err)
			}
			return keyEventPage(p), nil
		}
		t := time.NewTimer(min(poll, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return volume.KeyEventPage{}, ctx.Err()
		case <-t.C:
		}
	}
}

var (
	_ volume.KeyService = (*Local)(nil)
	_ volume.KeyFeed    = (*Local)(nil)
	_ volume.KeyFeed    = (*StoreFeed)(nil)
	_ volume.KeyAcker   = (*Local)(nil)
)

// RewrapBatch implements volume.KeyService with crk.Service.RewrapBatch: one read of the key
// and one commit of the items' audit events per crk.MaxBatchItems items.
func (l *Local) RewrapBatch(ctx context.Context, keyID string, items []volume.RewrapItem) ([]volume.Wrapped, []error, error) {
	out, errs := make([]volume.Wrapped, len(items)), make([]error, len(items))
	for lo := 0; lo < len(items); lo += crk.MaxBatchItems {
		chunk := items[lo:min(lo+crk.MaxBatchItems, len(items))]
		in := make([]crk.RewrapItem, len(chunk))
		for i, it := range chunk {
			in[i] = crk.RewrapItem{Ciphertext: it.Ciphertext, AAD: it.AAD}
		}
		res, cerrs, err := l.svc.RewrapBatch(ctx, keyID, in)
		if err != nil {
			return nil, nil, localError(err)
		}
		for i := range chunk {
			if cerrs[i] != nil {
				errs[lo+i] = localError(cerrs[i])
				continue
			}
			out[lo+i] = volume.Wrapped{Ciphertext: res[i].Ciphertext, VersionID: res[i].KeyVersion.ID}
		}
	}
	return out, errs, nil
}

// UpdateRegistrations implements volume.KeyService with crk.Service.UpdateRegistrationVersions:
// one transaction per crk.MaxBatchItems updates.
func (l *Local) UpdateRegistrations(ctx context.Context, keyID string, updates []volume.RegistrationUpdate) ([]error, error) {
	errs := make([]error, len(updates))
	for lo := 0; lo < len(updates); lo += crk.MaxBatchItems {
		chunk := updates[lo:min(lo+crk.MaxBatchItems, len(updates))]
		in := make([]crk.RegistrationVersion, len(chunk))
		for i, u := range chunk {
			in[i] = crk.RegistrationVersion{CRN: u.CRN, VersionID: u.VersionID}
		}
		cerrs, err := l.svc.UpdateRegistrationVersions(ctx, keyID, in)
		if err != nil {
			return nil, localError(err)
		}
		for i, e := range cerrs {
			errs[lo+i] = localError(e)
		}
	}
	return errs, nil
}
