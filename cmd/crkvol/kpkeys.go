package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/spf13/cobra"

	"crkvol/crk/kpapi"
	"crkvol/volume"
)

// kpSessionRun is the RunE of a kp command that talks to the key service: it opens it and
// runs fn with the session.
func (a *app) kpSessionRun(f *kpFlags, fn func(ctx context.Context, s *kpSession, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		s, err := a.kpOpen(cmd.Context(), f)
		if err != nil {
			return err
		}
		return fn(cmd.Context(), s, args)
	}
}

// kpKeyArg checks the key argument of a kp key command (the first).
func kpKeyArg(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return checkKeyRef("KEY_ID", args[0])
	}
	return nil
}

// checkBase64 refuses a flag value that is not standard base64.
func checkBase64(flag, v string) error {
	if _, err := base64.StdEncoding.DecodeString(v); err != nil {
		return usagef("--%s: not base64 (standard encoding, with padding)", flag)
	}
	return nil
}

// kpKeysCommand is `kp keys`.
func (a *app) kpKeysCommand(f *kpFlags) *cobra.Command {
	var withCRN bool
	var limit, offset int
	c := &cobra.Command{Use: "keys", Short: "List the keys of the instance", Args: args(cobra.NoArgs),
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			if limit < 1 || offset < 0 {
				return usagef("--number-of-keys must be at least 1 and --starting-offset at least 0")
			}
			a.kpProgress("Retrieving keys...")
			var keys *kp.Keys
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				keys, err = c.GetKeys(ctx, limit, offset)
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(kpList(keys.Keys))
			}
			header := []string{"Key ID", "Key Name"}
			if withCRN {
				header = append(header, "CRN")
			}
			var rows [][]string
			for _, k := range keys.Keys {
				r := []string{kpText(k.ID), kpText(k.Name)}
				if withCRN {
					r = append(r, kpText(k.CRN))
				}
				rows = append(rows, r)
			}
			return kpTable(a.stdout, header, rows...)
		})}
	c.Flags().BoolVarP(&withCRN, "crn", "c", false, "include each key's cloud resource name (CRN)")
	c.Flags().IntVarP(&limit, "number-of-keys", "n", 200, "list at most this many keys")
	c.Flags().IntVarP(&offset, "starting-offset", "s", 0, "skip this many keys first (zero-based)")
	return c
}

// kpList returns s, or an empty slice for nil (JSON [] rather than null).
func kpList[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// kpKeyCommands are the subcommands of `kp key`.
func (a *app) kpKeyCommands(f *kpFlags) []*cobra.Command {
	keyCmd := func(use, short string, fn func(ctx context.Context, s *kpSession, args []string) error) *cobra.Command {
		n := len(strings.Fields(use)) - 1
		return &cobra.Command{Use: use, Short: short, Args: args(cobra.ExactArgs(n)),
			PreRunE: kpKeyArg, RunE: a.kpSessionRun(f, fn)}
	}
	return append([]*cobra.Command{
		a.kpCreate(f), a.kpShow(keyCmd), a.kpRotate(keyCmd), a.kpDelete(keyCmd),
		a.kpWrap(keyCmd), a.kpUnwrap(keyCmd), a.kpState(keyCmd, "disable"), a.kpState(keyCmd, "enable"),
		a.kpRestore(keyCmd), a.kpVersions(keyCmd), a.kpPolicies(keyCmd), a.kpPolicyUpdate(f),
		a.kpAlias(keyCmd, true), a.kpAlias(keyCmd, false),
		a.kpUpdate(keyCmd), a.kpSync(keyCmd),
	}, a.kpDualAuthCommands(keyCmd)...)
}

// kpKeyCmd makes a kp key subcommand on one key (see kpKeyCommands).
type kpKeyCmd func(use, short string, fn func(ctx context.Context, s *kpSession, args []string) error) *cobra.Command

func (a *app) kpCreate(f *kpFlags) *cobra.Command {
	var material, nonce, iv, description, ring string
	var standard bool
	var aliases []string
	c := &cobra.Command{Use: "create NAME", Short: "Create a root key (or a standard key), or import your own key", Args: args(cobra.ExactArgs(1)),
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, args []string) error {
			name := args[0]
			opts := []kp.CreateKeyOption{kp.WithDescription(description)}
			if material != "" {
				opts = append(opts, kp.WithPayload(material, &nonce, &iv, false))
			}
			if len(aliases) > 0 {
				opts = append(opts, kp.WithAliases(aliases))
			}
			// The client sends its key ring in the x-kms-key-ring header of every request.
			s.client.Config.KeyRing = ring
			a.kpProgress("Creating key: '%s', in instance: '%s'...", kpText(name), s.instance)
			var k *kp.Key
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				k, err = c.CreateKeyWithOptions(ctx, name, standard, opts...)
				return err
			})
			return a.kpPrintKey(err, k)
		})}
	c.PreRunE = func(*cobra.Command, []string) error {
		if (nonce == "") != (iv == "") {
			return usagef("give --encrypted-nonce and --iv together (both from kp import-token nonce-encrypt)")
		}
		if nonce != "" && material == "" {
			return usagef("--encrypted-nonce and --iv need --key-material: the key material encrypted by kp import-token key-encrypt")
		}
		if ring != "" {
			if err := checkRingRef("--key-ring", ring); err != nil {
				return err
			}
		}
		if nonce != "" && standard {
			return usagef("--encrypted-nonce and --iv import a root key: not with --standard-key")
		}
		for flag, v := range map[string]string{"key-material": material, "encrypted-nonce": nonce, "iv": iv} {
			if v != "" {
				if err := checkBase64(flag, v); err != nil {
					return err
				}
			}
		}
		return nil
	}
	c.Flags().StringVarP(&material, "key-material", "k", "", "base64 key material to import, or with -n and -v the key material encrypted by kp import-token key-encrypt")
	c.Flags().StringVarP(&nonce, "encrypted-nonce", "n", "", "the import token's nonce encrypted by kp import-token nonce-encrypt")
	c.Flags().StringVarP(&iv, "iv", "v", "", "the initialization vector of kp import-token nonce-encrypt")
	c.Flags().BoolVarP(&standard, "standard-key", "s", false, "create a standard key (extractable) instead of a root key")
	c.Flags().StringVarP(&description, "description", "D", "", "the key's description")
	c.Flags().StringSliceVarP(&aliases, "aliases", "a", nil, "aliases of the key (comma-separated or repeated; at most 5)")
	c.Flags().StringVar(&ring, "key-ring", "", "create the key in this key ring (default: the default key ring)")
	return c
}

func (a *app) kpShow(keyCmd kpKeyCmd) *cobra.Command {
	return keyCmd("show ID", "Show a key (with -o json, a standard key's payload too)", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Grabbing info for key id: %s...", args[0])
		var k *kp.Key
		raw, err := s.callRaw(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			if a.asJSON {
				k, err = c.GetKey(ctx, args[0]) // the payload of a standard key is what -o json is for
			} else {
				k, err = c.GetKeyMetadata(ctx, args[0])
			}
			return err
		})
		var v kpKeyView
		if err == nil {
			v, err = kpKeyViewOf(k, raw)
		}
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.emit(v)
		}
		if err := kpTable(a.stdout, []string{"Key ID", "Key Name", "Description", "Creation Date", "Expiration Date"}, kpKeyRow(k)); err != nil {
			return err
		}
		// A key with dual authorization delete: whether the first authorization was given.
		if rows := kpDualAuthRows(v.DualAuthDelete); rows != nil {
			fmt.Fprintln(a.stdout)
			return kpTable(a.stdout, []string{"Dual Authorization Delete", ""}, rows...)
		}
		return nil
	})
}

func (a *app) kpRotate(keyCmd kpKeyCmd) *cobra.Command {
	var material, nonce, iv string
	c := keyCmd("rotate ID", "Rotate a root key (rewrapping the volumes it protects here)", func(ctx context.Context, s *kpSession, args []string) error {
		var payload *kp.KeyPayload
		if material != "" {
			p := kp.NewKeyPayload(material, nonce, iv)
			if nonce != "" {
				p = p.WithRSA256()
			}
			payload = &p
		}
		a.kpProgress("Rotating root key...")
		defer a.passProcs()() // the rotation's rewrap pass is flush-bound (see flushProcs)
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) error { return c.RotateV2(ctx, args[0], payload) })
		if err == nil && s.remote != nil {
			// A remote service cannot call back: rewrap this machine's volumes of the key
			// now (the embedded one rewraps them as it rotates).
			err = a.kpSyncVolumes(ctx, s, args[0])
		}
		if err == nil {
			err = a.rewrapErr()
		}
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.kpEmitKey(ctx, s, args[0])
		}
		return nil
	})
	prev := c.PreRunE
	c.PreRunE = func(cmd *cobra.Command, args []string) error {
		if (nonce == "") != (iv == "") || (nonce != "" && material == "") {
			return usagef("give --encrypted-nonce and --iv together, with --key-material (see kp import-token)")
		}
		for flag, v := range map[string]string{"key-material": material, "encrypted-nonce": nonce, "iv": iv} {
			if v != "" {
				if err := checkBase64(flag, v); err != nil {
					return err
				}
			}
		}
		return prev(cmd, args)
	}
	c.Flags().StringVarP(&material, "key-material", "k", "", "new base64 key material (keys created with key material), or with -n and -v encrypted by kp import-token key-encrypt")
	c.Flags().StringVarP(&nonce, "encrypted-nonce", "n", "", "the import token's nonce encrypted by kp import-token nonce-encrypt")
	c.Flags().StringVarP(&iv, "iv", "v", "", "the initialization vector of kp import-token nonce-encrypt")
	return c
}

// kpSyncVolumes rewraps the volumes of this machine's registry that a remote rotation of
// key ref (an id or an alias) left on an older version.
func (a *app) kpSyncVolumes(ctx context.Context, s *kpSession, ref string) error {
	entries, err := a.reg.List()
	if err != nil {
		return fmt.Errorf("the key rotated, but listing this machine's volumes failed: %w", err)
	}
	var k *kp.Key
	if err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
		k, err = c.GetKeyMetadata(ctx, ref)
		return err
	}); err != nil {
		return fmt.Errorf("the key rotated, but reading it failed: %w; crkvol key sync %s rewraps its volumes", err, ref)
	}
	if !hasVolumeOf(entries, k.ID) {
		return nil
	}
	rep, err := a.mgr.Sync(ctx, k.ID)
	if err != nil {
		return fmt.Errorf("the key rotated, but rewrapping its volumes failed: %w; crkvol key sync %s retries", err, k.ID)
	}
	a.reports = append(a.reports, rep)
	return nil
}

// hasVolumeOf reports whether a registry entry is a volume of key id.
func hasVolumeOf(entries []volume.Entry, id string) bool {
	for _, e := range entries {
		if e.KeyID == id {
			return true
		}
	}
	return false
}

// kpEmitKey prints a key's metadata as JSON.
func (a *app) kpEmitKey(ctx context.Context, s *kpSession, ref string) error {
	var k *kp.Key
	raw, err := s.callRaw(ctx, func(ctx context.Context, c *kp.Client) (err error) {
		k, err = c.GetKeyMetadata(ctx, ref)
		return err
	})
	if err != nil {
		return err
	}
	v, err := kpKeyViewOf(k, raw)
	if err != nil {
		return err
	}
	return a.emit(v)
}

func (a *app) kpDelete(keyCmd kpKeyCmd) *cobra.Command {
	var force bool
	c := keyCmd("delete ID", "Delete a key", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Deleting key: %s, from instance: %s...", args[0], s.instance)
		var k *kp.Key
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			k, err = c.DeleteKey(ctx, args[0], kp.ReturnRepresentation, kp.ForceOpt{Force: force})
			return err
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		id := args[0]
		if k != nil && k.ID != "" {
			id = kpText(k.ID)
		}
		if a.asJSON {
			return a.emit(map[string]string{"id": id})
		}
		return kpTable(a.stdout, []string{"Deleted Key"}, []string{id})
	})
	c.Flags().BoolVarP(&force, "force", "f", false, "delete the key even though cloud resources are registered with it")
	return c
}

func (a *app) kpWrap(keyCmd kpKeyCmd) *cobra.Command {
	var plaintext string
	var aad []string
	c := keyCmd("wrap ID", "Wrap a data encryption key (generated when -p is not given)", func(ctx context.Context, s *kpSession, args []string) error {
		if plaintext != "" {
			if err := checkBase64("plaintext", plaintext); err != nil {
				return err
			}
		}
		a.kpProgress("Wrapping key...")
		var res *kp.KeyActionResponse
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			var pt []byte
			if plaintext != "" {
				pt = []byte(plaintext)
			}
			res, err = c.WrapV2(ctx, args[0], pt, aadOf(aad))
			return err
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			out := map[string]string{"Ciphertext": res.CipherText}
			if plaintext == "" {
				out["Plaintext"] = res.PlainText // the generated DEK: its one showing
			}
			return a.emit(out)
		}
		return kpTable(a.stdout, []string{"Ciphertext"}, []string{kpText(res.CipherText)})
	})
	c.Flags().StringVarP(&plaintext, "plaintext", "p", "", "the base64 data encryption key to wrap")
	c.Flags().StringSliceVarP(&aad, "aad", "a", nil, "additional authentication data (comma-separated); unwrap needs the same, in the same order")
	return c
}

// aadOf returns the AAD for the client, or nil for none.
func aadOf(aad []string) *[]string {
	if len(aad) == 0 {
		return nil
	}
	return &aad
}

func (a *app) kpUnwrap(keyCmd kpKeyCmd) *cobra.Command {
	var aad []string
	c := keyCmd("unwrap ID CIPHERTEXT", "Unwrap a data encryption key", func(ctx context.Context, s *kpSession, args []string) error {
		if err := checkBase64("CIPHERTEXT", args[1]); err != nil {
			return err
		}
		a.kpProgress("Unwrapping key...")
		var pt, rewrapped []byte
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			pt, rewrapped, err = c.UnwrapV2(ctx, args[0], []byte(args[1]), aadOf(aad))
			return err
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		defer clear(pt)
		if a.asJSON {
			return a.emit(map[string]string{"Plaintext": string(pt), "Rewrapped Plaintext": string(rewrapped)})
		}
		return kpTable(a.stdout, []string{"Plaintext", "Rewrapped Plaintext"}, []string{kpText(string(pt)), kpText(string(rewrapped))})
	})
	c.Flags().StringSliceVarP(&aad, "aad", "a", nil, "the additional authentication data given to wrap (comma-separated, same order)")
	return c
}

// kpState is kp key disable and kp key enable.
func (a *app) kpState(keyCmd kpKeyCmd, action string) *cobra.Command {
	short, doing := "Disable a key: suspend its encrypt and decrypt operations", "Disabling"
	if action == "enable" {
		short, doing = "Enable a disabled key", "Enabling"
	}
	return keyCmd(action+" ID", short, func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("%s key: '%s', in instance: '%s'...", doing, args[0], s.instance)
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) error {
			if action == "enable" {
				return c.EnableKey(ctx, args[0])
			}
			return c.DisableKey(ctx, args[0])
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			return a.kpEmitKey(ctx, s, args[0])
		}
		return nil
	})
}

func (a *app) kpRestore(keyCmd kpKeyCmd) *cobra.Command {
	return keyCmd("restore ID", "Restore a deleted key", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Restoring key: '%s', in instance: '%s'...", args[0], s.instance)
		var k *kp.Key
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			k, err = c.RestoreKey(ctx, args[0])
			return err
		})
		return a.kpPrintKey(err, k)
	})
}

func (a *app) kpVersions(keyCmd kpKeyCmd) *cobra.Command {
	var limit, offset uint32
	var total, all bool
	c := keyCmd("versions ID", "List the versions of a key", func(ctx context.Context, s *kpSession, args []string) error {
		opts := &kp.ListKeyVersionsOptions{Limit: &limit, Offset: &offset}
		if total {
			opts.TotalCount = &total
		}
		if all {
			opts.AllKeyStates = &all
		}
		a.kpProgress("Retrieving key Versions...")
		var vs *kp.KeyVersions
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			vs, err = c.ListKeyVersions(ctx, args[0], opts)
			return err
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		if a.asJSON {
			vs.KeyVersion = kpList(vs.KeyVersion)
			return a.emit(vs)
		}
		var rows [][]string
		for _, v := range vs.KeyVersion {
			rows = append(rows, []string{kpText(v.ID), kpRFC3339(v.CreationDate)})
		}
		return kpTable(a.stdout, []string{"Key Version ID", "Creation Date"}, rows...)
	})
	c.Flags().Uint32VarP(&limit, "number-of-key-versions", "n", 200, "list at most this many versions")
	c.Flags().Uint32VarP(&offset, "starting-offset", "s", 0, "skip this many versions first")
	c.Flags().BoolVarP(&total, "total-count", "t", false, "include the total number of versions (JSON metadata)")
	c.Flags().BoolVarP(&all, "all-key-states", "a", false, "accepted for compatibility with ibmcloud kp; crkvol lists the versions of a key in every state")
	return c
}

func (a *app) kpPolicies(keyCmd kpKeyCmd) *cobra.Command {
	var rotation, dual bool
	c := keyCmd("policies ID", "List a key's policies (rotation, dual authorization delete)", func(ctx context.Context, s *kpSession, args []string) error {
		a.kpProgress("Retrieving policy details for key ID: %s...", args[0])
		var ps []kp.Policy
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			ps, err = c.GetPolicies(ctx, args[0])
			return err
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		var out []kpPolicyView
		for _, p := range ps {
			if (rotation || dual) && !(rotation && p.Rotation != nil || dual && p.DualAuth != nil) {
				continue
			}
			v := kpPolicyView{Policy: p}
			if d := p.DualAuth; d != nil && d.Enabled != nil {
				v.DualAuth = &kpapi.DualAuth{Enabled: *d.Enabled}
				if *d.Enabled {
					// Whether the key is set for deletion is in the key, not its policy.
					var k *kp.Key
					raw, err := s.callRaw(ctx, func(ctx context.Context, c *kp.Client) (err error) {
						k, err = c.GetKeyMetadata(ctx, args[0])
						return err
					})
					if err != nil {
						return err
					}
					kv, err := kpKeyViewOf(k, raw)
					if err != nil {
						return err
					}
					if kv.DualAuthDelete != nil {
						v.DualAuth = kv.DualAuthDelete
					}
				}
			}
			out = append(out, v)
		}
		if a.asJSON {
			return a.emit(kpList(out))
		}
		for _, p := range out {
			if err := kpTable(a.stdout, []string{"", ""}, append(kpPolicyRows(p.Policy), kpDualAuthRows(p.DualAuth)...)...); err != nil {
				return err
			}
		}
		return nil
	})
	c.Flags().BoolVarP(&rotation, "rotation", "r", false, "show the rotation policy")
	c.Flags().BoolVarP(&dual, "dual-auth", "d", false, "show the dual authorization delete policy")
	return c
}

// kpPolicyUpdate is `kp key policy-update`, whose one subcommand here is rotation.
func (a *app) kpPolicyUpdate(f *kpFlags) *cobra.Command {
	g := group("policy-update", "Update a key's policies")
	var months int
	var enable, disable bool
	rot := &cobra.Command{Use: "rotation ID", Short: "Set, enable or disable a key's rotation policy", Args: args(cobra.ExactArgs(1)),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if enable && disable {
				return usagef("give --enable or --disable, not both")
			}
			if cmd.Flags().Changed("monthly-interval") && (months < 1 || months > 12) {
				return usagef("--monthly-interval %d: the rotation interval must be 1 to 12 months", months)
			}
			return kpKeyArg(cmd, args)
		},
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, args []string) error {
			a.kpProgress("Updating rotation policy for key ID: %s...", args[0])
			var p *kp.Policy
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
				switch {
				case months == 0 && enable:
					p, err = c.EnableRotationPolicy(ctx, args[0])
				case months == 0 && disable:
					p, err = c.DisableRotationPolicy(ctx, args[0])
				default:
					m := months
					if m == 0 {
						m = 1 // the plug-in's default interval
					}
					if enable || disable {
						p, err = c.SetRotationPolicy(ctx, args[0], m, enable)
					} else {
						p, err = c.SetRotationPolicy(ctx, args[0], m)
					}
				}
				return err
			})
			return a.kpPrintPolicy(err, p)
		})}
	rot.Flags().IntVarP(&months, "monthly-interval", "m", 0, "rotate the key every this many months (1-12; default 1 when neither -e nor -d is given)")
	rot.Flags().BoolVarP(&enable, "enable", "e", false, "enable the rotation policy")
	rot.Flags().BoolVarP(&disable, "disable", "d", false, "disable the rotation policy (it keeps its interval)")
	g.AddCommand(rot, a.kpDualAuthPolicyUpdate(f))
	return g
}

// kpAlias is kp key alias-create and kp key alias-delete.
func (a *app) kpAlias(keyCmd kpKeyCmd, create bool) *cobra.Command {
	var alias string
	name, short := "alias-delete", "Delete an alias of a key"
	if create {
		name, short = "alias-create", "Create an alias: another name of a key, usable wherever a key id is"
	}
	c := keyCmd(name+" ID", short, func(ctx context.Context, s *kpSession, args []string) error {
		id := args[0]
		if create {
			a.kpProgress("Creating alias: '%s', for key: '%s', in instance: '%s'...", alias, id, s.instance)
		} else {
			a.kpProgress("Deleting alias: '%s', of key: '%s', in instance: '%s'...", alias, id, s.instance)
		}
		var ka *kp.KeyAlias
		err := s.call(ctx, func(ctx context.Context, c *kp.Client) (err error) {
			if create {
				ka, err = c.CreateKeyAlias(ctx, alias, id)
				return err
			}
			return c.DeleteKeyAlias(ctx, alias, id)
		})
		if err := a.kpDone(err); err != nil {
			return err
		}
		if ka == nil {
			ka = &kp.KeyAlias{KeyID: id, Alias: alias}
		}
		if a.asJSON {
			return a.emit(ka)
		}
		if !create {
			return nil
		}
		return kpTable(a.stdout, []string{"Key ID", "Key Alias"}, []string{kpText(ka.KeyID), kpText(ka.Alias)})
	})
	// The alias is -a ALIAS, as the plug-in's synopsis has it, or a second argument, as its
	// example does.
	c.Args = args(cobra.RangeArgs(1, 2))
	c.Use = name + " ID [ALIAS]"
	prev := c.PreRunE
	c.PreRunE = func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 2 && alias != "" && args[1] != alias:
			return usagef("give the alias once: as -a ALIAS or as the second argument")
		case len(args) == 2:
			alias = args[1]
		case alias == "":
			return usagef("missing the alias: give -a ALIAS")
		}
		if err := checkKeyRef("ALIAS", alias); err != nil {
			return err
		}
		return prev(cmd, args)
	}
	c.Flags().StringVarP(&alias, "alias", "a", "", "the alias")
	return c
}

// kpRegistrationsCommand is `kp registrations`.
func (a *app) kpRegistrationsCommand(f *kpFlags) *cobra.Command {
	var keyID, crnQuery string
	c := &cobra.Command{Use: "registrations", Short: "List the registrations of cloud resources with root keys", Args: args(cobra.NoArgs),
		PreRunE: func(*cobra.Command, []string) error {
			if keyID != "" {
				return checkKeyRef("--key-id", keyID)
			}
			return nil
		},
		RunE: a.kpSessionRun(f, func(ctx context.Context, s *kpSession, _ []string) error {
			a.kpProgress("Retrieving registrations...")
			var regs []kp.Registration
			err := s.call(ctx, func(ctx context.Context, c *kp.Client) error {
				r, err := c.ListRegistrations(ctx, keyID, crnQuery)
				if r != nil {
					regs = r.Registrations
				}
				return err
			})
			if err := a.kpDone(err); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(kpList(regs))
			}
			var rows [][]string
			for _, r := range regs {
				rows = append(rows, []string{kpText(r.KeyID), kpText(r.ResourceCrn), kpText(r.KeyVersion.ID), fmt.Sprint(r.PreventKeyDeletion)})
			}
			return kpTable(a.stdout, []string{"Key ID", "Resource CRN", "Key Version ID", "Prevent Key Deletion"}, rows...)
		})}
	c.Flags().StringVarP(&keyID, "key-id", "k", "", "list the registrations of this key (id or alias)")
	c.Flags().StringVarP(&crnQuery, "crn-query", "c", "", "list the registrations whose resource CRN matches this pattern (* matches any text)")
	return c
}

// kpPrintPolicy ends a command that sets a key policy: FAILED and the error, or SUCCESS and
// the policy (an empty one if the service answered none) as JSON or a table.
func (a *app) kpPrintPolicy(err error, p *kp.Policy) error {
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
}

// kpPrintKey ends a command that answers a key: FAILED and the error, or SUCCESS and the key
// as JSON or its id and name in a table.
func (a *app) kpPrintKey(err error, k *kp.Key) error {
	if err := a.kpDone(err); err != nil {
		return err
	}
	if a.asJSON {
		return a.emit(k)
	}
	return kpTable(a.stdout, []string{"Key ID", "Key Name"}, []string{kpText(k.ID), kpText(k.Name)})
}
