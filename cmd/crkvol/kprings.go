package main

import (
	"context"
	"regexp"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/spf13/cobra"

	"crkvol/crk/kpapi"
)

// Key rings (kp key-rings, kp key-ring create|delete, kp key update) and kp key sync.

// kpRingRef matches a key ring id as a path segment may carry it.
var kpRingRef = regexp.MustCompile(`^[A-Za-z0-9_-]{2,100}$`)

// checkRingRef refuses a key ring id that is no path segment of letters, digits, - and _.
func checkRingRef(what, ref string) error {
	if !kpRingRef.MatchString(ref) {
		return usagef("%s %q: want a key ring id (2 to 100 letters, digits, - or _)", what, kpapi.Printable(ref, 120))
	}
	return nil
}

// kpKeyRingsCommand is kp key-rings.
func (a *app) kpKeyRingsCommand(f *kpFlags) *cobra.Command {
	return &cobra.Command{Use: "key-rings", Short: "List the key rings of the instance", Args: args(cobra.NoArgs),
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Retrieving key rings...")
			var rings *kp.KeyRings
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				rings, err = c.GetKeyRings(ctx)
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(kpList(rings.KeyRings))
			}
			var rows [][]string
			for _, r := range rings.KeyRings {
				rows = append(rows, []string{kpText(r.ID), kpRFC3339(r.CreationDate), kpText(r.CreatedBy)})
			}
			return kpTable(a.stdout, []string{"Key Ring ID", "Creation Date", "Created By"}, rows...)
		})}
}

// kpKeyRingCommand is kp key-ring: create and delete.
func (a *app) kpKeyRingCommand(f *kpFlags) *cobra.Command {
	g := group("key-ring", "Create and delete key rings")
	ringArg := func(_ *cobra.Command, args []string) error { return checkRingRef("KEY_RING_ID", args[0]) }
	create := &cobra.Command{Use: "create KEY_RING_ID", Short: "Create a key ring", Args: args(cobra.ExactArgs(1)), PreRunE: ringArg,
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, args []string) error {
			a.kpProgress("Creating key ring: '%s', in instance: '%s'...", args[0], s.instance)
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return c.CreateKeyRing(ctx, args[0]) })
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"id": args[0]})
			}
			return nil
		})}
	var force bool
	del := &cobra.Command{Use: "delete KEY_RING_ID", Short: "Delete a key ring (with -f, one whose keys are all destroyed)", Args: args(cobra.ExactArgs(1)), PreRunE: ringArg,
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, args []string) error {
			a.kpProgress("Deleting key ring: '%s', from instance: '%s'...", args[0], s.instance)
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) error {
				return c.DeleteKeyRing(ctx, args[0], kp.WithForce(force))
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]string{"id": args[0]})
			}
			return nil
		})}
	del.Flags().BoolVarP(&force, "force", "f", false, "delete the key ring even though it holds destroyed keys")
	g.AddCommand(create, del)
	return g
}

// kpUpdate is kp key update: move a key to another key ring.
func (a *app) kpUpdate(keyCmd kpKeyCmd) *cobra.Command {
	var ring string
	c := keyCmd("update ID", "Move a key to another key ring", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Updating key...")
		var k *kp.Key
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			k, err = c.SetKeyRing(ctx, args[0], ring)
			return err
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.emit(k)
		}
		return kpTable(a.stdout, []string{"Key ID", "Key Name", "Key Ring ID"}, []string{kpText(k.ID), kpText(k.Name), kpText(k.KeyRingID)})
	})
	prev := c.PreRunE
	c.PreRunE = func(cmd *cobra.Command, args []string) error {
		if cmd.Flags().Changed("new-key-ring") && cmd.Flags().Changed("key-ring") {
			return usagef("give --new-key-ring or --key-ring, not both")
		}
		if err := checkRingRef("--new-key-ring", ring); err != nil {
			return err
		}
		return prev(cmd, args)
	}
	c.Flags().StringVarP(&ring, "new-key-ring", "r", "", "the key ring to move the key to")
	// --key-ring: the spelling of kp key create, for the same ring.
	c.Flags().StringVar(&ring, "key-ring", "", "the same as --new-key-ring (as kp key create spells it)")
	requireFlagsWhen(c, func(cmd *cobra.Command) []string {
		if cmd.Flags().Changed("key-ring") {
			return nil
		}
		return []string{"new-key-ring"}
	})
	return c
}

// kpSync is kp key sync: renotify the resources registered with a key.
func (a *app) kpSync(keyCmd kpKeyCmd) *cobra.Command {
	return keyCmd("sync ID", "Synchronize the cloud resources registered with a key (at most once an hour)", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Synchronizing key...")
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return c.SyncAssociatedResources(ctx, args[0]) })
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.emit(map[string]any{"id": args[0], "synchronized": true})
		}
		_, err = a.stdout.Write([]byte("Key's associated resources are synchronized successfully\n"))
		return err
	})
}
