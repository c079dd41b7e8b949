package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/internal/fsutil"
	"crkvol/keyslot"
	"crkvol/volume"
)

// Hints for the refusals of image import.
const (
	hintWDEK       = "the WDEK must be a ciphertext of the root key given with --key, made with no --aad: crkvol key wrap KEY --plaintext-file PASS, where PASS is the passphrase file given to qemu-img (secret,file=PASS)"
	hintInUse      = "a QEMU process (qemu, qemu-img, qemu-io) has the file open for writing; run the command again once it has closed it (crkvol does not read an image that may change under it)"
	hintPassphrase = "the passphrase is the content of the secret file given to qemu-img (--object secret,id=...,file=PASS), every byte of it, a final newline included"
)

// imageImportCommand is `image import FILE --name N --key K (--wdek B64 | --passphrase-file F)`.
func (a *app) imageImportCommand() *cobra.Command {
	var name, keyRef, wdekB64, passFile string
	cmd := &cobra.Command{Use: "import FILE", Short: "Import an encrypted qcow2 image into the catalog, its passphrase wrapped by a root key", Args: args(cobra.ExactArgs(1)),
		Long: `Import a qcow2 image encrypted with QEMU's LUKS into the catalog as NAME. Its passphrase is
given wrapped by the root key --key (--wdek: the ciphertext crkvol key wrap printed, made with
no --aad) or as the bytes of a file (--passphrase-file: it is wrapped by --key, and only the
wrapped form is kept). The import checks that the WDEK unwraps with that key and that the
passphrase opens the image's LUKS header before it accepts the image; the file is read, never
written, and must stay where it is (volume create --from-image checks it is the imported
file).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts volume.ImportOptions
			switch {
			case wdekB64 != "" && passFile != "":
				return usagef("give --wdek or --passphrase-file, not both")
			case cmd.Flags().Changed("wdek") && wdekB64 == "":
				return usagef("--wdek is empty")
			case cmd.Flags().Changed("wdek"):
				b, err := base64.StdEncoding.DecodeString(wdekB64)
				if err != nil || len(b) == 0 {
					return usagef("--wdek is not standard base64")
				}
				opts.WDEK = b
			case passFile != "":
				b, err := os.ReadFile(passFile)
				if err != nil {
					return fmt.Errorf("passphrase file: %w", err)
				}
				opts.Passphrase = b
				defer clear(b)
			default:
				return usagef("give the image's passphrase wrapped (--wdek B64, from crkvol key wrap) or in a file (--passphrase-file F)")
			}
			if err := volume.CheckImageName(name); err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			file := absPath(args[0])
			ctx := cmd.Context()
			id, err := a.openKey(ctx, keyRef)
			if err != nil {
				return err
			}
			opts.Name, opts.KeyID = name, id
			e, err := a.mgr.ImportImage(ctx, file, opts)
			if err != nil {
				return notQcow2(qcow2Hints(importErr(err, passFile, opts.Passphrase)), file)
			}
			if a.asJSON {
				return a.emit(imageView(*e, true))
			}
			fmt.Fprintf(a.stdout, "imported %s as image %s, its passphrase wrapped by key %s (version %s)\n", shownPath(e.Path), e.Name, e.KeyID, e.KeyVersion)
			return a.printImage(*e)
		}}
	cmd.Flags().StringVar(&name, "name", "", "the image's name in the catalog: lowercase letters, digits and hyphens, starting with a letter (required)")
	cmd.Flags().StringVar(&keyRef, "key", "", "root key id or unique name that wraps the passphrase (required)")
	cmd.Flags().StringVar(&wdekB64, "wdek", "", "the passphrase wrapped by --key: the base64 ciphertext of crkvol key wrap KEY --plaintext-file PASS")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "file holding the image's passphrase (its bytes as they are); it is wrapped by --key and only the WDEK is kept")
	requireFlags(cmd, "name", "key")
	return cmd
}

// importErr explains the refusals of image import: a WDEK the key service cannot unwrap with
// that key, a passphrase that opens no keyslot of the image.
func importErr(err error, passFile string, pass []byte) error {
	switch {
	case errors.Is(err, crk.ErrAuth):
		return withHint(err, hintWDEK)
	case errors.Is(err, keyslot.ErrLUKS1Passphrase) || errors.Is(err, keyslot.ErrWrongPassphrase):
		if passFile != "" {
			if herr := passphraseFileErr(err, passFile, pass); herr != err {
				return herr
			}
		}
		return withHint(err, hintPassphrase)
	case errors.Is(err, volume.ErrPassphraseNotUTF8):
		what := "the passphrase"
		if passFile != "" {
			what = "the passphrase file " + absPath(passFile)
		}
		return withHint(err, what+" must hold UTF-8 text, as QEMU requires of a secret; make a printable one, e.g.: head -c 32 /dev/urandom | base64 -w0 > PASS")
	case errors.Is(err, volume.ErrImageInUse):
		return withHint(err, hintInUse)
	case errors.Is(err, volume.ErrImageExists):
		return withHint(err, "crkvol image list shows the catalog's names; crkvol image delete NAME removes an entry (never its file)")
	}
	return err
}

// exportJSON is `image export --json`.
type exportJSON struct {
	Volume       string     `json:"volume"`
	Output       string     `json:"output"`
	Size         int64      `json:"size"`
	FileSize     int64      `json:"fileSize"`
	DataClusters int64      `json:"dataClusters"`
	ClusterSize  int        `json:"clusterSize"`
	Image        *imageJSON `json:"image,omitempty"`
}

// iterTimeFlag is --iter-time: a Go duration (2s, 500ms) or, as QEMU's encrypt.iter-time and
// cryptsetup's --iter-time, a whole number of milliseconds.
type iterTimeFlag struct{ d time.Duration }

func (f *iterTimeFlag) String() string {
	if f.d == 0 {
		return ""
	}
	return f.d.String()
}

func (f *iterTimeFlag) Set(v string) error {
	d, err := time.ParseDuration(v)
	if n, nerr := strconv.ParseUint(v, 10, 31); nerr == nil {
		d, err = time.Duration(n)*time.Millisecond, nil
	}
	if err != nil || d <= 0 {
		return fmt.Errorf("want a positive duration such as 2s or 500ms, or milliseconds as QEMU's iter-time (2000)")
	}
	f.d = d
	return nil
}

func (f *iterTimeFlag) Type() string { return "duration" }

// imageExportCommand is `image export IMG OUT.qcow2 [--passphrase-file F | --name N [--key K]]
// [--cluster-size S] [--iter-time D] [--hash H] [--cipher-key-bits N]`.
func (a *app) imageExportCommand() *cobra.Command {
	var passFile, name, keyRef, hash string
	var force bool
	var clusterSize sizeFlag
	var iterTime iterTimeFlag
	var keyBits int
	cmd := &cobra.Command{Use: "export IMG OUT", Short: "Write a volume's content as a new LUKS-encrypted qcow2 image QEMU opens", Args: args(cobra.ExactArgs(2)),
		Long: `Write the content of volume IMG to OUT, a new qcow2 v3 file encrypted with QEMU's LUKS
(aes-xts-plain64), holding only the clusters with data. The passphrase is the bytes of a file
(--passphrase-file: give the same file to qemu-img as --object secret,id=sec0,file=F), or a new
random one wrapped by a root key straight into the catalog as image --name (--key, by default
the volume's key): the passphrase is then never shown, and volume create --from-image reads the
image back. The LUKS header is QEMU's: aes-xts-plain64 with a 512-bit key (--cipher-key-bits
256 for aes-128-xts), PBKDF2 with sha256 (--hash), and as many iterations as this machine
computes in --iter-time (QEMU's iter-time, 2s by default with --passphrase-file, since a
passphrase a person chose needs stretching; with --name the random 32-byte passphrase gets
1000 iterations unless --iter-time is given, since stretching cannot strengthen it).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := volume.ExportOptions{}
			switch {
			case passFile != "" && name != "":
				return usagef("give --passphrase-file or --name, not both")
			case passFile != "" && keyRef != "":
				return usagef("--key goes with --name: with --passphrase-file the image is not put in the catalog")
			case passFile == "" && name == "":
				return usagef("give --passphrase-file F (the image's passphrase) or --name N (a new catalog image, its random passphrase wrapped by --key)")
			case passFile != "":
				b, err := os.ReadFile(passFile)
				if err != nil {
					return fmt.Errorf("passphrase file: %w", err)
				}
				if len(b) == 0 {
					return fmt.Errorf("passphrase file %s is empty", absPath(passFile))
				}
				opts.Passphrase = b
				defer clear(b)
			default:
				if err := volume.CheckImageName(name); err != nil {
					return fmt.Errorf("--name: %w", err)
				}
				opts.Name = name
			}
			if cmd.Flags().Changed("cluster-size") {
				n, err := clusterSize.size("cluster-size")
				if err != nil {
					return err
				}
				if n < 512 || n > 2<<20 || n&(n-1) != 0 {
					return fmt.Errorf("--cluster-size %d: want a power of two from 512 bytes to 2MiB", n)
				}
				opts.ClusterSize = int(n)
			}
			opts.IterTime = iterTime.d
			switch hash {
			case "sha1", "sha256", "sha512":
				opts.Hash = hash
			default:
				return usagef("--hash %q: want sha1, sha256 or sha512", shown(hash))
			}
			switch keyBits {
			case 256, 512:
				opts.KeyBytes = keyBits / 8
			default:
				return usagef("--cipher-key-bits %d: want 256 (aes-128-xts) or 512 (aes-256-xts)", keyBits)
			}
			out := absPath(args[1])
			ctx := cmd.Context()
			if err := a.open(ctx); err != nil {
				return err
			}
			if err := a.checkExportOutput(out, force, args[0]); err != nil {
				return err
			}
			opts.Replace = force
			if keyRef != "" {
				id, err := a.resolveKey(ctx, keyRef, false)
				if err != nil {
					return err
				}
				opts.KeyID = id
			}
			bar := a.bytesProgress("exporting")
			opts.Progress = bar.update
			res, err := a.mgr.ExportImage(ctx, args[0], out, opts)
			bar.finish()
			if err != nil && ctx.Err() != nil {
				return interruptedf("%s: the export to %s stopped; its temporary file was removed and %s was not written; run the command again to export", args[0], out, out)
			}
			if err != nil {
				if errors.Is(err, keyslot.ErrKDFLimits) {
					return withHint(err, fmt.Sprintf("give a shorter --iter-time: crkvol opens images of at most %d PBKDF2 iterations", keyslot.MaxLUKS1Iterations))
				}
				return importErr(err, passFile, nil)
			}
			j := exportJSON{Volume: args[0], Output: res.Path, Size: res.Size, FileSize: res.FileSize, DataClusters: res.DataClusters, ClusterSize: opts.ClusterSize}
			if res.Image != nil {
				v := imageView(*res.Image, false)
				j.Image = &v
				j.ClusterSize = res.Image.ClusterSize
			}
			if a.asJSON {
				return a.emit(j)
			}
			fmt.Fprintf(a.stdout, "exported %s to %s: %s guest size, %d data clusters, a %d-byte file\n", shownPath(args[0]), shownPath(res.Path), volume.FormatSize(res.Size), res.DataClusters, res.FileSize)
			if res.Image != nil {
				fmt.Fprintf(a.stdout, "imported it as image %s, its random passphrase wrapped by key %s (version %s)\n", res.Image.Name, res.Image.KeyID, res.Image.KeyVersion)
			} else {
				fmt.Fprintf(a.stdout, "its LUKS passphrase is the content of %s: qemu-img convert --object secret,id=sec0,file=%s --image-opts driver=qcow2,file.filename=%s,encrypt.key-secret=sec0 -O raw OUT.raw\n",
					shownPath(absPath(passFile)), shownPath(absPath(passFile)), shownPath(res.Path))
			}
			return nil
		}}
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "encrypt with the bytes of this file as the LUKS passphrase (give it to qemu-img as --object secret,file=F)")
	cmd.Flags().StringVar(&name, "name", "", "put the image in the catalog under this name, with a new random passphrase wrapped by --key")
	cmd.Flags().StringVar(&keyRef, "key", "", "with --name: root key id or unique name that wraps the passphrase (default: the volume's key)")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing regular file OUT (atomically: the new image is renamed over it when complete); not with --name, never a catalog image's file")
	cmd.Flags().Var(&clusterSize, "cluster-size", "qcow2 cluster size, a power of two from 512 to 2MiB (default 64KiB)")
	cmd.Flags().Var(&iterTime, "iter-time", "PBKDF2 time of the LUKS keyslot, measured on this machine: a duration or milliseconds, as QEMU's iter-time (default 2s with --passphrase-file; with --name 1000 iterations)")
	cmd.Flags().StringVar(&hash, "hash", "sha256", "LUKS PBKDF2 and AF hash: sha1, sha256 or sha512")
	cmd.Flags().IntVar(&keyBits, "cipher-key-bits", 512, "aes-xts master key size: 512 (aes-256-xts, QEMU's default) or 256 (aes-128-xts)")
	return cmd
}

// notCatalogImageFile refuses an output that is the file of a catalog image (by path,
// through links, or the same file), even with --force.
func (a *app) notCatalogImageFile(out string) error {
	if a.reg == nil {
		return nil
	}
	images, err := a.reg.Images()
	if err != nil {
		return err
	}
	resolved := out
	if r, err := filepath.EvalSymlinks(out); err == nil {
		resolved = r
	} else if r, err := filepath.EvalSymlinks(filepath.Dir(out)); err == nil {
		resolved = filepath.Join(r, filepath.Base(out))
	}
	st, serr := os.Stat(out)
	for _, e := range images {
		same := resolved == e.Path
		if !same && serr == nil {
			est, err := os.Stat(e.Path)
			same = err == nil && os.SameFile(st, est)
		}
		if same {
			return fmt.Errorf("%s: is the file of catalog image %s; %w (delete the image from the catalog first)", out, e.Name, errProtected)
		}
	}
	return nil
}

// errExportTarget refuses an image export OUT that is not a regular file: a device (such as
// /dev/null), a pipe, a socket, a directory or another name under /dev or /proc. Unlike the
// output flags of other commands, which also write to a device or pipe, image export writes
// a qcow2 image at random offsets, through a temporary file renamed over OUT.
var errExportTarget = errors.New("OUT must be a regular file (a qcow2 image is written at random offsets, then renamed into place)")

// checkExportOutput applies to image export's OUT the rules of the CLI's output files: not
// a volume image (IMG) nor in the state directory, even with --force; an existing regular
// file (or a link: the link is replaced, never written through) only with --force; never a
// device, pipe or directory (a qcow2 image is written at random offsets, as a new file); the
// directory must exist.
func (a *app) checkExportOutput(out string, force bool, img string) error {
	if err := checkProtected("", out, a.outputOptions(force, 0o600, img)); err != nil {
		return err
	}
	if force {
		if err := a.notCatalogImageFile(out); err != nil {
			return err
		}
	}
	if streamName(out) {
		what := "a name under /dev or /proc"
		if st, err := os.Stat(out); err == nil && !st.Mode().IsRegular() {
			what = fsutil.Kind(st.Mode()) // /dev/null: a character device
		}
		return fmt.Errorf("%s: is %s: %w", out, what, errExportTarget)
	}
	st, err := os.Lstat(out)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dir := filepath.Dir(out)
		if dst, err := os.Stat(dir); err != nil {
			return fmt.Errorf("%s: the directory %s: %w", out, dir, err)
		} else if !dst.IsDir() {
			return fmt.Errorf("%s: %s is not a directory", out, dir)
		}
		return nil
	case err != nil:
		return err
	case st.Mode()&fs.ModeSymlink == 0 && !st.Mode().IsRegular():
		return fmt.Errorf("%s: is %s: %w", out, fsutil.Kind(st.Mode()), errExportTarget)
	case !force:
		return fmt.Errorf("%s: %w; give --force to replace it", out, fileExists{})
	}
	return nil
}

// byteProgress draws a bar of bytes on stderr for a long command's Progress callback, when
// stderr is a terminal and the output is not JSON; otherwise its methods do nothing.
type byteProgress struct {
	a    *app
	what string
	bar  *progressbar.ProgressBar
}

// bytesProgress returns the progress of a long command that reports bytes done of a total.
func (a *app) bytesProgress(what string) *byteProgress {
	return &byteProgress{a: a, what: what}
}

// update is a Progress callback: done of total bytes.
func (p *byteProgress) update(done, total int64) {
	if p.a.asJSON || p.a.background || !isTerminal(p.a.stderr) || total <= 4<<20 {
		return
	}
	if p.bar == nil {
		p.bar = byteBar(p.a.stderr, total, p.what)
	}
	_ = p.bar.Set64(done)
}

// finish ends the bar, if one was drawn.
func (p *byteProgress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

// fromImage is the volume create --from-image path: the volume at path is made of the
// catalog image opts.Image's content, its own passphrase wrapped by opts.KeyID (see
// volume.FromImageOptions for the size, sector size, key size and Sparse). Before the
// status, a line says which sector size the volume got and why.
func (a *app) fromImage(ctx context.Context, path string, opts volume.FromImageOptions) error {
	bar := a.bytesProgress("copying")
	opts.Progress = bar.update
	info, err := a.mgr.CreateFromImage(ctx, path, opts)
	bar.finish()
	name := opts.Image
	if err != nil && ctx.Err() != nil {
		p := absPath(path)
		if _, serr := os.Lstat(p); errors.Is(serr, fs.ErrNotExist) {
			return interruptedf("%s: the copy of image %s stopped; the half-made volume was removed (and deregistered); run the command again to create it", p, name)
		}
		return interruptedf("%s: the copy of image %s stopped; the half-made volume could not be removed; remove it with crkvol volume delete %s, then run the command again", p, name, shellArg(p))
	}
	if errors.Is(err, volume.ErrImageInUse) {
		return withHint(err, hintInUse)
	}
	if err != nil {
		if e, lerr := a.reg.Image(name); lerr == nil {
			return qcow2Hints(imageFileErr(err, name, e.Path))
		}
		return qcow2Hints(imageNotFound(err))
	}
	if !a.asJSON {
		why := "given with --sector-size"
		switch {
		case opts.SectorSize != 0:
		case info.SectorSize == 4096:
			why = "the default; --sector-size chooses another"
		default:
			why = "the size is not a multiple of 4096 bytes; --sector-size chooses another that divides it"
		}
		fmt.Fprintf(a.stdout, "created %s from image %s with %d-byte sectors (%s)\n", info.Path, opts.Image, info.SectorSize, why)
	}
	return a.printStatus(ctx, info.Path)
}
