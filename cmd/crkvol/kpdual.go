package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/spf13/cobra"
)

// Dual authorization delete and instance policies: kp key schedule-delete, kp key
// cancel-delete, kp key policy-update dual-auth-delete, kp instance policies and kp instance
// policy-update. With the embedded key service two users are two principals (cli:$USER), which
// separates people only as far as $USER does (anyone can set it): the help says so.

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
	sched.Long = `Authorize the deletion of a key with a dual authorization delete policy: the first of two
users. A second user then deletes it with kp key delete within 7 days (kp key show tells
whether the key is set for deletion and until when), or cancels with kp key cancel-delete.

On the embedded key service (no --kms-url) a user is cli:$USER, and $USER is whatever the
caller sets: dual authorization separates people only by $USER, which anyone can set;
whoever can open the state directory holds its master key. Use --kms-url with an API key per
person (crkvol kms apikey create) for real separation.`
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
		if e.enable {
			return usagef("give --enable or --disable, not both")
		}
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
			return a.kpPrintPolicy(err, p)
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
				rows = append(rows, []string{kpText(p.PolicyType), enabled, kpRFC3339(p.UpdatedAt), kpText(p.UpdatedBy), kpPolicySettings(p.PolicyData.Attributes)})
			}
			return kpTable(a.stdout, []string{"Policy Type", "Enabled", "Last Updated", "Updated By", "Settings"}, rows...)
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
			if rot.enable && !cmd.Flags().Changed("monthly-interval") {
				return usagef("--enable needs -m, --monthly-interval: the rotation interval of new root keys (1-12 months)")
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
	update.AddCommand(dualCmd, rotCmd, a.kpAllowedNetworkCommand(f), a.kpKeyCreateImportAccessCommand(f), a.kpMetricsCommand(f))
	inst.AddCommand(policies, update)
	return inst
}

// kpEmitInstancePolicy prints an instance policy as JSON (nothing more in table output:
// kp instance policies lists them). In JSON mode it reads the policies back, which the
// service audits as kms.instance-policies.read.
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
	return fmt.Errorf("the service does not list the %s policy just set", typ)
}

// kpPolicySettings is the Settings cell of an instance policy in kp instance policies: its
// attributes as name=value, in the API's names, comma-separated ("" for none).
func kpPolicySettings(at *kp.Attributes) string {
	if at == nil {
		return ""
	}
	var out []string
	if at.IntervalMonth != nil {
		out = append(out, "interval_month="+strconv.Itoa(*at.IntervalMonth))
	}
	if at.AllowedNetwork != nil {
		out = append(out, "allowed_network="+kpText(*at.AllowedNetwork))
	}
	if at.AllowedIP != nil {
		out = append(out, "allowed_ip="+kpText(strings.Join(*at.AllowedIP, " ")))
	}
	for _, b := range []struct {
		name string
		v    *bool
	}{{"create_root_key", at.CreateRootKey}, {"create_standard_key", at.CreateStandardKey},
		{"import_root_key", at.ImportRootKey}, {"import_standard_key", at.ImportStandardKey}, {"enforce_token", at.EnforceToken}} {
		if b.v != nil {
			out = append(out, b.name+"="+strconv.FormatBool(*b.v))
		}
	}
	return strings.Join(out, ", ")
}

// kpInstancePolicyCommand is a kp instance policy-update subcommand: -e or -d (exactly one),
// the flags add adds, then set; it prints the policy with -o json. check runs after the
// -e/-d check; set calls the client.
func (a *app) kpInstancePolicyCommand(f *kpFlags, use, short, typ, what string, add func(c *cobra.Command), check func(cmd *cobra.Command, enable bool) error, set func(ctx context.Context, c *kp.Client, enable bool) error) *cobra.Command {
	var e enableFlags
	c := &cobra.Command{Use: use, Short: short, Args: args(cobra.NoArgs),
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := e.check(); err != nil {
				return err
			}
			if check != nil {
				return check(cmd, e.enable)
			}
			return nil
		},
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Updating instance policy %s of instance: %s...", use, s.instance)
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return set(ctx, c, e.enable) })
			if err := a.kpDone(err); err != nil {
				return err
			}
			return a.kpEmitInstancePolicy(ctx, s, typ)
		})}
	e.add(c, what)
	if add != nil {
		add(c)
	}
	return c
}

// kpAllowedNetworkCommand is kp instance policy-update allowed-network.
func (a *app) kpAllowedNetworkCommand(f *kpFlags) *cobra.Command {
	var network string
	return a.kpInstancePolicyCommand(f, "allowed-network", "Enable or disable the network the instance accepts requests from (public-and-private or private-only)",
		kp.AllowedNetwork, "the allowed network policy",
		func(c *cobra.Command) {
			c.Flags().StringVarP(&network, "network-type", "n", "", "with --enable: public-and-private or private-only (crkvol's server judges a request private by its source address: loopback and private ranges)")
		},
		func(cmd *cobra.Command, enable bool) error {
			switch {
			case enable && network == "":
				return usagef("--enable needs -n, --network-type: public-and-private or private-only")
			case !enable && cmd.Flags().Changed("network-type"):
				return usagef("-n, --network-type goes with --enable")
			case enable && network != "public-and-private" && network != "private-only":
				return usagef("--network-type %q: want public-and-private or private-only", kpText(network))
			}
			return nil
		},
		func(ctx context.Context, c *kp.Client, enable bool) error {
			return c.SetAllowedNetworkInstancePolicy(ctx, enable, network)
		})
}

// kpKeyCreateImportAccessCommand is kp instance policy-update key-create-import-access: one
// flag per attribute of the policy (Key Protect's create_root_key, create_standard_key,
// import_root_key, import_standard_key, enforce_token); an attribute not given takes Key
// Protect's default (every kind of key allowed, no import token enforced).
func (a *app) kpKeyCreateImportAccessCommand(f *kpFlags) *cobra.Command {
	attrs := []struct {
		flag, attr, help string
		v                bool
	}{
		{"create-root-key", kp.CreateRootKey, "allow creating root keys (default true)", false},
		{"create-standard-key", kp.CreateStandardKey, "allow creating standard keys (default true)", false},
		{"import-root-key", kp.ImportRootKey, "allow importing root keys (default true)", false},
		{"import-standard-key", kp.ImportStandardKey, "allow importing standard keys (default true)", false},
		{"enforce-token", kp.EnforceToken, "require an import token to import or rotate with key material (default false)", false},
	}
	var changed map[string]bool
	return a.kpInstancePolicyCommand(f, "key-create-import-access", "Enable or disable the policy that restricts how keys are created and imported",
		kp.KeyCreateImportAccess, "the key create and import access policy",
		func(c *cobra.Command) {
			for i := range attrs {
				c.Flags().BoolVar(&attrs[i].v, attrs[i].flag, false, "with --enable: "+attrs[i].help+"; --"+attrs[i].flag+"=false to forbid")
			}
		},
		func(cmd *cobra.Command, enable bool) error {
			changed = map[string]bool{}
			for _, at := range attrs {
				if cmd.Flags().Changed(at.flag) {
					if !enable {
						return usagef("--%s goes with --enable (a disabled policy has no attributes)", at.flag)
					}
					changed[at.attr] = true
				}
			}
			return nil
		},
		func(ctx context.Context, c *kp.Client, enable bool) error {
			m := map[string]bool{}
			for _, at := range attrs {
				if changed[at.attr] {
					m[at.attr] = at.v
				}
			}
			return c.SetKeyCreateImportAccessInstancePolicy(ctx, enable, m)
		})
}

// kpMetricsCommand is kp instance policy-update metrics.
func (a *app) kpMetricsCommand(f *kpFlags) *cobra.Command {
	return a.kpInstancePolicyCommand(f, "metrics", "Enable or disable the instance's metrics policy",
		kp.Metrics, "the metrics policy", nil, nil,
		func(ctx context.Context, c *kp.Client, enable bool) error {
			return c.SetMetricsInstancePolicy(ctx, enable)
		})
}
