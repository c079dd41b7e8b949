package main

import (
	"context"
	"strconv"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/spf13/cobra"
)

// Dual authorization delete and instance policies: kp key schedule-delete, kp key
// cancel-delete, kp key policy-update dual-auth-delete, kp instance policies and kp instance
// policy-update. With the embedded key service two users are two principals (cli:$USER).

// kpDualAuthCommands are kp key schedule-delete and cancel-delete.
func (a *app) kpDualAuthCommands(keyCmd kpKeyCmd) []*cobra.Command {
	sched := keyCmd("schedule-delete ID", "Authorize the deletion of a key with a dual authorization delete policy (the first of two users)", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Scheduling key for deletion...")
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return c.InitiateDualAuthDelete(ctx, args[0]) })
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.kpEmitKey(ctx, s, args[0])
		}
		return nil
	})
	cancel := keyCmd("cancel-delete ID", "Cancel a prior authorization to delete a key", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Cancelling key for deletion...")
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return c.CancelDualAuthDelete(ctx, args[0]) })
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.kpEmitKey(ctx, s, args[0])
		}
		return nil
	})
	return []*cobra.Command{sched, cancel}
}

// enableFlags are the -e, --enable and -d, --disable of a policy update: exactly one.
type enableFlags struct{ enable, disable bool }

func (e *enableFlags) add(c *cobra.Command, what string) {
	c.Flags().BoolVarP(&e.enable, "enable", "e", false, "enable "+what)
	c.Flags().BoolVarP(&e.disable, "disable", "d", false, "disable "+what)
}

func (e *enableFlags) check() error {
	if e.enable == e.disable {
		return usagef("give --enable or --disable")
	}
	return nil
}

// kpDualAuthPolicyUpdate is kp key policy-update dual-auth-delete.
func (a *app) kpDualAuthPolicyUpdate(f *kpFlags) *cobra.Command {
	var e enableFlags
	c := &cobra.Command{Use: "dual-auth-delete ID", Short: "Enable or disable a key's dual authorization delete policy", Args: args(cobra.ExactArgs(1)),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := e.check(); err != nil {
				return err
			}
			return kpKeyArg(cmd, args)
		},
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, args []string) error {
			a.kpProgress("Updating dual authorization delete policy for key ID: %s...", args[0])
			var p *kp.Policy
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				p, err = c.SetDualAuthDeletePolicy(ctx, args[0], e.enable)
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if p == nil {
				p = &kp.Policy{}
			}
			if a.asJSON {
				return a.emit(p)
			}
			return kpTable(a.stdout, []string{"", ""}, kpPolicyRows(*p)...)
		})}
	e.add(c, "the policy: deleting the key then needs a second user's prior kp key schedule-delete")
	return c
}

// kpInstanceCommand is kp instance: policies and policy-update.
func (a *app) kpInstanceCommand(f *kpFlags) *cobra.Command {
	inst := group("instance", "Manage the policies of the instance")
	policies := &cobra.Command{Use: "policies", Short: "List the instance's policies", Args: args(cobra.NoArgs),
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Retrieving policy details for instance: %s...", s.instance)
			var ps []kp.InstancePolicy
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				ps, err = c.GetInstancePolicies(ctx)
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(kpList(ps))
			}
			var rows [][]string
			for _, p := range ps {
				enabled := ""
				if p.PolicyData.Enabled != nil {
					enabled = strconv.FormatBool(*p.PolicyData.Enabled)
				}
				rows = append(rows, []string{kpText(p.PolicyType), enabled, kpRFC3339(p.UpdatedAt), kpText(p.UpdatedBy)})
			}
			return kpTable(a.stdout, []string{"Policy Type", "Enabled", "Last Updated", "Updated By"}, rows...)
		})}
	update := group("policy-update", "Update an instance policy")
	var dual enableFlags
	dualCmd := &cobra.Command{Use: "dual-auth-delete", Short: "Enable or disable dual authorization delete for the keys created from now on", Args: args(cobra.NoArgs),
		PreRunE: func(*cobra.Command, []string) error { return dual.check() },
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Updating instance policy dual-auth-delete of instance: %s...", s.instance)
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return c.SetDualAuthInstancePolicy(ctx, dual.enable) })
			if err := a.kpDone(err); err != nil {
				return err
			}
			return a.kpEmitInstancePolicy(ctx, s, "dualAuthDelete")
		})}
	dual.add(dualCmd, "the instance policy")
	var rot enableFlags
	var months int
	rotCmd := &cobra.Command{Use: "rotation", Short: "Enable or disable the rotation policy new root keys get, with its interval", Args: args(cobra.NoArgs),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := rot.check(); err != nil {
				return err
			}
			if cmd.Flags().Changed("monthly-interval") && (months < 1 || months > 12) {
				return usagef("--monthly-interval %d: the rotation interval must be 1 to 12 months", months)
			}
			return nil
		},
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Updating instance policy rotation of instance: %s...", s.instance)
			var interval *int
			if months != 0 {
				interval = &months
			}
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) error {
				return c.SetRotationInstancePolicy(ctx, rot.enable, interval)
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			return a.kpEmitInstancePolicy(ctx, s, "rotation")
		})}
	rot.add(rotCmd, "the instance rotation policy")
	rotCmd.Flags().IntVarP(&months, "monthly-interval", "m", 0, "the rotation interval of new root keys in months (1-12)")
	update.AddCommand(dualCmd, rotCmd)
	inst.AddCommand(policies, update)
	return inst
}

// kpEmitInstancePolicy prints an instance policy as JSON (nothing more in table output:
// kp instance policies lists them).
func (a *app) kpEmitInstancePolicy(ctx context.Context, s *kpSession, typ string) error {
	if !a.asJSON {
		return nil
	}
	var ps []kp.InstancePolicy
	if err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
		ps, err = c.GetInstancePolicies(ctx)
		return err
	}); err != nil {
		return err
	}
	for _, p := range ps {
		if p.PolicyType == typ {
			return a.emit(p)
		}
	}
	return a.emit(map[string]string{"policy_type": typ})
}
