package main

import (
	"fmt"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"crkvol/volume"
)

// resizeJSON is `volume resize --json`.
type resizeJSON struct {
	// Path is the image's absolute path.
	Path string `json:"path"`
	// Size is the data size after the resize, OldSize the one before, in bytes.
	Size    int64 `json:"size"`
	OldSize int64 `json:"oldSize"`
	// Resized is false when the volume already had the size asked for.
	Resized bool `json:"resized"`
	// Wiped says the new part of the data area was zeroed (--wipe).
	Wiped bool `json:"wiped"`
}

// resizeCommand is `volume resize IMG --size N [--wipe]`.
func (a *app) resizeCommand() *cobra.Command {
	var size sizeFlag
	var wipe bool
	cmd := &cobra.Command{Use: "resize IMG", Short: "Grow a volume (its image file and LUKS2 data area) to a new data size", Args: args(cobra.ExactArgs(1)),
		Long: `Grow a volume's data area to --size bytes (a multiple of its sector size): the image file
is extended and the new data size recorded in the volume's token. The LUKS2 data segment runs
to the end of the file ("dynamic"), so cryptsetup sees the new size too. Shrinking is refused.
Asking for the current size does nothing and succeeds, as cryptsetup resize does. The
current size is the data area the file holds, as volume status shows it (a file grown by hand
counts as grown). Only the registered image is resized, not a copy.

The new part is not wiped: it reads as whatever decrypting the file's zeros gives (noise), as
after cryptsetup resize. --wipe writes zeros through the encryption over it; if that is
interrupted, volume wipe finishes it. The volume must not be attached or open elsewhere.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := size.size("size")
			if err != nil {
				return err
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			var bar *progressbar.ProgressBar
			opts := volume.ResizeOptions{Wipe: wipe}
			if wipe && isTerminal(a.stderr) {
				opts.Progress = func(done, total int64) {
					if bar == nil {
						bar = byteBar(a.stderr, total, "wiping")
					}
					bar.Set64(done)
				}
			}
			res, err := a.mgr.Resize(cmd.Context(), args[0], size, opts)
			if bar != nil {
				bar.Finish()
			}
			if err != nil {
				if res.New > 0 && cmd.Context().Err() != nil {
					return interruptedf("grew %s from %s to %s; the wipe of the new part stopped (recorded); run crkvol volume wipe %s to finish it",
						args[0], volume.FormatSize(res.Old), volume.FormatSize(res.New), args[0])
				}
				return err
			}
			changed := res.Old != res.New
			if a.asJSON {
				return a.emit(resizeJSON{Path: res.Path, Size: res.New, OldSize: res.Old, Resized: changed, Wiped: changed && wipe})
			}
			if !changed {
				fmt.Fprintf(a.stdout, "%s is already %s; nothing to do\n", args[0], volume.FormatSize(res.New))
				return nil
			}
			fmt.Fprintf(a.stdout, "resized %s from %s to %s\n", args[0], volume.FormatSize(res.Old), volume.FormatSize(res.New))
			return nil
		}}
	cmd.Flags().Var(&size, "size", "new data size, such as 128MiB or 20GiB, larger than the current one (required)")
	cmd.Flags().BoolVar(&wipe, "wipe", false, "write zeros through the encryption over the new part so it reads as zeros")
	requireFlags(cmd, "size")
	return cmd
}
