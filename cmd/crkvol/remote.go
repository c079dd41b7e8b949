package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	kp "github.com/IBM/keyprotect-go-client"

	"crkvol/crk/kpapi"
	"crkvol/volume/kms"
)

// Key commands against a remote Key Protect-compatible service (--kms-url).

// shown is a server's text as a terminal may show it: control characters escaped (a remote
// service must not move the cursor or forge lines), capped at 1 KiB.
func shown(s string) string { return kpapi.Printable(s, 1<<10) }

func (a *app) printRemoteKey(k *kp.Key) error {
	if a.asJSON {
		return a.emit(k)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Key ID\t%s\n", shown(k.ID))
	fmt.Fprintf(w, "Name\t%s\n", shown(k.Name))
	fmt.Fprintf(w, "Extractable\t%v\n", k.Extractable)
	fmt.Fprintf(w, "State\t%d\n", k.State)
	fmt.Fprintf(w, "CRN\t%s\n", shown(k.CRN))
	if k.KeyVersion != nil {
		fmt.Fprintf(w, "Version\t%s\n", shown(k.KeyVersion.ID))
	}
	return w.Flush()
}

func (a *app) remoteCreate(ctx context.Context, name string, material []byte, standard bool) error {
	k, err := a.remote.CreateKey(ctx, kms.KeyOptions{Name: name, Standard: standard, Material: material})
	if errors.Is(err, kms.ErrOutcomeUnknown) {
		return fmt.Errorf("%w; run crkvol key list to see whether it was before trying again", err)
	}
	if err != nil {
		return err
	}
	return a.printRemoteKey(k)
}

func (a *app) remoteList(ctx context.Context) error {
	keys, err := a.remote.ListKeys(ctx)
	if err != nil {
		return err
	}
	if a.asJSON {
		return a.emit(keys)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY ID\tNAME\tSTATE")
	for _, k := range keys.Keys {
		fmt.Fprintf(w, "%s\t%s\t%d\n", shown(k.ID), shown(k.Name), k.State)
	}
	return w.Flush()
}

func (a *app) remoteShow(ctx context.Context, id string) error {
	k, err := a.remote.KeyMetadata(ctx, id)
	if err != nil {
		return err
	}
	return a.printRemoteKey(k)
}

func (a *app) remoteVersions(ctx context.Context, id string) error {
	vs, err := a.remote.KeyVersions(ctx, id)
	if err != nil {
		return err
	}
	if a.asJSON {
		return a.emit(vs)
	}
	for _, v := range vs.KeyVersion {
		fmt.Fprintln(a.stdout, shown(v.ID))
	}
	return nil
}

// remoteRotate rotates on the service, then rewraps this machine's registered volumes of
// the key (a remote service cannot call a hook).
func (a *app) remoteRotate(ctx context.Context, id string, material []byte) error {
	err := a.remote.RotateKey(ctx, id, material)
	if errors.Is(err, kms.ErrOutcomeUnknown) {
		return fmt.Errorf("%w; run crkvol key versions %s to see whether it did: if so, crkvol key sync %s rewraps the volumes", err, id, id)
	}
	if err != nil {
		return err
	}
	return a.remoteSync(ctx, id, "key rotate")
}

func (a *app) remoteSync(ctx context.Context, id, what string) error {
	rep, err := a.mgr.Sync(ctx, id)
	if err != nil {
		return err
	}
	a.reports = append(a.reports, rep)
	if a.asJSON {
		return a.emit(map[string]any{"rewraps": reportsJSON(a.reports)})
	}
	fmt.Fprintf(a.stdout, "%s: key %s done\n", what, id)
	if err := a.printReports(); err != nil {
		return err
	}
	return rewrapFailed("the key rotated", a.reg, rep)
}
