package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"crkvol/volume"
)

// identify says whether the image at path is the registered image of its volume, using the
// open registry, or else the state directory's registry if there is one (opened and closed
// here: status needs no key service). It returns nil when there is no registry.
func (a *app) identify(ctx context.Context, path string) (*volume.Identity, error) {
	reg := a.reg
	if reg == nil {
		dir, err := a.stateDirectory()
		if err != nil {
			return nil, nil
		}
		p := filepath.Join(dir, "volumes.db")
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if reg, err = volume.OpenRegistry(p); err != nil {
			return nil, err
		}
		defer reg.Close()
	}
	return reg.Identify(ctx, path)
}

// registrationLine is the status line (and JSON value) of an image's registration.
func registrationLine(id *volume.Identity) (state, line string) {
	switch {
	case id == nil:
		return "unknown", "unknown (no registry in the state directory)"
	case id.Copy:
		return "copy", fmt.Sprintf("unregistered copy of %s (read-only; volume register makes it the volume, volume reidentify gives it its own identity)", id.RegisteredPath)
	case id.Known:
		return "registered", "registered"
	}
	return "unregistered", "not registered (no registry entry for this volume)"
}

// noteCopy tells the user on stderr that an opened volume is an unregistered copy.
func (a *app) noteCopy(path string, v *volume.Volume) {
	if reg, ok := v.CopyOf(); ok {
		fmt.Fprintf(a.stderr, "crkvol: %s is an unregistered copy of %s (read-only)\n", path, reg)
	}
}
