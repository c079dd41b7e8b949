package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"crkvol/volume"
)

// identify says whether the image at path is the registered image of its volume, using the
// open registry, or else the state directory's registry if there is one (opened and closed
// here: status needs no key service; read-only for a command that only reads, as app.open
// opens it). It returns nil when there is no registry.
func (a *app) identify(ctx context.Context, path string) (*volume.Identity, error) {
	reg := a.reg
	if reg == nil {
		dir, err := a.stateDirectory()
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, "volumes.db")
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		openReg := volume.OpenRegistry
		if a.readOnly {
			openReg = volume.OpenRegistryReadOnly
		}
		reg, err = openReg(p)
		if err != nil {
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
	case id.SameFile:
		return "moved", fmt.Sprintf("the registered file of this volume reached by another path (a hard link to %s, or moved from there; volume register records the new path)", id.RegisteredPath)
	case id.Replaced:
		return "replaced", "a different file than the one registered at this path (replaced or restored from a copy; read-only; volume register makes it the volume)"
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

// identityCommands are the volume commands for images whose identity is not their
// registration: register (a moved or restored image), erase (a copy, or an image whose
// registration is gone) and reidentify (a copy that is to become a volume of its own).
func (a *app) identityCommands() []*cobra.Command {
	var force bool
	register := &cobra.Command{Use: "register IMG", Short: "Make a moved or restored image the registered image of its volume", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			res, err := a.mgr.Reregister(cmd.Context(), args[0], volume.RegisterOptions{Force: force})
			if err != nil {
				return err
			}
			if res.Forced {
				fmt.Fprintf(a.stderr, "crkvol: warning: --force: %s still held the volume; it is now an unregistered copy (read-only, no longer rewrapped)\n", res.Previous.Path)
			}
			if a.asJSON {
				return a.emit(map[string]any{"path": res.Entry.Path, "crn": res.Entry.CRN, "previousPath": res.Previous.Path, "forced": res.Forced, "unchanged": res.Unchanged})
			}
			if res.Unchanged {
				fmt.Fprintf(a.stdout, "%s is the registered image of %s already\n", absPath(args[0]), res.Entry.CRN)
				return nil
			}
			fmt.Fprintf(a.stdout, "registered %s as the image of %s (was %s)\n", res.Entry.Path, res.Entry.CRN, res.Previous.Path)
			return nil
		}}
	register.Flags().BoolVar(&force, "force", false, "take the registration over even though the registered path still holds the volume")

	var yes, forceErase bool
	erase := &cobra.Command{Use: "erase IMG", Short: "Crypto-erase an unregistered copy or an image whose registration is gone", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return usagef("destroys every keyslot of %s for good; add --yes to confirm", args[0])
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			if err := a.mgr.Erase(cmd.Context(), args[0], volume.EraseOptions{Force: forceErase}); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]any{"path": absPath(args[0]), "erased": true})
			}
			fmt.Fprintf(a.stdout, "crypto-erased %s: no keyslot is left\n", absPath(args[0]))
			return nil
		}}
	erase.Flags().BoolVar(&yes, "yes", false, "confirm: the image's keyslots are destroyed for good")
	erase.Flags().BoolVar(&forceErase, "force", false, "erase the registered image of a volume too, and deregister it")

	var keyID string
	reidentify := &cobra.Command{Use: "reidentify IMG", Short: "Give a copy of a volume its own UUID, passphrase and registration",
		Long: `Give a copy of a volume (or an image whose registration is gone) an identity of its own,
as cryptsetup luksUUID --uuid with luksChangeKey would: a new LUKS2 UUID and so a new volume
CRN, a new random passphrase in a new keyslot wrapped by the root key (--key, or the copy's
key), and a new registration. The old crkvol keyslot and token are removed.

The volume key that encrypts the data stays the original's: the copy is registered and rotated
on its own, but it is not cryptographically independent of the original. Making it so needs a
re-encryption of the data (cryptsetup reencrypt), which crkvol does not do.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			info, err := a.mgr.Reidentify(cmd.Context(), args[0], volume.ReidentifyOptions{KeyID: keyID})
			if err != nil {
				return err
			}
			if !a.asJSON {
				fmt.Fprintf(a.stderr, "reidentified %s as volume %s (its volume key is still the original's)\n", absPath(args[0]), info.CRN)
			}
			return a.printStatus(cmd.Context(), args[0])
		}}
	reidentify.Flags().StringVar(&keyID, "key", "", "root key id to wrap the new passphrase (default: the copy's key)")

	return []*cobra.Command{register, erase, reidentify}
}
