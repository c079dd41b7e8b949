package main

import (
	"context"
	"errors"
	"fmt"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume/kms"
)

// Key commands against a remote Key Protect-compatible service (--kms-url).

// shown is a server's text as a terminal may show it: control characters escaped (a remote
// service must not move the cursor or forge lines), capped at 1 KiB.
func shown(s string) string { return kpapi.Printable(s, 1<<10) }

func (a *app) remoteCreate(ctx context.Context, opts crk.CreateOptions) error {
	k, err := a.remote.CreateKey(ctx, kms.KeyOptions{Name: opts.Name, Description: opts.Description, Standard: opts.Type == crk.StandardKey, Material: opts.Material})
	if errors.Is(err, kms.ErrOutcomeUnknown) {
		return fmt.Errorf("%w; run crkvol key list to see whether it was before trying again", err)
	}
	if err != nil {
		return err
	}
	return a.showKey(kms.APIKey(k))
}

// remoteRotate rotates on the service, then rewraps this machine's registered volumes of
// the key (a remote service cannot call a hook).
func (a *app) remoteRotate(ctx context.Context, id string, material []byte) error {
	err := a.remote.RotateKey(ctx, id, material)
	if errors.Is(err, kms.ErrOutcomeUnknown) {
		return fmt.Errorf("%w; run crkvol key versions %s to see whether it did: if so, crkvol key sync %s rewraps the volumes", err, id, id)
	}
	if err != nil {
		return err
	}
	k, err := a.keyMetadata(ctx, id)
	if err != nil {
		return fmt.Errorf("the key rotated, but reading its new version failed: %w; crkvol key sync %s rewraps the volumes", err, id)
	}
	rep, err := a.mgr.Sync(ctx, id)
	if err != nil {
		return fmt.Errorf("the key rotated, but rewrapping its volumes failed: %w; crkvol key sync %s retries", err, id)
	}
	a.reports = append(a.reports, rep)
	if err := a.showRotated(k); err != nil {
		return err
	}
	return a.rewrapErr()
}
