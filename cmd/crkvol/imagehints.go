package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"crkvol/keyslot"
	"crkvol/volume"
)

// Hints for images crkvol does not manage, attached to the errors of every volume command.
const (
	hintAdopt = "crkvol volume adopt IMG --key ID --passphrase-file FILE brings it under a root key (FILE holds one of its passphrases)"
	hintLUKS1 = "cryptsetup convert --type luks2 IMG converts it to LUKS2 in place (back up its header first: cryptsetup luksHeaderBackup IMG --header-backup-file FILE); crkvol volume adopt can then take it"
)

// withImageHints wraps the RunE of cmd's subcommands so that an error saying the image is
// not one crkvol manages (a LUKS2 image without a crkvol-crk token, a LUKS1 image) carries
// the command that makes it one, or, for an image crkvol cannot adopt, how to copy its data.
func withImageHints(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		run := c.RunE
		if run == nil {
			continue
		}
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			if err != nil && cmd.Name() == "erase" && errors.Is(err, keyslot.ErrLUKS1) {
				return withHint(err, hintLUKS1Erase)
			}
			return qcow2Volume(imageHints(err), args)
		}
	}
}

// imageHints attaches the hint for an image crkvol does not manage to err; other errors,
// and nil, are returned as they are.
func imageHints(err error) error {
	var le *volume.LUKS1Error
	var na *volume.NotAdoptableError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &le) && le.Header != nil:
		return withHint(err, luks1Hint(le.Path, le.Header)...)
	case errors.Is(err, keyslot.ErrLUKS1):
		return withHint(err, hintLUKS1)
	case errors.Is(err, keyslot.ErrNoSpace):
		return withHint(err, hintKillSlot)
	case errors.As(err, &na):
		if hints := notAdoptableHints(na); len(hints) > 0 {
			return withHint(err, hints...)
		}
		return err
	case errors.Is(err, volume.ErrNoToken):
		return withHint(err, hintAdopt)
	}
	return err
}

// notAdoptableHints are the hints for an image crkvol cannot adopt: the cryptsetup or
// truncate commands that make it adoptable, then adopt; or how to copy its data out through
// cryptsetup; or none, when nothing crkvol knows of helps (a file cut short, no keyslot
// holding the volume key).
func notAdoptableHints(na *volume.NotAdoptableError) []string {
	p := shellArg(na.Path)
	var steps []string // commands, each with what it does, run in turn
	switch {
	case na.CopyOut:
		return []string{copyHint(p)}
	case na.TrimTo > 0:
		steps = append(steps, fmt.Sprintf("truncate -s %d %s removes the bytes past its last whole sector, which hold no data", na.TrimTo, p))
	case len(na.Unignore) == 1:
		n := na.Unignore[0]
		steps = append(steps, fmt.Sprintf("cryptsetup config --priority normal --key-slot %d %s lets cryptsetup and crkvol open keyslot %d (neither opens a keyslot of priority ignore unless told to)", n, p, n))
	case len(na.Unignore) > 1:
		ids := make([]string, len(na.Unignore))
		for i, n := range na.Unignore {
			ids[i] = fmt.Sprint(n)
		}
		steps = append(steps, fmt.Sprintf("cryptsetup config --priority normal --key-slot N %s, N being your passphrase's keyslot (one of %s), lets cryptsetup and crkvol open it (neither opens a keyslot of priority ignore unless told to)", p, strings.Join(ids, ", ")))
	}
	if na.AddKeyslot {
		steps = append(steps, "cryptsetup luksAddKey --keyslot-cipher aes-xts-plain64 --keyslot-key-size 512 "+p+" adds a keyslot crkvol can open")
	}
	if len(steps) == 0 {
		return nil
	}
	steps = append(steps, "crkvol volume adopt "+p+" --key ID --passphrase-file FILE, FILE holding its passphrase")
	return []string{strings.Join(steps, "; then ")}
}

// passphraseFileErr explains a passphrase read from file that opened no keyslot when the
// file ends with a newline: the newline is part of the passphrase, since crkvol uses the
// file's bytes as they are (as cryptsetup's --key-file does), so a file written by echo or an
// editor holds another passphrase than the one typed. Other errors are returned as they are.
func passphraseFileErr(err error, file string, pass []byte) error {
	if err == nil || !errors.Is(err, keyslot.ErrWrongPassphrase) || !bytes.HasSuffix(pass, []byte("\n")) {
		return err
	}
	what, cut := "a newline", 1
	if bytes.HasSuffix(pass, []byte("\r\n")) {
		what, cut = "a newline (CR LF)", 2
	}
	return withHint(
		fmt.Errorf("%w; the passphrase file %s ends with %s, which is part of the passphrase (crkvol, like cryptsetup's --key-file, uses the file's bytes as they are)", err, file, what),
		fmt.Sprintf("if the newline is not part of the passphrase, remove it: truncate -s -%d %s", cut, file),
		"or write the file without one: printf %s 'PASSPHRASE' > FILE",
	)
}
