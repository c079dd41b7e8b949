package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/ident"
	"crkvol/volume"
)

// printKey prints a key of the embedded service (see showKey).
func (a *app) printKey(k *crk.Key) error { return a.showKey(kpapi.FromKey(k)) }

// printReports reports the rewrap passes a command triggered. The new version is a key
// service's answer (a remote one's, checked to be a UUID), escaped all the same.
func (a *app) printReports() error {
	if a.asJSON {
		return nil
	}
	for _, r := range a.reports {
		if err := a.printReport(r); err != nil {
			return err
		}
	}
	return nil
}

func reportsJSON(reps []*volume.Report) []map[string]any {
	out := []map[string]any{}
	for _, r := range reps {
		failed := map[string]string{}
		for c, err := range r.Failed {
			failed[c] = err.Error()
		}
		out = append(out, map[string]any{
			"keyId": r.KeyID, "newVersion": r.NewVersion, "volumes": r.Volumes, "rewrapped": r.Rewrapped,
			"alreadyCurrent": r.AlreadyCurrent, "images": r.Images, "imagesRewrapped": r.ImagesRewrapped,
			"imagesAlreadyCurrent": r.ImagesAlreadyCurrent, "imagesReregistered": r.ImagesReregistered, "retries": r.Retries, "failed": failed, "notStarted": r.NotStarted,
			"bytesWritten": r.BytesWritten, "dataBytesReencrypted": 0, "elsewhere": r.Elsewhere,
		})
	}
	return out
}

func (a *app) keyCommand() *cobra.Command {
	key := group("key", "Manage root and standard keys")
	var material string
	// withKey makes a command on one key, named by id or name (resolveKey): fn runs in
	// either mode unless the command is local only.
	withKey := func(use, short string, fn func(ctx context.Context, id string) error) *cobra.Command {
		name := strings.Fields(use)[0]
		return &cobra.Command{Use: use, Short: short, Args: args(cobra.ExactArgs(1)),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := a.open(cmd.Context()); err != nil {
					return err
				}
				ctx := cmd.Context()
				id, err := a.resolveKey(ctx, args[0], name == "restore" || name == "purge")
				if err != nil {
					return err
				}
				if a.remote == nil {
					// A purged key no longer exists, as on a remote service (Key Protect: 404
					// on its id); the store keeps its record for the audit trail only.
					if err := a.svc.CheckNotPurged(ctx, id); err != nil {
						return withHint(err, "a purged key no longer exists; its audit events remain: crkvol events --key "+id)
					}
				}
				if a.remote != nil {
					switch name {
					case "sync":
						return a.keySync(ctx, id)
					case "prune":
						return a.needLocal("")
					}
				}
				return fn(ctx, id)
			}}
	}

	var importB64, materialFile, description string
	var standard bool
	create := &cobra.Command{Use: "create NAME", Short: "Create a root key (or, with --standard, a standard key)", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := crk.CreateOptions{Name: args[0], Description: description, Type: crk.RootKey}
			if standard {
				opts.Type = crk.StandardKey
			}
			switch {
			case importB64 != "" && materialFile != "":
				return usagef("give --import-material or --material-file, not both")
			case importB64 != "":
				m, err := base64.StdEncoding.DecodeString(importB64)
				if err != nil {
					return usagef("--import-material is not standard base64")
				}
				opts.Material = m
			case materialFile != "":
				m, err := os.ReadFile(materialFile)
				if err != nil {
					return err
				}
				opts.Material = m
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			if a.remote != nil {
				return a.remoteCreate(cmd.Context(), opts)
			}
			k, err := a.svc.CreateKey(cmd.Context(), opts)
			if err != nil {
				return err
			}
			return a.printKey(k)
		}}
	create.Flags().StringVar(&importB64, "import-material", "", "import this base64 key material (128, 192 or 256 bits for a root key)")
	create.Flags().StringVar(&materialFile, "material-file", "", "import the raw key material in this file")
	create.Flags().BoolVar(&standard, "standard", false, "create a standard (extractable, non-wrapping) key")
	create.Flags().StringVar(&description, "description", "", "key description")

	list := &cobra.Command{Use: "list", Short: "List keys", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			keys, err := a.listKeys(cmd.Context())
			if err != nil {
				return err
			}
			return a.showKeys(keys)
		}}

	var reveal bool
	show := withKey("show ID", "Show a key", func(ctx context.Context, id string) error {
		if !reveal {
			k, err := a.keyMetadata(ctx, id)
			if err != nil {
				return err
			}
			return a.showKey(k)
		}
		if err := a.needLocal("--reveal"); err != nil {
			return err
		}
		k, err := a.svc.GetKey(ctx, id)
		if err != nil {
			return err
		}
		if k.Payload == nil {
			return fmt.Errorf("key %s is a root key: its material is never extractable", id)
		}
		j := toKeyJSON(kpapi.FromKey(k))
		j.Payload = base64.StdEncoding.EncodeToString(k.Payload)
		return a.emit(j)
	})
	show.Flags().BoolVar(&reveal, "reveal", false, "include a standard key's payload (as JSON)")

	versions := withKey("versions ID", "List a key's versions, newest first, with their registrations", func(ctx context.Context, id string) error {
		vs, err := a.keyVersions(ctx, id)
		if err != nil {
			return err
		}
		return a.showVersions(vs)
	})

	rotate := withKey("rotate ID", "Rotate a root key and rewrap every volume it protects", func(ctx context.Context, id string) error {
		var m []byte
		if material != "" {
			var err error
			if m, err = base64.StdEncoding.DecodeString(material); err != nil {
				return usagef("--material is not standard base64")
			}
		}
		if a.remote != nil {
			return a.remoteRotate(ctx, id, m)
		}
		k, err := a.svc.RotateKey(ctx, id, m)
		if err != nil {
			return err
		}
		if err := a.showRotated(kpapi.FromKey(k)); err != nil {
			return err
		}
		return a.rewrapErr()
	})
	rotate.Flags().StringVar(&material, "material", "", "new base64 key material (imported keys only)")
	a.workersFlag(rotate)

	var everyMonths optionalInt
	var disable bool
	policy := withKey("policy ID", "Set or disable a key's rotation policy", func(ctx context.Context, id string) error {
		if disable == everyMonths.set {
			return usagef("give --rotation-months N or --disable")
		}
		n := everyMonths.n
		if everyMonths.set && (n < 1 || n > 12) {
			return fmt.Errorf("%w: got %d", crk.ErrInvalidPolicy, n)
		}
		if disable {
			k, err := a.keyMetadata(ctx, id)
			if err != nil {
				return err
			}
			if k.Rotation == nil {
				if a.asJSON {
					return a.showKey(k)
				}
				fmt.Fprintf(a.stdout, "key %s has no rotation policy; nothing changed\n", shown(k.ID))
				return nil
			}
			n = k.Rotation.IntervalMonth
		}
		k, err := a.keyOp(func() (*crk.Key, error) { return a.svc.SetRotationPolicy(ctx, id, n, !disable) },
			func() (kpapi.Key, error) { return a.remote.SetRotationPolicy(ctx, id, n, !disable) })
		if err != nil {
			return err
		}
		return a.showKey(k)
	})
	policy.Flags().Var(&everyMonths, "rotation-months", "rotate every N months (1-12)")
	policy.Flags().BoolVar(&disable, "disable", false, "disable the rotation policy")

	disableCmd := withKey("disable ID", "Suspend a root key", func(ctx context.Context, id string) error {
		k, err := a.keyOp(func() (*crk.Key, error) { return a.svc.DisableKey(ctx, id) },
			func() (kpapi.Key, error) { return a.remote.DisableKey(ctx, id) })
		if err != nil {
			return err
		}
		return a.showKey(k)
	})
	enable := withKey("enable ID", "Re-enable a suspended root key", func(ctx context.Context, id string) error {
		k, err := a.keyOp(func() (*crk.Key, error) { return a.svc.EnableKey(ctx, id) },
			func() (kpapi.Key, error) { return a.remote.EnableKey(ctx, id) })
		if err != nil {
			return err
		}
		return a.showKey(k)
	})
	var force bool
	del := withKey("delete ID", "Delete a key (restorable for 30 days with key restore)", func(ctx context.Context, id string) error {
		k, err := a.keyOp(func() (*crk.Key, error) { return a.svc.DeleteKey(ctx, id, crk.DeleteOptions{Force: force}) },
			func() (kpapi.Key, error) { return a.remote.DeleteKey(ctx, id, force) })
		if err != nil {
			return a.protectedKey(ctx, id, err)
		}
		return a.showKey(k)
	})
	del.Flags().BoolVar(&force, "force", false, "delete even if resources are registered, unless one has preventKeyDeletion (crkvol's volumes do)")
	restore := withKey("restore ID", "Restore a deleted key, within 30 days of its deletion", func(ctx context.Context, id string) error {
		k, err := a.keyOp(func() (*crk.Key, error) { return a.svc.RestoreKey(ctx, id) },
			func() (kpapi.Key, error) { return a.remote.RestoreKey(ctx, id) })
		switch {
		case errors.Is(err, crk.ErrInvalidState):
			return withHint(err, "only a deleted key can be restored")
		case errors.Is(err, crk.ErrRestoreExpired):
			return withHint(err, "its restore window is over; it can only be purged: crkvol key purge "+id)
		case err != nil:
			return err
		}
		return a.showKey(k)
	})
	purge := withKey("purge ID", "Destroy a deleted key's material for good (from 4 hours after its deletion; it cannot be restored after)", func(ctx context.Context, id string) error {
		k, err := a.keyOp(func() (*crk.Key, error) { return a.svc.PurgeKey(ctx, id) },
			func() (kpapi.Key, error) { return a.remote.PurgeKey(ctx, id) })
		switch {
		case errors.Is(err, crk.ErrInvalidState):
			return withHint(err, "delete it first: crkvol key delete "+id)
		case errors.Is(err, crk.ErrTooEarly):
			return withHint(err, "until then it can be restored: crkvol key restore "+id)
		case err != nil:
			return err
		}
		if a.asJSON {
			return a.showKey(k)
		}
		fmt.Fprintf(a.stdout, "purged key %s\n", shown(k.ID))
		return nil
	})
	var forcePrune bool
	prune := withKey("prune ID", "Destroy older versions no volume uses", func(ctx context.Context, id string) error {
		// Registrations say which versions are in use, but an image restored in place from a
		// backup carries an older token than its registration: bring every registered image's
		// token to the latest version first, and refuse if any could not be checked.
		if !forcePrune {
			restore := a.passProcs()
			rep, err := a.mgr.Sync(ctx, id)
			restore()
			if err != nil {
				return fmt.Errorf("checking the volumes' tokens first: %w", err)
			}
			if err := rep.Err(); err != nil {
				return fmt.Errorf("refused: %d volumes could not be brought to the latest version, and their images may still need an older one "+
					"(fix them and run key sync, or prune with --force to trust the registrations): %w", len(rep.Failed), err)
			}
		}
		res, err := a.svc.Prune(ctx, id)
		if err != nil {
			return err
		}
		if a.asJSON {
			return a.emit(map[string]any{"destroyed": nonNil(res.Destroyed), "referenced": nonNil(res.Referenced)})
		}
		fmt.Fprintf(a.stdout, "destroyed %d versions; %d older versions still in use\n", len(res.Destroyed), len(res.Referenced))
		return nil
	})
	prune.Flags().BoolVar(&forcePrune, "force", false, "trust the registrations: do not first bring every registered image's token to the latest version")
	regs := withKey("registrations ID", "List the resources a key protects", func(ctx context.Context, id string) error {
		rs, err := a.keyRegistrations(ctx, id)
		if err != nil {
			return err
		}
		return a.showRegistrations(rs)
	})
	sync := withKey("sync ID", "Rewrap every volume of a key still on an older version", a.keySync)
	a.workersFlag(sync)
	wrap, unwrap := a.keyWrapCommands()
	key.AddCommand(create, list, show, versions, rotate, policy, disableCmd, enable, del, restore, purge, prune, regs, sync, wrap, unwrap, a.keyFeedCommand())
	return key
}

// maxWorkers is the most --workers accepted: more open files and goroutines than that buy
// nothing on any device (see volume.DefaultWorkers).
const maxWorkers = 1024

// workersFlag gives a command that runs a rewrap pass the flag --workers, checked before the
// command opens its stores, and runs it with a pass's processors (see flushProcs).
func (a *app) workersFlag(cmd *cobra.Command) {
	cmd.Flags().IntVar(&a.workers, "workers", 0, fmt.Sprintf("volumes rewrapped at once, 1 to %d (default %d; 1 rewraps them one by one)", maxWorkers, volume.DefaultWorkers))
	run := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if cmd.Flags().Changed("workers") && (a.workers < 1 || a.workers > maxWorkers) {
			return fmt.Errorf("--workers %d: want 1 to %d volumes at once", a.workers, maxWorkers)
		}
		defer a.passProcs()() // a rewrap pass is flush-bound (see flushProcs)
		return run(cmd, args)
	}
}

// rewrapErr fails a command whose rotation left volumes on the old version (their old
// wrapping still works), naming the causes and what fixes each.
func (a *app) rewrapErr() error {
	var errs []error
	for _, r := range a.reports {
		if err := rewrapFailed("the key rotated", a.reg, r); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// optionalInt is an int flag that records whether it was given.
type optionalInt struct {
	n   int
	set bool
}

func (o *optionalInt) String() string {
	if !o.set {
		return ""
	}
	return strconv.Itoa(o.n)
}

func (o *optionalInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q is not an integer", s)
	}
	o.n, o.set = n, true
	return nil
}

func (o *optionalInt) Type() string { return "int" }

// protectedKey explains a delete refused because the key protects registered resources:
// crkvol registers its volumes and catalog images with preventKeyDeletion, so --force cannot
// help; the volumes and images must go first. Other errors are returned as they are.
func (a *app) protectedKey(ctx context.Context, id string, err error) error {
	for _, sentinel := range []error{crk.ErrPreventKeyDeletion, crk.ErrProtectedResource} {
		if !errors.Is(err, sentinel) {
			continue
		}
		what := "registered volumes"
		var images []string // the images' CRNs, with their catalog names when known
		volumes := -1       // the registered volumes, when the registrations could be listed
		if regs, cerr := a.keyRegistrations(ctx, id); cerr == nil {
			volumes = 0
			for _, r := range regs {
				if !ident.IsImageCRN(r.ResourceCRN) {
					volumes++
					continue
				}
				item := shown(r.ResourceCRN)
				if a.reg != nil {
					if e, ierr := a.reg.ImageByCRN(r.ResourceCRN); ierr == nil {
						item = "image " + e.Name + " (" + item + ")"
					}
				}
				images = append(images, item)
			}
			what = fmt.Sprintf("%d registered %s", volumes, plural(volumes, "volume", "volumes"))
			if len(images) > 0 {
				listed := strings.Join(images[:min(len(images), maxListed)], ", ")
				if len(images) > maxListed {
					listed += fmt.Sprintf(" and %d more", len(images)-maxListed)
				}
				imgs := fmt.Sprintf("%d %s (%s)", len(images), plural(len(images), "image", "images"), listed)
				if volumes == 0 {
					what = imgs
				} else {
					what += " and " + imgs
				}
			}
		}
		hints := []string{
			"crkvol registers its volumes and images with preventKeyDeletion, so --force cannot delete the key either",
			"list them with: crkvol key registrations " + id,
		}
		if volumes != 0 {
			hints = append(hints, "delete each volume (crkvol volume delete IMG), or copy its data to a volume of another key and delete it; then delete the key")
		}
		if len(images) > 0 {
			hints = append(hints, "remove each image from the catalog with crkvol image delete NAME (its file is kept); an image CRN with no catalog entry (a crash's leftover) with crkvol image delete CRN --key "+id+"; then delete the key")
		}
		return withHint(fmt.Errorf("key %s protects %s: %w", id, what, sentinel), hints...)
	}
	return err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
