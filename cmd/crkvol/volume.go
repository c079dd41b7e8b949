package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"crkvol/keyslot"
	"crkvol/volume"
)

func (a *app) volumeCommand() *cobra.Command {
	vol := group("volume", "Create, attach, rotate and delete volume images")
	vol.Long = `Create, attach, rotate and delete volume images.

Sizes (--size), offsets (--offset) and lengths (--length) take ` + volume.SizeForms + `.
The single letters K, M, G, T and P are powers of 1024, as in qemu-img and cryptsetup; add B
(KB, MB, GB, TB, PB) for powers of 1000. A fraction must land on a whole byte, and a --size on
a whole sector ("1.5GiB" is fine with 4096-byte sectors).`

	var size sizeFlag
	var keyID string
	sectorSize := intFlag{n: 4096, name: "sector-size", want: wantSectorSize}
	keyBits := intFlag{n: 512, name: "cipher-key-bits", want: wantKeyBits}
	var wipe, sparse bool
	var fromImage string
	create := &cobra.Command{Use: "create IMG", Short: "Create a volume image protected by a root key (empty, or holding a catalog image's content)", Args: args(cobra.ExactArgs(1)),
		Long: `Create a volume image protected by a root key: a LUKS2 image whose random passphrase is
wrapped by --key. It is empty (its blocks read as noise until written; --wipe makes them read
as zeros), or with --from-image NAME holds the guest content of catalog image NAME (crkvol
image list), decrypted with the image's own key and encrypted again under the volume's.

With --from-image, --size is optional: by default the image's guest size; a larger size grows
the volume, and the space beyond the image is written with zeros (with --sparse, whatever
reads as zeros in the image, and the space beyond it, is skipped and reads as noise).
--sector-size and --cipher-key-bits choose the volume's encryption as for an empty volume;
by default the sector size is 4096 bytes if the size is a multiple of it, else 512, and the
output says which one the volume got. --wipe does not go with --from-image.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if fromImage != "" {
				if cmd.Flags().Changed("wipe") {
					return usagef("--wipe does not go with --from-image (the image's content is written instead; without --sparse, its holes and the space beyond it as zeros)")
				}
				// 0: volume.FromImageOptions' defaults (4096-byte sectors if the size
				// allows, else 512; a 512-bit key).
				var geo volume.FromImageOptions
				if cmd.Flags().Changed("sector-size") {
					if err := checkSectorSize(sectorSize.n); err != nil {
						return err
					}
					geo.SectorSize = sectorSize.n
				}
				if cmd.Flags().Changed("cipher-key-bits") {
					if err := checkKeyBits(keyBits.n); err != nil {
						return err
					}
					geo.KeyBits = keyBits.n
				}
				if cmd.Flags().Changed("size") {
					var err error
					if geo.Size, err = size.volumeSize("size", max(geo.SectorSize, 512)); err != nil {
						return err
					}
				}
				if err := a.open(cmd.Context()); err != nil {
					return err
				}
				id, err := a.resolveKey(cmd.Context(), keyID, false)
				if err != nil {
					return err
				}
				geo.Image, geo.KeyID, geo.Sparse = fromImage, id, sparse
				return a.fromImage(cmd.Context(), args[0], geo)
			}
			if sparse {
				return usagef("--sparse goes with --from-image")
			}
			if err := checkSectorSize(sectorSize.n); err != nil {
				return err
			}
			size, err := size.volumeSize("size", sectorSize.n)
			if err != nil {
				return err
			}
			if err := checkKeyBits(keyBits.n); err != nil {
				return err
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			id, err := a.resolveKey(cmd.Context(), keyID, false)
			if err != nil {
				return err
			}
			info, err := a.mgr.Create(cmd.Context(), args[0], volume.CreateOptions{
				KeyID: id, Size: size, SectorSize: sectorSize.n, KeySize: keyBits.n / 8, Wipe: wipe,
			})
			if err != nil {
				if wipe {
					return existingWipe(args[0], err)
				}
				return err
			}
			if wipe {
				if err := a.runWipe(cmd.Context(), info.Path, false); err != nil {
					return err
				}
			}
			return a.printStatus(cmd.Context(), args[0])
		}}
	create.Flags().Var(&size, "size", "data size, a whole number of sectors, such as 64MiB, 1.5GiB or 10GB (required, except with --from-image: the image's size by default)")
	create.Flags().StringVar(&keyID, "key", "", "root key id or unique name (required)")
	create.Flags().Var(&sectorSize, "sector-size", "encryption sector size: 512, 1024, 2048 or 4096 (with --from-image, by default 4096 if the size is a multiple of it, else 512)")
	create.Flags().Var(&keyBits, "cipher-key-bits", "aes-xts-plain64 key size: 512 or 256")
	create.Flags().BoolVar(&wipe, "wipe", false, "write zeros through the encryption so the volume reads as zeros (not with --from-image)")
	create.Flags().StringVar(&fromImage, "from-image", "", "fill the volume with this catalog image's content (crkvol image list); --size is then optional (default: the image's size; a larger one is filled with zeros); not with --wipe")
	create.Flags().BoolVar(&sparse, "sparse", false, "with --from-image: skip what reads as zeros in the image, so the volume file stays sparse (those ranges then read as noise, not zeros)")
	requireFlagsWhen(create, func(c *cobra.Command) []string {
		if c.Flags().Changed("from-image") {
			return []string{"key"}
		}
		return []string{"size", "key"}
	})

	var passFile string
	adopt := &cobra.Command{Use: "adopt IMG", Short: "Bring an existing LUKS2 image under a root key", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			pass, err := os.ReadFile(passFile)
			if err != nil {
				return fmt.Errorf("passphrase file: %w", err)
			}
			defer clear(pass)
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			id, err := a.resolveKey(cmd.Context(), keyID, false)
			if err != nil {
				return err
			}
			if _, err := a.mgr.Adopt(cmd.Context(), args[0], pass, id, volume.AdoptOptions{}); err != nil {
				return passphraseFileErr(err, passFile, pass)
			}
			return a.printStatus(cmd.Context(), args[0])
		}}
	adopt.Flags().StringVar(&keyID, "key", "", "root key id or unique name (required)")
	adopt.Flags().StringVar(&passFile, "passphrase-file", "", "file holding one of the image's passphrases (required)")
	requireFlags(adopt, "key", "passphrase-file")

	status := &cobra.Command{Use: "status IMG", Short: "Show a volume's header, key (state, whether behind) and wrapping; fails if the volume cannot be opened", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error { return a.printStatus(cmd.Context(), args[0]) }}

	list := &cobra.Command{Use: "list", Short: "List registered volumes: key version, whether behind the key's latest, key state", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			entries, err := a.reg.List()
			if err != nil {
				return err
			}
			// Each row says whether the volume is behind its key and whether the key is
			// usable: the key service is asked once per key.
			type row struct {
				Path       string `json:"path"`
				CRN        string `json:"crn"`
				KeyID      string `json:"keyId"`
				KeyVersion string `json:"keyVersion,omitempty"`
				keyStatusJSON
				Error string `json:"error,omitempty"`
			}
			rows := []row{}
			keys := a.keyStatuses()
			for _, e := range entries {
				r := row{Path: e.Path, CRN: e.CRN, KeyID: e.KeyID}
				if info, err := volume.DescribeContext(cmd.Context(), e.Path); err != nil {
					r.Error = errorText(err)
				} else {
					r.KeyVersion = info.KeyVersion
				}
				r.keyStatusJSON = keys.of(cmd.Context(), e.KeyID, r.KeyVersion)
				rows = append(rows, r)
			}
			if a.asJSON {
				return a.emit(rows)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PATH\tKEY ID\tKEY VERSION\tBEHIND\tKEY STATE\tCRN")
			for _, r := range rows {
				v := r.KeyVersion
				if r.Error != "" {
					v = "error: " + r.Error
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Path, r.KeyID, v, r.behindCell(), r.stateCell(), r.CRN)
			}
			return w.Flush()
		}}

	var offsetFlag, lengthFlag sizeFlag
	var input, output string
	var force bool
	write := &cobra.Command{Use: "write IMG", Short: "Write data (stdin or --input) into a volume", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			offset, err := offsetFlag.offset("offset")
			if err != nil {
				return err
			}
			in := a.stdin
			var total int64 = -1
			if input != "" {
				f, err := os.Open(absName(input))
				if err != nil {
					return err
				}
				defer f.Close()
				if st, err := f.Stat(); err == nil {
					total = st.Size()
				}
				in = f
			}
			v, err := a.attach(cmd.Context(), args[0], volume.OpenOptions{})
			if err != nil {
				return err
			}
			defer v.Close()
			if offset > v.Size() || (total >= 0 && total > v.Size()-offset) {
				return fmt.Errorf("%d bytes at offset %d do not fit the %d-byte volume", total, offset, v.Size())
			}
			n, err := copyWithProgress(a, io.NewOffsetWriter(v, offset), newCtxReader(cmd.Context(), in), total, "writing")
			if err != nil && cmd.Context().Err() != nil {
				return writeInterrupted(v, args[0], input, offset, n)
			}
			if err != nil {
				return fmt.Errorf("after %d bytes: %w", n, err)
			}
			if err := v.Sync(); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]any{"path": absPath(args[0]), "offset": offset, "bytes": n})
			}
			fmt.Fprintf(a.stderr, "wrote %d bytes at offset %d\n", n, offset)
			return nil
		}}
	write.Flags().Var(&offsetFlag, "offset", "byte offset in the volume, such as 4096 or 1MiB (default 0)")
	write.Flags().StringVar(&input, "input", "", "read the data from this file instead of stdin")

	read := &cobra.Command{Use: "read IMG", Short: "Read data from a volume (to stdout or --output)", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			offset, err := offsetFlag.offset("offset")
			if err != nil {
				return err
			}
			length, err := lengthFlag.count("length")
			if err != nil {
				return err
			}
			if a.asJSON && (output == "" || output == "-") {
				return usagef("--json needs --output FILE: the data would go to stdout with the JSON")
			}
			if output == "-" {
				output = "" // stdout, as for the other commands' --output -
			}
			// The output is checked before the volume is opened (its passphrase unwrapped).
			if err := checkOutputFree("output", output, a.outputOptions(force, 0o600, args[0])); err != nil {
				return err
			}
			v, err := a.attach(cmd.Context(), args[0], volume.OpenOptions{ReadOnly: true})
			if err != nil {
				return err
			}
			defer v.Close()
			a.noteCopy(args[0], v)
			if offset > v.Size() {
				return fmt.Errorf("offset %d is outside the %d-byte volume", offset, v.Size())
			}
			n := length
			if !cmd.Flags().Changed("length") {
				n = v.Size() - offset
			}
			if n > v.Size()-offset {
				return fmt.Errorf("%d bytes at offset %d run past the end of the %d-byte volume", n, offset, v.Size())
			}
			out := a.stdout
			var file *outputFile
			if output != "" {
				if file, err = createOutput("output", output, a.outputOptions(force, 0o600, args[0])); err != nil {
					return err
				}
				// Abort removes the file after an error; after Close it does nothing.
				defer file.Abort()
				out = file
			}
			// bw is hidden behind a plain Writer so that its ReadFrom, which keeps a read error
			// (an interrupt) and fails Flush with it, is not used.
			bw := bufio.NewWriterSize(out, 1<<20)
			if got, err := copyWithProgress(a, struct{ io.Writer }{bw}, newCtxReader(cmd.Context(), io.NewSectionReader(v, offset, n)), n, "reading"); err != nil {
				if cmd.Context().Err() != nil {
					// The part read stays in the output file, as the message says.
					ierr := readInterrupted(bw, args[0], output, offset, got, n)
					if file != nil {
						if cerr := file.Close(); cerr != nil {
							return fmt.Errorf("%w; %w", ierr, cerr)
						}
					}
					return ierr
				}
				return err
			}
			if err := bw.Flush(); err != nil {
				return err
			}
			if file != nil {
				if err := file.Close(); err != nil {
					return err
				}
			}
			if a.asJSON {
				return a.emit(map[string]any{"path": absPath(args[0]), "output": absPath(output), "offset": offset, "bytes": n})
			}
			return nil
		}}
	read.Flags().Var(&offsetFlag, "offset", "byte offset in the volume, such as 4096 or 1MiB (default 0)")
	read.Flags().Var(&lengthFlag, "length", "bytes to read, such as 512 or 1.5KiB (default: to the end)")
	read.Flags().StringVar(&output, "output", "", "write the data to this new file (mode 0600) instead of stdout (- for stdout)")
	read.Flags().BoolVar(&force, "force", false, "overwrite the --output file if it exists")

	passphrase := &cobra.Command{Use: "passphrase IMG", Short: "Write the unwrapped LUKS passphrase to a new 0600 file (for cryptsetup --key-file)", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return usagef("--output is required: a new file (mode 0600), or - for stdout when it is not a terminal")
			}
			if output == "-" && a.asJSON {
				return usagef("--json needs --output FILE: the passphrase would go to stdout with the JSON")
			}
			// The output is checked before the passphrase is unwrapped.
			opts := a.outputOptions(force, 0o600, args[0])
			if err := checkOutputFree("output", output, opts); err != nil {
				return err
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			pass, err := a.mgr.UnwrapPassphrase(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer clear(pass)
			if output == "-" {
				if isTerminal(a.stdout) {
					return withHint(fmt.Errorf("--output -: %w", errTerminal), "give --output FILE, or redirect stdout to a pipe or a file")
				}
				_, err := a.stdout.Write(pass)
				return err
			}
			out, err := createOutput("output", output, opts)
			if err != nil {
				return err
			}
			if out.stream && isTerminal(out.File) {
				out.Abort()
				return withHint(fmt.Errorf("--output %s: %w", absPath(output), errTerminal), "give --output FILE, or redirect stdout to a pipe or a file")
			}
			if _, err := out.Write(pass); err != nil {
				out.Abort()
				return out.fail(err)
			}
			if err := out.Close(); err != nil {
				return err
			}
			if a.asJSON {
				doc := map[string]any{"path": absPath(args[0]), "output": absPath(output), "bytes": len(pass)}
				if !out.stream {
					doc["mode"] = "0600"
				}
				return a.emit(doc)
			}
			fmt.Fprintf(a.stderr, "wrote the %d-byte passphrase of %s to %s%s\n", len(pass), absPath(args[0]), absPath(output), out.describe(0o600))
			return nil
		}}
	passphrase.Flags().StringVar(&output, "output", "", "new file to write the passphrase to (mode 0600), or a device or FIFO of your own that no other user may open and that is not a terminal; - for stdout when it is not a terminal (a terminal is refused)")
	passphrase.Flags().BoolVar(&force, "force", false, "replace the --output file if it exists (with a new 0600 file)")

	rewrap := &cobra.Command{Use: "rewrap IMG", Short: "Rewrap a volume's passphrase to its key's latest version", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			rep, err := a.mgr.RewrapVolume(cmd.Context(), args[0])
			if rep != nil {
				a.reports = append(a.reports, rep)
			}
			if err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]any{"rewraps": reportsJSON(a.reports)})
			}
			return a.printReports()
		}}

	var erase, keepImage bool
	del := &cobra.Command{Use: "delete IMG", Short: "Deregister a volume and remove its image", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			// What the token says before the delete: a kept image stays wrapped by this key.
			info, _ := volume.DescribeContext(cmd.Context(), abs)
			if err := a.mgr.Delete(cmd.Context(), args[0], volume.DeleteOptions{CryptoErase: erase, RemoveImage: !keepImage}); err != nil {
				return err
			}
			return a.printDeleted(args[0], abs, info, erase, keepImage)
		}}
	del.Flags().BoolVar(&erase, "erase", false, "destroy every keyslot first (crypto-erase)")
	del.Flags().BoolVar(&keepImage, "keep-image", false, "keep the image file (deregistered; its passphrase stays wrapped by the key)")

	attach, detach := a.attachCommands()
	vol.AddCommand(create, adopt, status, list, write, read, attach, detach, passphrase, rewrap, del, a.wipeCommand(), a.resizeCommand())
	vol.AddCommand(a.identityCommands()...)
	withImageHints(vol)
	return vol
}

// deletedJSON is `volume delete --json`.
type deletedJSON struct {
	Path         string `json:"path"`
	Deregistered bool   `json:"deregistered"`
	Erased       bool   `json:"erased"`
	ImageRemoved bool   `json:"imageRemoved"`
	// KeyID and KeyVersion wrap the passphrase of a kept image that was not erased.
	KeyID      string `json:"keyId,omitempty"`
	KeyVersion string `json:"keyVersion,omitempty"`
}

// printDeleted says what volume delete did: deregistered the volume, crypto-erased it, and
// removed the image, or kept it at abs. info is the image's token as read before the
// delete, or nil when it could not be read (a lost image, deregistered by its path).
func (a *app) printDeleted(path, abs string, info *volume.Info, erased, kept bool) error {
	out := deletedJSON{Path: abs, Deregistered: true, Erased: erased, ImageRemoved: !kept}
	if kept && !erased && info != nil {
		out.KeyID, out.KeyVersion = info.KeyID, info.KeyVersion
	}
	if a.asJSON {
		return a.emit(out)
	}
	switch {
	case !kept:
		fmt.Fprintf(a.stdout, "deleted %s (crypto-erased: %v)\n", path, erased)
	case erased:
		fmt.Fprintf(a.stdout, "crypto-erased and deregistered %s; the image is kept at %s with no keyslot: its data can no longer be decrypted\n", path, abs)
	case info == nil:
		fmt.Fprintf(a.stdout, "deregistered %s; no image could be read at %s\n", path, abs)
	default:
		fmt.Fprintf(a.stdout, "deregistered %s from key %s; the image is kept at %s: its passphrase stays wrapped by that key (version %s), so it opens only while the key exists, and key rotations no longer rewrap it\n",
			path, info.KeyID, abs, info.KeyVersion)
	}
	return nil
}

// attach opens a volume through the key service, then releases the key service and the
// registry (and their file locks), as volume attach does: an open volume needs neither, and
// other commands (a rotation, say) run while a long read or write goes on.
func (a *app) attach(ctx context.Context, path string, opts volume.OpenOptions) (*volume.Volume, error) {
	if err := a.open(ctx); err != nil {
		return nil, err
	}
	v, err := a.mgr.OpenWith(ctx, path, opts)
	a.close()
	return v, err
}

// copyWithProgress copies in 1 MiB pieces, with a progress bar when stderr is a terminal.
func copyWithProgress(a *app, dst io.Writer, src io.Reader, total int64, what string) (int64, error) {
	if isTerminal(a.stderr) && (total < 0 || total > 4<<20) {
		bar := byteBar(a.stderr, total, what)
		defer bar.Finish()
		dst = io.MultiWriter(dst, bar)
	}
	return io.CopyBuffer(dst, src, make([]byte, 1<<20))
}

// statusJSON is `volume status --json`.
type statusJSON struct {
	Path       string `json:"path"`
	UUID       string `json:"uuid"`
	CRN        string `json:"crn"`
	Size       int64  `json:"size"`
	DataOffset int64  `json:"dataOffset"`
	SectorSize int    `json:"sectorSize"`
	Cipher     string `json:"cipher"`
	// Erased says the volume was crypto-erased: no keyslot is left, and the key fields
	// (which no longer open anything) are left out.
	Erased     bool     `json:"erased,omitempty"`
	KeyBits    int      `json:"cipherKeyBits,omitempty"`
	KeyID      string   `json:"keyId,omitempty"`
	KeyCRN     string   `json:"keyCrn,omitempty"`
	KeyVersion string   `json:"keyVersion,omitempty"`
	WrappedAt  jsonTime `json:"wrappedAt,omitzero"`
	// The key's state and latest version, and whether the volume is behind it (left out for
	// a crypto-erased volume).
	keyStatusJSON
	Keyslots []keyslotJSON `json:"keyslots"`
	Tokens   []tokenJSON   `json:"tokens"`
	Health   string        `json:"headerHealth"`
	// Problems lists what keeps the volume from opening (each "area: reason"); the
	// command then exits 1.
	Problems []string `json:"problems,omitempty"`
	// Wipe is an incomplete wipe of the data area (volume wipe finishes it), if any.
	Wipe *volume.WipeProgress `json:"wipe,omitempty"`
	// Attached is the attachment serving the volume, if any (see volume attach).
	Attached *attachmentJSON `json:"attached,omitempty"`
	// InUse says another process holds the data area (attached, or writing).
	InUse bool `json:"inUse"`
	// Registration is registered, copy (an unregistered copy of the volume at
	// RegisteredPath), unregistered or unknown (no registry).
	Registration   string `json:"registration"`
	RegisteredPath string `json:"registeredPath,omitempty"`
}

type keyslotJSON struct {
	ID       int    `json:"id"`
	Type     string `json:"type"`
	KDF      string `json:"kdf"`
	Priority string `json:"priority"`
}

type tokenJSON struct {
	ID       int      `json:"id"`
	Type     string   `json:"type"`
	Keyslots []string `json:"keyslots"`
}

func (a *app) printStatus(ctx context.Context, path string) error {
	info, err := volume.DescribeContext(ctx, path)
	if errors.Is(err, volume.ErrNoToken) {
		return a.describeForeign(ctx, path, err)
	}
	if na := (*volume.NotAdoptableError)(nil); errors.As(err, &na) {
		return a.describeUnreadable(na)
	}
	if err != nil {
		return a.describeLUKS1(path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	img, err := keyslot.Open(f, nil)
	if err != nil {
		return err
	}
	seg := img.Segment()
	st := statusJSON{
		Path: absPath(path), UUID: info.UUID, CRN: info.CRN, Size: info.Size, DataOffset: info.DataOffset,
		SectorSize: info.SectorSize, Cipher: seg.Encryption, KeyBits: 8 * img.VolumeKeySize(), KeyID: info.KeyID,
		KeyCRN: info.KeyCRN, KeyVersion: info.KeyVersion, WrappedAt: jsonTime{info.WrappedAt},
		Keyslots: []keyslotJSON{}, Tokens: []tokenJSON{}, Health: "ok", Wipe: info.Wipe,
	}
	if h := img.Health(); !h.OK() {
		st.Health = fmt.Sprintf("primary: %s; secondary: %s (the next change rewrites the bad copy from the good one)", copyHealth(h.Primary), copyHealth(h.Secondary))
	}
	st.Keyslots, st.Tokens = keyslotViews(img), tokenViews(img)
	ident, err := a.identify(ctx, path)
	var regLine string
	st.Registration, regLine = registrationLine(ident)
	if err != nil {
		regLine = "unknown: " + err.Error()
	}
	if ident != nil && ident.Known {
		st.RegisteredPath = ident.RegisteredPath
	}
	if len(img.Keyslots()) == 0 {
		// Crypto-erased: the token still names the key, but nothing it wraps opens the data,
		// and the only problem is the erasure itself.
		st.Erased, st.KeyBits, st.KeyID, st.KeyCRN, st.KeyVersion, st.WrappedAt = true, 0, "", "", "", jsonTime{}
	}
	keyOnly := false
	if !st.Erased {
		st.Problems, keyOnly = a.checkVolume(ctx, path)
		st.keyStatusJSON = a.keyStatuses().of(ctx, st.KeyID, st.KeyVersion)
	}
	// The header's health is the header's: a key service that refuses is a problem of its
	// own, not an unhealthy header.
	if len(st.Problems) > 0 && st.Health == "ok" && !keyOnly {
		st.Health = "unhealthy"
	}
	st.InUse, _ = volume.InUseContext(ctx, path)
	if st.InUse {
		st.Attached = attachmentView(a.attachmentOf(path))
	}
	if a.asJSON {
		if err := a.emit(st); err != nil {
			return err
		}
		return statusErr(path, st.Erased, st.Problems, keyOnly)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Path\t%s\n", st.Path)
	fmt.Fprintf(w, "UUID\t%s\n", st.UUID)
	fmt.Fprintf(w, "CRN\t%s\n", st.CRN)
	fmt.Fprintf(w, "Size\t%s (%d bytes), data at %d\n", volume.FormatSize(st.Size), st.Size, st.DataOffset)
	if st.Erased {
		fmt.Fprintf(w, "State\tcrypto-erased: no keyslot is left, so no key opens the data (the header and the ciphertext remain)\n")
		fmt.Fprintf(w, "Cipher\t%s, %d-byte sectors\n", st.Cipher, st.SectorSize)
	} else {
		fmt.Fprintf(w, "Cipher\t%s, %d-bit key, %d-byte sectors\n", st.Cipher, st.KeyBits, st.SectorSize)
		fmt.Fprintf(w, "Root key\t%s\n", st.KeyID)
		fmt.Fprintf(w, "Key version\t%s (wrapped %s)\n", st.KeyVersion, rfc3339(st.WrappedAt.Time))
		fmt.Fprintf(w, "Key state\t%s\n", st.stateLine())
		fmt.Fprintf(w, "Behind\t%s\n", st.behindLine(st.KeyID))
	}
	for _, ks := range st.Keyslots {
		fmt.Fprintf(w, "Keyslot %d\t%s, %s, priority %s\n", ks.ID, ks.Type, ks.KDF, ks.Priority)
	}
	for _, t := range st.Tokens {
		fmt.Fprintf(w, "Token %d\t%s, keyslots %v\n", t.ID, t.Type, t.Keyslots)
	}
	fmt.Fprintf(w, "Header\t%s\n", st.Health)
	fmt.Fprintf(w, "Registration\t%s\n", regLine)
	for _, p := range st.Problems {
		fmt.Fprintf(w, "Problem\t%s\n", p)
	}
	if st.Wipe != nil {
		fmt.Fprintf(w, "Wipe\t%s\n", wipeLine(st.Wipe, path))
	}
	switch {
	case st.Attached != nil:
		ro := ""
		if st.Attached.ReadOnly {
			ro = " read-only"
		}
		fmt.Fprintf(w, "Attached\t%s%s by process %d since %s\n", st.Attached.URI, ro, st.Attached.PID, rfc3339(st.Attached.Since.Time))
	case st.InUse:
		fmt.Fprintf(w, "Attached\tin use by another process (no attachment record in this state directory)\n")
	default:
		fmt.Fprintf(w, "Attached\tno\n")
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return statusErr(path, st.Erased, st.Problems, keyOnly)
}

// keyslotViews lists img's keyslots as status shows them.
func keyslotViews(img *keyslot.Image) []keyslotJSON {
	out := []keyslotJSON{}
	for _, ks := range img.Keyslots() {
		kdf := ks.KDF.Type
		switch ks.KDF.Type {
		case keyslot.KDFPBKDF2:
			kdf += "-" + ks.KDF.Hash + "/" + strconv.Itoa(ks.KDF.Iterations)
		case keyslot.KDFArgon2i, keyslot.KDFArgon2id:
			kdf += fmt.Sprintf("/t=%d,m=%dKiB,p=%d", ks.KDF.Time, ks.KDF.Memory, ks.KDF.Threads)
		}
		out = append(out, keyslotJSON{ID: ks.ID, Type: ks.Type, KDF: kdf, Priority: string(ks.Priority)})
	}
	return out
}

// tokenViews lists img's tokens as status shows them.
func tokenViews(img *keyslot.Image) []tokenJSON {
	out := []tokenJSON{}
	for _, t := range img.Tokens() {
		ids := []string{}
		for _, k := range t.Keyslots {
			ids = append(ids, strconv.Itoa(k))
		}
		out = append(out, tokenJSON{ID: t.ID, Type: t.Type, Keyslots: ids})
	}
	return out
}

// copyHealth is the status text of one header copy: "ok", or why it is unusable or stale.
func copyHealth(c keyslot.CopyHealth) string {
	if c.Err == nil {
		return "ok"
	}
	return c.Err.Error()
}
