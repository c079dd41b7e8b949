package main

import (
	"context"
	"encoding/base64"
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
	c := a.remote.Client()
	var k *kp.Key
	err := kms.ClientCall(func() (err error) {
		switch {
		case standard && material != nil:
			k, err = c.CreateImportedStandardKey(ctx, name, nil, base64.StdEncoding.EncodeToString(material))
		case standard:
			k, err = c.CreateStandardKey(ctx, name, nil)
		case material != nil:
			k, err = c.CreateImportedRootKey(ctx, name, nil, base64.StdEncoding.EncodeToString(material), "", "")
		default:
			k, err = c.CreateRootKey(ctx, name, nil)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("key create: %w", err)
	}
	return a.printRemoteKey(k)
}

func (a *app) remoteList(ctx context.Context) error {
	var keys *kp.Keys
	err := kms.ClientCall(func() (err error) {
		keys, err = a.remote.Client().GetKeys(ctx, 0, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("key list: %w", err)
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
	var k *kp.Key
	err := kms.ClientCall(func() (err error) {
		k, err = a.remote.Client().GetKeyMetadata(ctx, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("key show: %w", err)
	}
	return a.printRemoteKey(k)
}

func (a *app) remoteVersions(ctx context.Context, id string) error {
	var vs *kp.KeyVersions
	err := kms.ClientCall(func() (err error) {
		vs, err = a.remote.Client().ListKeyVersions(ctx, id, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("key versions: %w", err)
	}
	if a.asJSON {
		return a.emit(vs)
	}
	for _, v := range vs.KeyVersion {
		fmt.Fprintln(a.stdout, v.ID)
	}
	return nil
}

// remoteRotate rotates on the service, then rewraps this machine's registered volumes of
// the key (a remote service cannot call a hook).
func (a *app) remoteRotate(ctx context.Context, id string, material []byte) error {
	payload := ""
	if material != nil {
		payload = base64.StdEncoding.EncodeToString(material)
	}
	if err := kms.ClientCall(func() error { return a.remote.Client().Rotate(ctx, id, payload) }); err != nil {
		return fmt.Errorf("key rotate: %w", err)
	}
	return a.remoteSync(ctx, id, "key rotate")
}

func (a *app) remoteSync(ctx context.Context, id, what string) error {
	rep, err := a.mgr.Sync(ctx, id)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	a.reports = append(a.reports, rep)
	if a.asJSON {
		return a.emit(map[string]any{"rewraps": reportsJSON(a.reports)})
	}
	fmt.Fprintf(a.stdout, "%s: key %s done\n", what, id)
	if err := a.printReports(); err != nil {
		return err
	}
	return rep.Err()
}
