package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"crkvol/crk/kpapi"
	"crkvol/internal/ident"
	"crkvol/volume"
)

// The image catalog: encrypted qcow2 images (QEMU's LUKS inside qcow2) whose passphrase is
// wrapped by a root key, imported from a WDEK (a ciphertext of key wrap) or a passphrase,
// listed, shown and deleted (deregistered; the file is never touched). Volumes are created
// from them with volume create --from-image, and rotations rewrap their WDEKs with the
// volumes' passphrases.

// imageJSON is a catalog image as --json shows it: every field of the entry, the WDEK (the
// wrapped passphrase, a ciphertext) in base64. The passphrase itself is never stored.
type imageJSON struct {
	Name        string   `json:"name"`
	CRN         string   `json:"crn"`
	UUID        string   `json:"uuid"`
	Path        string   `json:"path"`
	KeyID       string   `json:"keyId"`
	KeyVersion  string   `json:"keyVersion"`
	WDEK        string   `json:"wdek,omitempty"`
	Size        int64    `json:"size"`
	FileSize    int64    `json:"fileSize"`
	SHA256      string   `json:"sha256"`
	ClusterSize int      `json:"clusterSize"`
	QcowVersion int      `json:"qcowVersion"`
	Cipher      string   `json:"cipher"`
	Created     jsonTime `json:"created,omitzero"`
	ModTime     jsonTime `json:"modTime,omitzero"`
	ChangeTime  jsonTime `json:"changeTime,omitzero"`
	Keyslot     int      `json:"keyslot"`
	RewrappedAt jsonTime `json:"rewrappedAt,omitzero"`
	Device      uint64   `json:"device,omitempty"`
	Inode       uint64   `json:"inode,omitempty"`
	// FileStatus compares the file with the import by a stat: ok, missing or changed.
	FileStatus string `json:"fileStatus"`
}

// imageView returns e as --json shows it; withWDEK includes the WDEK (image show only).
func imageView(e volume.ImageEntry, withWDEK bool) imageJSON {
	j := imageJSON{
		Name: e.Name, CRN: e.CRN, UUID: e.UUID, Path: e.Path, KeyID: e.KeyID, KeyVersion: e.KeyVersion,
		Size: e.Size, FileSize: e.FileSize, SHA256: e.SHA256, ClusterSize: e.ClusterSize, QcowVersion: e.QcowVersion,
		Cipher: e.Cipher, Created: jsonTime{e.Created}, ModTime: jsonTime{e.ModTime}, ChangeTime: jsonTime{e.CTime},
		RewrappedAt: jsonTime{e.RewrappedAt}, Device: e.Device, Inode: e.Inode, Keyslot: e.Keyslot,
		FileStatus: fileStatus(e),
	}
	if withWDEK {
		j.WDEK = base64.StdEncoding.EncodeToString(e.WDEK)
	}
	return j
}

// shownPath is a file path as a terminal may show it: control characters escaped (a file
// name may hold escape sequences that would move the cursor or forge lines).
func shownPath(p string) string { return kpapi.Printable(p, 8<<10) }

// deleteImage deletes catalog image ref (a name or a CRN) and reports it.
func (a *app) deleteImage(ctx context.Context, ref string) error {
	var e volume.ImageEntry
	var err error
	if ident.IsImageCRN(ref) {
		e, err = a.reg.ImageByCRN(ref)
		if err != nil {
			return withHint(err, "a registration of an image left without a catalog entry is removed with: crkvol image delete "+ref+" --key KEY")
		}
	} else if e, err = a.reg.Image(ref); err != nil {
		return imageNotFound(err)
	}
	if err := a.mgr.DeleteImage(ctx, e.Name); err != nil {
		return imageNotFound(err)
	}
	if a.asJSON {
		return a.emit(map[string]any{"name": e.Name, "crn": e.CRN, "keyId": e.KeyID, "path": e.Path, "deregistered": true, "fileRemoved": false})
	}
	fmt.Fprintf(a.stdout, "deleted image %s from the catalog and deregistered it from key %s; the file %s is kept (crkvol never removes an image file), but the catalog no longer holds its wrapped passphrase: it opens only with a passphrase or WDEK kept elsewhere\n",
		e.Name, e.KeyID, shownPath(e.Path))
	return nil
}

func (a *app) imageCommand() *cobra.Command {
	img := group("image", "Import, list, show and delete encrypted qcow2 images; export volumes as images")
	img.Long = `Import, list, show and delete encrypted custom images: qcow2 files encrypted with QEMU's LUKS
(qemu-img convert -O qcow2 --object secret,... -o encrypt.format=luks,...) whose passphrase is
wrapped by a root key. The catalog keeps the wrapped passphrase (the WDEK), never the
passphrase; each image is registered with its key, so the key cannot be deleted while an image
uses it, and key rotations rewrap the WDEKs with the volumes' passphrases (the image files are
never written). volume create IMG --from-image NAME makes a volume of an image's content.`

	list := &cobra.Command{Use: "list", Short: "List the catalog's images: name, key, key version and state, size, import time, file status, path", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			images, err := a.reg.Images()
			if err != nil {
				return err
			}
			if a.asJSON {
				out := []imageJSON{}
				for _, e := range images {
					out = append(out, imageView(e, false))
				}
				return a.emit(out)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tKEY ID\tKEY VERSION\tKEY STATE\tSIZE\tCREATED\tSTATUS\tPATH")
			keys := a.keyStatuses()
			for _, e := range images {
				state := keys.of(cmd.Context(), e.KeyID, e.KeyVersion).stateCell()
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, e.KeyID, e.KeyVersion, state, volume.FormatSize(e.Size), rfc3339(e.Created), fileStatus(e), shownPath(e.Path))
			}
			return w.Flush()
		}}

	show := &cobra.Command{Use: "show NAME", Short: "Show a catalog image (--json includes its WDEK, the wrapped passphrase)", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			e, err := a.reg.Image(args[0])
			if err != nil {
				return imageNotFound(err)
			}
			if a.asJSON {
				return a.emit(imageView(e, true))
			}
			return a.printImage(e)
		}}

	var delKey string
	del := &cobra.Command{Use: "delete NAME|CRN", Short: "Remove an image from the catalog and deregister it from its key (the file is kept)", Args: args(cobra.ExactArgs(1)),
		Long: `Remove catalog image NAME (or the image whose CRN is given) from the catalog and deregister it
from its key, so that the key may be deleted once nothing else uses it. The image file is
never touched.

A crash between the two steps (or during an import) can leave a registration of an image
CRN with no catalog entry, which keeps the key from being deleted: crkvol key registrations
KEY lists it, and crkvol image delete CRN --key KEY removes it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := a.open(ctx); err != nil {
				return err
			}
			if delKey != "" {
				if !ident.IsImageCRN(args[0]) {
					return usagef("--key is for removing a stray image registration: give the image's CRN, not a name")
				}
				id, err := a.resolveKey(ctx, delKey, false)
				if err != nil {
					return err
				}
				if _, err := a.reg.ImageByCRN(args[0]); err == nil {
					return a.deleteImage(ctx, args[0])
				}
				if err := a.mgr.DeleteImageRegistration(ctx, id, args[0]); err != nil {
					return err
				}
				if a.asJSON {
					return a.emit(map[string]any{"crn": args[0], "keyId": id, "deregistered": true, "fileRemoved": false})
				}
				fmt.Fprintf(a.stdout, "deregistered image %s from key %s (it had no catalog entry)\n", args[0], id)
				return nil
			}
			return a.deleteImage(ctx, args[0])
		}}
	del.Flags().StringVar(&delKey, "key", "", "with an image CRN that has no catalog entry: root key id or unique name to deregister it from")

	verify := &cobra.Command{Use: "verify NAME", Short: "Check that an image's file is still the imported one: same file, same SHA-256 (reads it all)", Args: args(cobra.ExactArgs(1)),
		Long: `Check that the file of catalog image NAME is still the file that was imported: the same file
(device and inode), the same size, and the same SHA-256 as at import, computed now from the
whole file whatever its times say. volume create --from-image checks the file's identity, size
and times (and hashes it when its times changed); verify reads it all. A file that differs is
refused by name (exit status 1); import it again under a new name.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			e, err := a.reg.Image(args[0])
			if err != nil {
				return imageNotFound(err)
			}
			if err := a.mgr.VerifyImage(cmd.Context(), args[0]); err != nil {
				return imageNotFound(err)
			}
			if a.asJSON {
				return a.emit(map[string]any{"name": e.Name, "path": e.Path, "sha256": e.SHA256, "fileSize": e.FileSize, "verified": true})
			}
			fmt.Fprintf(a.stdout, "image %s: %s is the imported file (%d bytes, sha256 %s)\n", e.Name, shownPath(e.Path), e.FileSize, e.SHA256)
			return nil
		}}

	img.AddCommand(a.imageImportCommand(), list, show, del, verify, a.imageExportCommand())
	return img
}

// printImage prints a catalog image as image show does.
func (a *app) printImage(e volume.ImageEntry) error {
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Name\t%s\n", e.Name)
	fmt.Fprintf(w, "CRN\t%s\n", e.CRN)
	fmt.Fprintf(w, "Path\t%s\n", shownPath(e.Path))
	fmt.Fprintf(w, "File status\t%s\n", fileStatusLong(e))
	fmt.Fprintf(w, "Size\t%s (%d bytes), qcow2 v%d, %s clusters\n", volume.FormatSize(e.Size), e.Size, e.QcowVersion, volume.FormatSize(int64(e.ClusterSize)))
	fmt.Fprintf(w, "Cipher\t%s\n", e.Cipher)
	fmt.Fprintf(w, "File\t%d bytes, sha256 %s\n", e.FileSize, e.SHA256)
	fmt.Fprintf(w, "Root key\t%s\n", e.KeyID)
	wrapped := "imported " + rfc3339(e.Created)
	if !e.RewrappedAt.IsZero() {
		wrapped = "rewrapped " + rfc3339(e.RewrappedAt)
	}
	fmt.Fprintf(w, "Key version\t%s (%s)\n", e.KeyVersion, wrapped)
	fmt.Fprintf(w, "Created\t%s\n", rfc3339(e.Created))
	return w.Flush()
}

// fileStatus is the STATUS of a catalog image's file: ok, missing, changed (see
// volume.ImageEntry.FileStatus), or "unknown" when the path cannot be examined.
func fileStatus(e volume.ImageEntry) string {
	s, err := e.FileStatus()
	if err != nil {
		return "unknown"
	}
	return s
}

// fileStatusLong is the file status as image show explains it.
func fileStatusLong(e volume.ImageEntry) string {
	s, err := e.FileStatus()
	switch {
	case err != nil:
		return "unknown (" + errorText(err) + ")"
	case s == volume.ImageFileMissing:
		return s + " (no file at the recorded path: moved or deleted)"
	case s == volume.ImageFileChanged:
		return s + " (not the imported file by its identity, size or modification time)"
	}
	return s
}

// imageFileErr explains a catalog image whose file is no longer usable: missing (moved or
// deleted) or changed since the import.
func imageFileErr(err error, name, path string) error {
	again := fmt.Sprintf("save its WDEK (crkvol image show %s --json), then crkvol image delete %s and crkvol image import FILE --name NEWNAME --key KEY --wdek WDEK", name, name)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, volume.ErrImageChanged):
		return withHint(err, "the catalog uses only the file it imported: put that file back at "+shownPath(path)+"; or, to use the file now there, "+again)
	case errors.Is(err, fs.ErrNotExist) && path != "":
		return withHint(fmt.Errorf("image %s: its file %s is missing (moved or deleted): %w", name, shownPath(path), err), "if it was moved, import it from its new place: "+again)
	}
	return err
}

// imageNotFound adds to a catalog lookup that found no image the command that lists them.
func imageNotFound(err error) error {
	if err != nil && errors.Is(err, volume.ErrImageNotFound) {
		return withHint(err, "crkvol image list shows the catalog's images")
	}
	return err
}
