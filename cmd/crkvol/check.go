package main

import (
	"context"
	"errors"
	"fmt"

	"crkvol/volume"
)

// checkVolume returns what keeps the volume at path from opening, each as "area: reason"
// (volume.Manager.Check) without the package names library errors start with (errorText);
// a key service that cannot be opened is one such problem. keyOnly reports that every
// problem is the key service's: the image itself is sound.
func (a *app) checkVolume(ctx context.Context, path string) (problems []string, keyOnly bool) {
	if err := a.open(ctx); err != nil {
		return []string{volume.AreaKeyService + ": " + errorText(err)}, true
	}
	found, err := a.mgr.Check(ctx, path)
	if err != nil {
		return []string{errorText(err)}, false
	}
	out := make([]string, len(found))
	keyOnly = len(found) > 0
	for i, p := range found {
		out[i] = errorText(p)
		keyOnly = keyOnly && p.Area == volume.AreaKeyService
	}
	return out, keyOnly
}

// errCannotOpen means a volume whose image is sound cannot be opened now: the key service
// refuses or cannot be reached.
var errCannotOpen = errors.New("the volume cannot be opened now")

// statusErr is the error of `volume status` for a crypto-erased or unhealthy volume, or one
// the key service does not open now (keyOnly: every problem is the key service's), with exit
// status 1; or nil.
func statusErr(path string, erased bool, problems []string, keyOnly bool) error {
	switch {
	case erased:
		return fmt.Errorf("%s: %w", path, volume.ErrErased)
	case len(problems) == 0:
		return nil
	}
	cause := volume.ErrUnhealthy
	if keyOnly {
		cause = errCannotOpen
	}
	return fmt.Errorf("%s: %w (%d %s, listed above)", path, cause, len(problems), plural(len(problems), "problem", "problems"))
}
