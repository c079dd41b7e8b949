package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/ident"
	"crkvol/volume/kms"
)

// Keys as both modes show them: the embedded service's keys and a remote service's are both
// turned into the API's form (kpapi.Key) and printed by the same functions, so that local and
// remote mode print the same thing.

// keyJSON is a key as Key Protect's API shows it (lastRotateDate absent before the first
// rotation, as other absent times are).
type keyJSON struct {
	kpapi.Key
}

// versionJSON is a key version with, where known, its registrations and whether its
// material is destroyed.
type versionJSON struct {
	ID            string `json:"id"`
	CreationDate  string `json:"creationDate"`
	Registrations *int   `json:"registrations,omitempty"`
	Destroyed     *bool  `json:"destroyed,omitempty"`
}

func toKeyJSON(k kpapi.Key) keyJSON {
	return keyJSON{Key: k}
}

// stateWord is a Key Protect state number as a word and the number, as in "active (1)".
func stateWord(n int) string {
	return fmt.Sprintf("%s (%d)", crk.State(n), n)
}

// typeWord is "root" or "standard", with ", imported" for imported material.
func typeWord(k kpapi.Key) string {
	kind := "root"
	if k.Extractable {
		kind = "standard"
	}
	if k.Imported {
		kind += ", imported"
	}
	return kind
}

// months is "1 month" or "N months".
func months(n int) string { return fmt.Sprintf("%d %s", n, plural(n, "month", "months")) }

// showKey prints a key, of either mode. Text a remote service sent is escaped.
func (a *app) showKey(k kpapi.Key) error {
	if a.asJSON {
		return a.emit(toKeyJSON(k))
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Key ID\t%s\n", shown(k.ID))
	fmt.Fprintf(w, "Name\t%s\n", shown(k.Name))
	if k.Description != "" {
		fmt.Fprintf(w, "Description\t%s\n", shown(k.Description))
	}
	if len(k.Aliases) > 0 {
		aliases := make([]string, len(k.Aliases))
		for i, al := range k.Aliases {
			aliases[i] = shown(al)
		}
		fmt.Fprintf(w, "Aliases\t%s\n", strings.Join(aliases, ", "))
	}
	if k.KeyRingID != "" && k.KeyRingID != crk.DefaultKeyRing {
		fmt.Fprintf(w, "Key ring\t%s\n", shown(k.KeyRingID))
	}
	fmt.Fprintf(w, "Type\t%s\n", typeWord(k))
	fmt.Fprintf(w, "State\t%s\n", stateWord(k.State))
	fmt.Fprintf(w, "CRN\t%s\n", shown(k.CRN))
	if k.KeyVersion != nil {
		fmt.Fprintf(w, "Version\t%s\n", shown(k.KeyVersion.ID))
	}
	if k.CreationDate != "" {
		fmt.Fprintf(w, "Created\t%s\n", shown(k.CreationDate))
	}
	if k.LastRotateDate != "" {
		fmt.Fprintf(w, "Last rotated\t%s\n", shown(k.LastRotateDate))
	}
	if p := k.Rotation; p != nil {
		fmt.Fprintf(w, "Rotation policy\tevery %s (enabled: %v)\n", months(p.IntervalMonth), p.Enabled)
	}
	if k.Deleted {
		fmt.Fprintf(w, "Deleted\t%s\n", shown(k.DeletionDate))
	}
	return w.Flush()
}

// showKeys prints a key list, of either mode, oldest first (keys created in the same second
// by name, then id).
func (a *app) showKeys(keys []kpapi.Key) error {
	slices.SortStableFunc(keys, func(x, y kpapi.Key) int {
		return cmp.Or(strings.Compare(x.CreationDate, y.CreationDate), strings.Compare(x.Name, y.Name), strings.Compare(x.ID, y.ID))
	})
	if a.asJSON {
		out := []keyJSON{}
		for _, k := range keys {
			out = append(out, toKeyJSON(k))
		}
		return a.emit(map[string]any{"metadata": map[string]any{"collectionType": kpapi.TypeKey, "collectionTotal": len(out)}, "resources": out})
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY ID\tNAME\tTYPE\tSTATE\tVERSION")
	for _, k := range keys {
		v := ""
		if k.KeyVersion != nil {
			v = k.KeyVersion.ID
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", shown(k.ID), shown(k.Name), typeWord(k), crk.State(k.State), shown(v))
	}
	return w.Flush()
}

// showVersions prints a version list, newest first, of either mode; what a service does not
// say (registrations, material) is "-" (omitted in JSON).
func (a *app) showVersions(vs []versionJSON) error {
	if a.asJSON {
		return a.emit(map[string]any{"metadata": map[string]any{"collectionType": kpapi.TypeKeyVersion, "collectionTotal": len(vs)}, "resources": vs})
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VERSION\tCREATED\tREGISTRATIONS\tMATERIAL")
	for _, v := range vs {
		regs, m := "-", "-"
		if v.Registrations != nil {
			regs = fmt.Sprint(*v.Registrations)
		}
		if v.Destroyed != nil {
			m = "kept"
			if *v.Destroyed {
				m = "destroyed"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", shown(v.ID), shown(v.CreationDate), regs, m)
	}
	return w.Flush()
}

// showRotated prints a rotation, of either mode: the key's new version, then the rewrap
// passes it triggered.
func (a *app) showRotated(k kpapi.Key) error {
	if a.asJSON {
		return a.emit(map[string]any{"key": toKeyJSON(k), "rewraps": reportsJSON(a.reports)})
	}
	v := ""
	if k.KeyVersion != nil {
		v = k.KeyVersion.ID
	}
	fmt.Fprintf(a.stdout, "rotated key %s to version %s\n", shown(k.ID), shown(v))
	return a.printReports()
}

// errAmbiguousName matches the error of a key name that several keys have.
var errAmbiguousName = errors.New("key name is ambiguous")

// ambiguousNameError is a key name that several keys have, with their ids.
type ambiguousNameError struct {
	name string
	ids  []string
}

func (e *ambiguousNameError) Error() string {
	return fmt.Sprintf("key name %q is ambiguous: %d keys have it (%s)", e.name, len(e.ids), strings.Join(e.ids, ", "))
}

func (e *ambiguousNameError) Is(target error) bool { return target == errAmbiguousName }

// resolveKey turns a command's key argument into a key id, in either mode: a key id in any
// case (an argument shaped like an id is always an id, never a name), an alias of a key (the
// service resolves it: aliases are unique in the instance), or the name of exactly one key
// of the instance. Names are matched among the keys that are not deleted, then, if none
// matches, among the deleted ones; with deleted (restore, purge) among the deleted ones
// only. The id, never the alias or name, is what a command goes on with: what it registers
// or stores names the key by its id.
func (a *app) resolveKey(ctx context.Context, ref string, deleted bool) (string, error) {
	if crk.IsKeyIDShape(ref) { // as the service decides: an alias is never shaped so
		return strings.ToLower(ref), nil
	}
	if crk.CheckAlias(ref) == nil {
		id, err := a.resolveAlias(ctx, ref)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, crk.ErrKeyNotFound) {
			return "", fmt.Errorf("looking up key alias %q: %w", ref, err)
		}
	}
	passes := [][]int{nil, {int(crk.StateDestroyed)}}
	if deleted {
		passes = passes[1:]
	}
	for _, states := range passes {
		keys, err := a.listKeys(ctx, states...)
		if err != nil {
			return "", fmt.Errorf("looking up key name %q: %w", ref, err)
		}
		var ids []string
		for _, k := range keys {
			if k.Name == ref {
				ids = append(ids, k.ID)
			}
		}
		switch len(ids) {
		case 0:
			continue
		case 1:
			return ids[0], nil
		}
		for i := range ids {
			ids[i] = shown(ids[i])
		}
		return "", withHint(&ambiguousNameError{name: ref, ids: ids}, "name the key by its id")
	}
	return "", fmt.Errorf("%w: no key has the id or name %q", crk.ErrKeyNotFound, ref)
}

// resolveAlias returns the id of the key alias names, in either mode (crk.ErrKeyNotFound
// when no key has it).
func (a *app) resolveAlias(ctx context.Context, alias string) (string, error) {
	if a.remote != nil {
		return a.remote.ResolveKey(ctx, alias)
	}
	return a.svc.ResolveKey(ctx, alias)
}

// listKeys lists the keys in these states (Key Protect's numbers; none: every state but
// destroyed), in either mode.
func (a *app) listKeys(ctx context.Context, states ...int) ([]kpapi.Key, error) {
	if a.remote != nil {
		return a.remote.ListKeysIn(ctx, states...)
	}
	opts := crk.ListOptions{Live: true} // no purged key, as a remote service lists none
	for _, s := range states {
		opts.States = append(opts.States, crk.State(s))
	}
	keys, err := a.svc.ListKeys(ctx, opts)
	if err != nil {
		return nil, err
	}
	out := make([]kpapi.Key, 0, len(keys))
	for i := range keys {
		out = append(out, kpapi.FromKey(&keys[i]))
	}
	return out, nil
}

// keyOp runs a key operation in either mode and returns the key in the API's form: local on
// the embedded service, remote on the remote one.
func (a *app) keyOp(local func() (*crk.Key, error), remote func() (kpapi.Key, error)) (kpapi.Key, error) {
	if a.remote != nil {
		return remote()
	}
	k, err := local()
	if err != nil {
		return kpapi.Key{}, err
	}
	return kpapi.FromKey(k), nil
}

// keyMetadata returns a key's metadata, in either mode.
func (a *app) keyMetadata(ctx context.Context, id string) (kpapi.Key, error) {
	return a.keyOp(func() (*crk.Key, error) { return a.svc.GetKeyMetadata(ctx, id) }, func() (kpapi.Key, error) {
		k, err := a.remote.KeyMetadata(ctx, id)
		if err != nil {
			return kpapi.Key{}, err
		}
		return kms.APIKey(k), nil
	})
}

// keyVersions lists a key's versions with their registrations, in either mode.
func (a *app) keyVersions(ctx context.Context, id string) ([]versionJSON, error) {
	out := []versionJSON{}
	if a.remote == nil {
		vs, err := a.svc.ListVersions(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			n, d := v.Registrations, v.Destroyed
			out = append(out, versionJSON{ID: v.ID, CreationDate: rfc3339(v.CreationDate), Registrations: &n, Destroyed: &d})
		}
		return out, nil
	}
	vs, err := a.remote.Versions(ctx, id)
	if err != nil {
		return nil, err
	}
	regs, err := a.remote.ListRegistrations(ctx, id)
	if err != nil {
		return nil, err
	}
	for _, v := range vs {
		n := 0
		for _, r := range regs {
			if r.KeyVersion.ID == v.ID {
				n++
			}
		}
		out = append(out, versionJSON{ID: v.ID, CreationDate: v.CreationDate, Registrations: &n, Destroyed: v.Destroyed})
	}
	return out, nil
}

// keyRegistrations lists the registrations of a key, in either mode.
func (a *app) keyRegistrations(ctx context.Context, id string) ([]kpapi.Registration, error) {
	if a.remote != nil {
		return a.remote.ListRegistrations(ctx, id)
	}
	regs, err := a.svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: id})
	if err != nil {
		return nil, err
	}
	out := make([]kpapi.Registration, 0, len(regs))
	for _, r := range regs {
		out = append(out, kpapi.FromRegistration(r))
	}
	return out, nil
}

// showRegistrations prints a key's registrations, of either mode.
func (a *app) showRegistrations(regs []kpapi.Registration) error {
	if a.asJSON {
		if regs == nil {
			regs = []kpapi.Registration{}
		}
		return a.emit(map[string]any{"metadata": map[string]any{"collectionType": kpapi.TypeRegistration, "collectionTotal": len(regs)}, "resources": regs})
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "RESOURCE CRN\tKEY VERSION\tPREVENT DELETION\tRESOURCE")
	for _, r := range regs {
		fmt.Fprintf(w, "%s\t%s\t%v\t%s\n", shown(r.ResourceCRN), shown(r.KeyVersion.ID), r.PreventKeyDeletion, a.resourceName(r.ResourceCRN))
	}
	return w.Flush()
}

// resourceName names a registered resource from this state directory: "image NAME" for a
// catalog image, "volume PATH" for a registered volume, "-" for another host's resource (or
// when the registry is not open).
func (a *app) resourceName(crn string) string {
	if a.reg == nil {
		return "-"
	}
	if ident.IsImageCRN(crn) {
		if e, err := a.reg.ImageByCRN(crn); err == nil {
			return "image " + e.Name
		}
		return "-"
	}
	if e, err := a.reg.Get(crn); err == nil {
		return "volume " + e.Path
	}
	return "-"
}
