package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"crkvol/volume"
)

// wipeCommand is `volume wipe IMG [--all]`.
func (a *app) wipeCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{Use: "wipe IMG", Short: "Finish an interrupted wipe (or, with --all, wipe the whole volume) so it reads as zeros", Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			if err := a.runWipe(cmd.Context(), args[0], all); err != nil {
				return err
			}
			if a.asJSON {
				return a.emit(map[string]any{"path": absPath(args[0]), "wiped": true})
			}
			fmt.Fprintf(a.stderr, "wiped %s\n", absPath(args[0]))
			return nil
		}}
	cmd.Flags().BoolVar(&all, "all", false, "wipe the whole data area from the start, destroying its data (default: resume the recorded incomplete wipe)")
	return cmd
}

// runWipe carries out (all: starts over) the wipe recorded in the volume at path, with a
// progress bar on a terminal. Interrupted, it returns an interrupted error saying how far the
// recorded wipe got and how to finish it.
func (a *app) runWipe(ctx context.Context, path string, all bool) error {
	var bar *progressbar.ProgressBar
	opts := volume.WipeOptions{All: all}
	if isTerminal(a.stderr) {
		opts.Progress = func(done, total int64) {
			if bar == nil {
				bar = byteBar(a.stderr, total, "wiping")
			}
			bar.Set64(done)
		}
	}
	p, err := a.mgr.Wipe(ctx, path, opts)
	if bar != nil {
		bar.Finish()
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, volume.ErrNoWipe):
		return withHint(fmt.Errorf("%s: %w", path, err), "crkvol volume wipe --all "+path+" wipes the whole volume, destroying its data")
	case ctx.Err() != nil && p.Size > 0:
		return interruptedf("%s: wiped %d%% (%d of %d bytes, synced and recorded); the rest is not wiped yet; run crkvol volume wipe %s to finish",
			path, p.Percent(), p.Next, p.Size, path)
	}
	return err
}

// existingWipe explains a `volume create --wipe` refused because path exists: if the image
// there records an incomplete wipe (a create --wipe interrupted), the way to finish it.
func existingWipe(path string, err error) error {
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	info, derr := volume.Describe(path)
	if derr != nil || info.Wipe == nil {
		return err
	}
	return fmt.Errorf("%s exists, with an incomplete wipe (%d%%); run crkvol volume wipe %s to finish it: %w",
		path, info.Wipe.Percent(), path, err)
}

// wipeLine is the status line of an incomplete wipe.
func wipeLine(p *volume.WipeProgress, path string) string {
	return fmt.Sprintf("incomplete, %d%% (%d of %d bytes zeroed); run crkvol volume wipe %s to finish", p.Percent(), p.Next, p.Size, path)
}
