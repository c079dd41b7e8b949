package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
)

// keyJSON is a key as Key Protect's API shows it (lastRotateDate absent before the first
// rotation).
type keyJSON struct {
	kpapi.Key
}

type versionJSON struct {
	ID            string `json:"id"`
	CreationDate  string `json:"creationDate"`
	Registrations *int   `json:"registrations,omitempty"`
	Destroyed     *bool  `json:"destroyed,omitempty"`
}

func toKeyJSON(k *crk.Key) keyJSON {
	return keyJSON{Key: kpapi.FromKey(k)}
}

func (a *app) printKey(k *crk.Key) error {
	if a.asJSON {
		return a.emit(toKeyJSON(k))
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Key ID\t%s\n", k.ID)
	fmt.Fprintf(w, "Name\t%s\n", k.Name)
	kind := "root"
	if k.Type == crk.StandardKey {
		kind = "standard"
	}
	if k.Imported {
		kind += ", imported"
	}
	fmt.Fprintf(w, "Type\t%s\n", kind)
	fmt.Fprintf(w, "State\t%s (%d)\n", k.State, int(k.State))
	fmt.Fprintf(w, "CRN\t%s\n", k.CRN)
	fmt.Fprintf(w, "Version\t%s\n", k.KeyVersion.ID)
	fmt.Fprintf(w, "Created\t%s\n", rfc3339(k.CreationDate))
	if !k.LastRotateDate.IsZero() {
		fmt.Fprintf(w, "Last rotated\t%s\n", rfc3339(k.LastRotateDate))
	}
	if p := k.RotationPolicy; p != nil {
		fmt.Fprintf(w, "Rotation policy\tevery %d months (enabled: %v)\n", p.IntervalMonths, p.Enabled)
	}
	if k.Deleted {
		fmt.Fprintf(w, "Deleted\t%s\n", rfc3339(k.DeletionDate))
	}
	return w.Flush()
}

// printReports reports the rewrap passes a command triggered. The new version is a key
// service's answer (a remote one's, checked to be a UUID), escaped all the same.
func (a *app) printReports() error {
	if a.asJSON {
		return nil
	}
	for _, r := range a.reports {
		fmt.Fprintf(a.stdout, "rewrapped %d of %d volumes to version %s (already current %d, failed %d, %d bytes of headers written, 0 bytes of data re-encrypted)\n",
			r.Rewrapped, r.Volumes, shown(r.NewVersion), r.AlreadyCurrent, len(r.Failed), r.BytesWritten)
		for crn, err := range r.Failed {
			fmt.Fprintf(a.stdout, "  failed %s: %v\n", crn, err)
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
			"alreadyCurrent": r.AlreadyCurrent, "retries": r.Retries, "failed": failed,
			"bytesWritten": r.BytesWritten, "dataBytesReencrypted": 0,
		})
	}
	return out
}

func (a *app) keyCommand() *cobra.Command {
	key := group("key", "Manage root and standard keys")
	var material string
	withKey := func(use, short string, fn func(ctx context.Context, id string) error) *cobra.Command {
		name := strings.Fields(use)[0]
		return &cobra.Command{Use: use, Short: short, Args: args(cobra.ExactArgs(1)),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := a.open(cmd.Context()); err != nil {
					return err
				}
				if a.remote != nil {
					ctx, id := cmd.Context(), args[0]
					switch name {
					case "show":
						return a.remoteShow(ctx, id)
					case "versions":
						return a.remoteVersions(ctx, id)
					case "rotate":
						var m []byte
						if material != "" {
							var err error
							if m, err = base64.StdEncoding.DecodeString(material); err != nil {
								return usagef("--material is not standard base64")
							}
						}
						return a.remoteRotate(ctx, id, m)
					case "sync":
						return a.remoteSync(ctx, id, "key sync")
					}
					return a.needLocal("key " + name)
				}
				return fn(cmd.Context(), args[0])
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
				return a.remoteCreate(cmd.Context(), args[0], opts.Material, standard)
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
			if a.remote != nil {
				return a.remoteList(cmd.Context())
			}
			keys, err := a.svc.ListKeys(cmd.Context(), crk.ListOptions{})
			if err != nil {
				return err
			}
			if a.asJSON {
				out := []keyJSON{}
				for i := range keys {
					out = append(out, toKeyJSON(&keys[i]))
				}
				return a.emit(map[string]any{"metadata": map[string]any{"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": len(out)}, "resources": out})
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "KEY ID\tNAME\tTYPE\tSTATE\tVERSION")
			for _, k := range keys {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Type, k.State, k.KeyVersion.ID)
			}
			return w.Flush()
		}}

	var reveal bool
	show := withKey("show ID", "Show a key", func(ctx context.Context, id string) error {
		if !reveal {
			k, err := a.svc.GetKeyMetadata(ctx, id)
			if err != nil {
				return err
			}
			return a.printKey(k)
		}
		k, err := a.svc.GetKey(ctx, id)
		if err != nil {
			return err
		}
		if k.Payload == nil {
			return fmt.Errorf("key %s is a root key: its material is never extractable", id)
		}
		j := toKeyJSON(k)
		j.Payload = base64.StdEncoding.EncodeToString(k.Payload)
		return a.emit(j)
	})
	show.Flags().BoolVar(&reveal, "reveal", false, "include a standard key's payload (as JSON)")

	versions := withKey("versions ID", "List a key's versions, newest first, with their registrations", func(ctx context.Context, id string) error {
		vs, err := a.svc.ListVersions(ctx, id)
		if err != nil {
			return err
		}
		if a.asJSON {
			out := []versionJSON{}
			for _, v := range vs {
				n, d := v.Registrations, v.Destroyed
				out = append(out, versionJSON{ID: v.ID, CreationDate: rfc3339(v.CreationDate), Registrations: &n, Destroyed: &d})
			}
			return a.emit(map[string]any{"metadata": map[string]any{"collectionType": "application/vnd.ibm.kms.key_version+json", "collectionTotal": len(out)}, "resources": out})
		}
		w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "VERSION\tCREATED\tREGISTRATIONS\tMATERIAL")
		for _, v := range vs {
			m := "kept"
			if v.Destroyed {
				m = "destroyed"
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", v.ID, rfc3339(v.CreationDate), v.Registrations, m)
		}
		return w.Flush()
	})

	rotate := withKey("rotate ID", "Rotate a root key and rewrap every volume it protects", func(ctx context.Context, id string) error {
		var m []byte
		if material != "" {
			var err error
			if m, err = base64.StdEncoding.DecodeString(material); err != nil {
				return usagef("--material is not standard base64")
			}
		}
		k, err := a.svc.RotateKey(ctx, id, m)
		if err != nil {
			return err
		}
		if a.asJSON {
			j := toKeyJSON(k)
			if err := a.emit(map[string]any{"key": j, "rewraps": reportsJSON(a.reports)}); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(a.stdout, "rotated key %s to version %s\n", k.ID, k.KeyVersion.ID)
			if err := a.printReports(); err != nil {
				return err
			}
		}
		return a.rewrapErr("key rotate")
	})
	rotate.Flags().StringVar(&material, "material", "", "new base64 key material (imported keys only)")

	var months int
	var disable bool
	policy := withKey("policy ID", "Set or disable a key's rotation policy", func(ctx context.Context, id string) error {
		if disable == (months != 0) {
			return usagef("give --rotation-months N or --disable")
		}
		n := months
		if disable {
			k, err := a.svc.GetKeyMetadata(ctx, id)
			if err != nil {
				return err
			}
			n = 1
			if k.RotationPolicy != nil {
				n = k.RotationPolicy.IntervalMonths
			}
		}
		k, err := a.svc.SetRotationPolicy(ctx, id, n, !disable)
		if err != nil {
			return err
		}
		return a.printKey(k)
	})
	policy.Flags().IntVar(&months, "rotation-months", 0, "rotate every N months (1-12)")
	policy.Flags().BoolVar(&disable, "disable", false, "disable the rotation policy")

	disableCmd := withKey("disable ID", "Suspend a root key", func(ctx context.Context, id string) error {
		k, err := a.svc.DisableKey(ctx, id)
		if err != nil {
			return err
		}
		return a.printKey(k)
	})
	enable := withKey("enable ID", "Re-enable a suspended root key", func(ctx context.Context, id string) error {
		k, err := a.svc.EnableKey(ctx, id)
		if err != nil {
			return err
		}
		return a.printKey(k)
	})
	var force bool
	del := withKey("delete ID", "Delete a key (restorable for 30 days)", func(ctx context.Context, id string) error {
		k, err := a.svc.DeleteKey(ctx, id, crk.DeleteOptions{Force: force})
		if err != nil {
			return err
		}
		return a.printKey(k)
	})
	del.Flags().BoolVar(&force, "force", false, "delete even if volumes are registered (never past preventKeyDeletion)")
	var forcePrune bool
	prune := withKey("prune ID", "Destroy older versions no volume uses", func(ctx context.Context, id string) error {
		// Registrations say which versions are in use, but an image restored in place from a
		// backup carries an older token than its registration: bring every registered image's
		// token to the latest version first, and refuse if any could not be checked.
		if !forcePrune {
			rep, err := a.mgr.Sync(ctx, id)
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
		rs, err := a.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: id})
		if err != nil {
			return err
		}
		if a.asJSON {
			out := []map[string]any{}
			for _, r := range rs {
				out = append(out, map[string]any{
					"keyId": r.KeyID, "resourceCrn": r.ResourceCRN, "description": r.Description,
					"preventKeyDeletion": r.PreventKeyDeletion, "createdBy": r.CreatedBy, "updatedBy": r.UpdatedBy,
					"creationDate": rfc3339(r.CreationDate), "lastUpdated": rfc3339(r.LastUpdated),
					"keyVersion": versionJSON{ID: r.KeyVersion.ID, CreationDate: rfc3339(r.KeyVersion.CreationDate)},
				})
			}
			return a.emit(map[string]any{"metadata": map[string]any{"collectionType": "application/vnd.ibm.kms.registration+json", "collectionTotal": len(out)}, "resources": out})
		}
		w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "RESOURCE CRN\tKEY VERSION\tPREVENT DELETION")
		for _, r := range rs {
			fmt.Fprintf(w, "%s\t%s\t%v\n", r.ResourceCRN, r.KeyVersion.ID, r.PreventKeyDeletion)
		}
		return w.Flush()
	})
	sync := withKey("sync ID", "Rewrap every volume of a key still on an older version", func(ctx context.Context, id string) error {
		if err := a.svc.SyncKey(ctx, id); err != nil {
			return err
		}
		rep, err := a.mgr.Sync(ctx, id) // also catches tokens that lag behind their registration
		if err != nil {
			return err
		}
		_ = rep
		if a.asJSON {
			if err := a.emit(map[string]any{"rewraps": reportsJSON(a.reports)}); err != nil {
				return err
			}
		} else if err := a.printReports(); err != nil {
			return err
		}
		return a.rewrapErr("key sync")
	})
	key.AddCommand(create, list, show, versions, rotate, policy, disableCmd, enable, del, prune, regs, sync)
	return key
}

// rewrapErr fails a command whose rotation left volumes on the old version (their old
// wrapping still works; `key sync` retries).
func (a *app) rewrapErr(what string) error {
	for _, r := range a.reports {
		if err := r.Err(); err != nil {
			return fmt.Errorf("%s: the key rotated, but %w; run crkvol key sync %s to retry", what, err, r.KeyID)
		}
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
