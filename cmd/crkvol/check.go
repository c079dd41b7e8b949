package main

import (
	"context"
	"fmt"

	"crkvol/volume"
)

// checkVolume returns what keeps the volume at path from opening, each as "area: reason"
// (volume.Manager.Check) without the package names library errors start with (errorText);
// a key service that cannot be opened is one such problem.
func (a *app) checkVolume(ctx context.Context, path string) []string {
	if err := a.open(ctx); err != nil {
		return []string{"key service: " + errorText(err)}
	}
	problems, err := a.mgr.Check(ctx, path)
	if err != nil {
		return []string{errorText(err)}
	}
	out := make([]string, len(problems))
	for i, p := range problems {
		out[i] = errorText(p)
	}
	return out
}

// statusErr is the error of `volume status` for a crypto-erased or unhealthy volume (exit
// status 1), or nil.
func statusErr(path string, erased bool, problems []string) error {
	switch {
	case erased:
		return fmt.Errorf("%s: %w", path, volume.ErrErased)
	case len(problems) == 0:
		return nil
	}
	return fmt.Errorf("%s: %w (%d %s, listed above)", path, volume.ErrUnhealthy, len(problems), plural(len(problems), "problem", "problems"))
}
