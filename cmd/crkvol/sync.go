package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"crkvol/crk"
	"crkvol/internal/ident"
	"crkvol/volume"
)

// keySync is `key sync`, embedded or remote: it asks the key service to renotify the key's
// associated resources, then rewraps this machine's volumes of the key that lag behind its
// latest version, in one pass with one report. Key Protect allows the renotification once an
// hour; the rewrap is always allowed, so a refused renotification is a note, not a failure.
func (a *app) keySync(ctx context.Context, id string) error {
	renotified, err := a.renotify(ctx, id)
	if err != nil {
		return err
	}
	rep, err := a.mgr.Sync(ctx, id) // the stale registrations, and tokens that lag behind theirs
	if err != nil {
		return err
	}
	if a.remote != nil { // a remote Manager has no OnReport (nothing rotates in-process)
		a.reports = append(a.reports, rep)
	}
	if a.asJSON {
		if err := a.emit(map[string]any{"renotified": renotified, "rewraps": reportsJSON([]*volume.Report{rep})}); err != nil {
			return err
		}
	} else if err := a.printReport(rep); err != nil {
		return err
	}
	return rewrapFailed("", a.reg, rep)
}

// renotify sends the key service's sync ("sync associated resources") for key id. A refusal
// because the key was synced within the hour is reported on one line and is not an error:
// it reports false.
func (a *app) renotify(ctx context.Context, id string) (bool, error) {
	var err error
	if a.remote != nil {
		err = a.remote.SyncKey(ctx, id)
	} else {
		// The embedded service's renotification runs this process's Manager as a hook; the
		// Manager's own Sync below does that pass, and more, once: unsubscribe it.
		a.mgr.Close()
		err = a.svc.SyncKey(ctx, id)
	}
	if errors.Is(err, crk.ErrTooEarly) {
		fmt.Fprintf(a.stderr, "crkvol: key sync: the key service was not renotified (%s): rewrapping this machine's volumes all the same\n", tooEarlyDetail(err))
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("renotifying the key's resources: %w", err)
	}
	return true, nil
}

// tooEarlyDetail is the part of an ErrTooEarly error after the sentinel's text ("key X was
// synced at T; sync again from U"), or the whole error text if it has none.
func tooEarlyDetail(err error) string {
	msg := errorText(err)
	if i := strings.LastIndex(msg, crk.ErrTooEarly.Error()+": "); i >= 0 {
		return msg[i+len(crk.ErrTooEarly.Error())+2:]
	}
	return msg
}

// failedImages counts the catalog images among a report's failures (Failed holds volumes
// and images, by CRN).
func failedImages(r *volume.Report) int {
	n := 0
	for crn := range r.Failed {
		if ident.IsImageCRN(crn) {
			n++
		}
	}
	return n
}

// printReport prints one rewrap pass: a line for the volumes and, when the pass looked at
// catalog images, one for the images, whose WDEKs are rewrapped in the catalog (their files
// are never written).
func (a *app) printReport(r *volume.Report) error {
	imagesFailed := failedImages(r)
	notStarted := ""
	if r.NotStarted > 0 {
		notStarted = fmt.Sprintf(", not started %d (stopped)", r.NotStarted)
	}
	fmt.Fprintf(a.stdout, "rewrapped %d of %d volumes to version %s (already current %d, failed %d%s, %d bytes of headers written, 0 bytes of data re-encrypted)\n",
		r.Rewrapped, r.Volumes, shown(r.NewVersion), r.AlreadyCurrent, len(r.Failed)-imagesFailed, notStarted, r.BytesWritten)
	if r.Images > 0 || imagesFailed > 0 {
		rereg := ""
		if r.ImagesReregistered > 0 {
			rereg = fmt.Sprintf(", registered again %d (their registration was missing)", r.ImagesReregistered)
		}
		fmt.Fprintf(a.stdout, "rewrapped %d of %d images to version %s (already current %d, failed %d%s; their WDEKs, in the catalog: the image files are not written)\n",
			r.ImagesRewrapped, r.Images, shown(r.NewVersion), r.ImagesAlreadyCurrent, imagesFailed, rereg)
	}
	crns := make([]string, 0, len(r.Failed))
	for crn := range r.Failed {
		crns = append(crns, crn)
	}
	slices.Sort(crns)
	for _, crn := range crns {
		fmt.Fprintf(a.stdout, "  failed %s: %v\n", crn, r.Failed[crn])
	}
	if r.Elsewhere > 0 {
		fmt.Fprintf(a.stdout, "  %d more volumes of the key on older versions are not in this state directory's registry: their own hosts rewrap them (crkvol agent there, or crkvol key sync %s there)\n", r.Elsewhere, r.KeyID)
	}
	return nil
}

// rewrapFailure is the error of a command whose rewrap pass left volumes on an older key
// version: its text counts them by cause, its hints say what fixes each cause, and it
// wraps the report's error (errors.Is finds each volume's).
type rewrapFailure struct {
	msg string
	err error
}

func (e *rewrapFailure) Error() string { return e.msg }
func (e *rewrapFailure) Unwrap() error { return e.err }

// failureClass is one cause of a failed rewrap, with what fixes it.
type failureClass struct {
	// what names the cause; byCRN lists the volumes by CRN rather than by path; at comes
	// before the list.
	what, at string
	byCRN    bool
	// is reports whether a volume's error has this cause.
	is func(error) bool
	// fix says what to do, for key keyID and the listed volumes.
	fix func(keyID string, items []string) string
}

// failureClasses are the causes of failed rewraps, most specific first; the last one takes
// every other error (a network or I/O failure: trying again may work).
var failureClasses = []failureClass{
	{what: "not in this machine's volume registry", byCRN: true,
		is: func(err error) bool { return errors.Is(err, volume.ErrNotRegistered) },
		fix: func(key string, _ []string) string {
			return "run crkvol key sync " + key + " on the machine whose registry has them"
		}},
	{what: "image moved or replaced", at: "registered at ",
		is: func(err error) bool {
			return errors.Is(err, volume.ErrNotRegisteredImage) || errors.Is(err, fs.ErrNotExist)
		},
		fix: func(key string, _ []string) string {
			return "register the image where it is now with crkvol volume register IMG, then run crkvol key sync " + key
		}},
	{what: "key suspended",
		is: func(err error) bool { return errors.Is(err, crk.ErrKeySuspended) },
		fix: func(key string, _ []string) string {
			return "enable the key with crkvol key enable " + key + ", then run crkvol key sync " + key
		}},
	{what: "key deleted",
		is: func(err error) bool { return errors.Is(err, crk.ErrKeyDestroyed) },
		fix: func(key string, _ []string) string {
			return "restore the key with crkvol key restore " + key + " (within 30 days of its deletion), then run crkvol key sync " + key
		}},
	{what: "key refused by the key service",
		is: func(err error) bool { return errors.Is(err, volume.ErrKeyRefused) },
		fix: func(key string, _ []string) string {
			return "see crkvol key show " + key + " for the key's state; once the key service accepts the key, run crkvol key sync " + key
		}},
	{what: "image unhealthy",
		is: func(err error) bool { return errors.Is(err, volume.ErrUnhealthy) },
		fix: func(_ string, items []string) string {
			if len(items) == 1 {
				return "see crkvol volume status " + items[0]
			}
			return "see crkvol volume status IMG for each"
		}},
	{what: "not reached",
		is:  func(error) bool { return true },
		fix: func(key string, _ []string) string { return "run crkvol key sync " + key + " to retry" }},
}

// maxListed is how many volumes a hint names before "and N more".
const maxListed = 3

// rewrapFailed returns nil if rep has no failures, else an error counting them by cause,
// with one hint per cause naming its volumes (by registered path, from reg if it has them)
// and the command that fixes it. rotated, if not empty, starts the message ("the key
// rotated").
func rewrapFailed(rotated string, reg *volume.Registry, rep *volume.Report) error {
	err := rep.Err()
	if err == nil {
		return nil
	}
	items := make([][]string, len(failureClasses))
	crns := make([]string, 0, len(rep.Failed))
	for crn := range rep.Failed {
		crns = append(crns, crn)
	}
	slices.Sort(crns)
	for _, crn := range crns {
		for i, c := range failureClasses {
			if !c.is(rep.Failed[crn]) {
				continue
			}
			item := crn
			switch {
			case ident.IsImageCRN(crn):
				item = "image " + crn
				if reg != nil {
					if e, gerr := reg.ImageByCRN(crn); gerr == nil {
						item = "image " + e.Name
					}
				}
			case !c.byCRN && reg != nil:
				if e, gerr := reg.Get(crn); gerr == nil {
					item = e.Path
				}
			}
			items[i] = append(items[i], item)
			break
		}
	}
	var causes, hints []string
	for i, c := range failureClasses {
		n := len(items[i])
		if n == 0 {
			continue
		}
		causes = append(causes, fmt.Sprintf("%d %s", n, c.what))
		listed := strings.Join(items[i][:min(n, maxListed)], ", ")
		if n > maxListed {
			listed += fmt.Sprintf(" and %d more", n-maxListed)
		}
		noun := plural(n, "volume", "volumes")
		if images := imageItems(items[i]); images == n {
			noun = plural(n, "image", "images")
		} else if images > 0 {
			noun = "volumes and images"
		}
		hints = append(hints, fmt.Sprintf("%d %s: %s (%s%s): %s", n, noun, c.what, c.at, listed, c.fix(rep.KeyID, items[i])))
	}
	msg := fmt.Sprintf("%d of %d volumes of key %s were not rewrapped (they keep their old, working wrapping): %s",
		len(rep.Failed), rep.Volumes, rep.KeyID, strings.Join(causes, ", "))
	if imagesFailed := failedImages(rep); imagesFailed > 0 {
		msg = fmt.Sprintf("%d of %d volumes and %d of %d images of key %s were not rewrapped (they keep their old, working wrapping): %s",
			len(rep.Failed)-imagesFailed, rep.Volumes, imagesFailed, rep.Images, rep.KeyID, strings.Join(causes, ", "))
	}
	if rotated != "" {
		msg = rotated + ", but " + msg
	}
	return withHint(&rewrapFailure{msg: msg, err: err}, hints...)
}

// imageItems counts the catalog images among a failure class's items ("image NAME").
func imageItems(items []string) int {
	n := 0
	for _, it := range items {
		if strings.HasPrefix(it, "image ") {
			n++
		}
	}
	return n
}
