package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"crkvol/keyslot"
	"crkvol/volume"
)

// foreignStatusJSON is `volume status --json` of a LUKS2 image without a crkvol-crk token
// (made by cryptsetup, say), which crkvol describes but does not manage.
type foreignStatusJSON struct {
	Path   string `json:"path"`
	Format string `json:"format"`
	// Adoptable says whether volume adopt can take the image; NotAdoptable says why not.
	Adoptable    bool          `json:"adoptable"`
	NotAdoptable string        `json:"notAdoptable,omitempty"`
	UUID         string        `json:"uuid"`
	Cipher       string        `json:"cipher"`
	KeyBits      int           `json:"cipherKeyBits"`
	SectorSize   int           `json:"sectorSize"`
	DataOffset   int64         `json:"dataOffset"`
	Keyslots     []keyslotJSON `json:"keyslots"`
	Tokens       []tokenJSON   `json:"tokens"`
}

// describeForeign prints what `volume status` can tell of the LUKS2 image at path that crkvol
// does not manage (err, the error of describing it, matches volume.ErrNoToken): its cipher,
// keyslots and tokens, and whether volume adopt can take it. It returns an error either way,
// since the image is not a crkvol volume: err when adopt can take it (the hint names adopt),
// else the *volume.NotAdoptableError saying why not (the hint names the commands that make it
// adoptable, or says how to copy its data, or there is none).
func (a *app) describeForeign(ctx context.Context, path string, err error) error {
	whyNot := volume.Adoptable(ctx, path)
	var na *volume.NotAdoptableError
	if whyNot != nil && !errors.As(whyNot, &na) {
		return err // the image changed or cannot be read: say what describing it said
	}
	f, oerr := os.Open(path)
	if oerr != nil {
		return err
	}
	defer f.Close()
	img, oerr := keyslot.Open(f, nil)
	if oerr != nil {
		return err
	}
	if na != nil {
		err = na
	}
	seg := img.Segment()
	st := foreignStatusJSON{
		Path: absPath(path), Format: "LUKS2", Adoptable: na == nil, UUID: img.UUID(), Cipher: seg.Encryption,
		KeyBits: 8 * img.VolumeKeySize(), SectorSize: seg.SectorSize, DataOffset: int64(seg.Offset),
		Keyslots: keyslotViews(img), Tokens: tokenViews(img),
	}
	if na != nil {
		st.NotAdoptable = na.Reason
	}
	return a.describeImage(st, err, func(w io.Writer) {
		describeForeignText(w, st, na)
	})
}

// describeForeignText writes the rows of describeForeign's table.
func describeForeignText(w io.Writer, st foreignStatusJSON, na *volume.NotAdoptableError) {
	fmt.Fprintf(w, "Path\t%s\n", st.Path)
	fmt.Fprintf(w, "Format\tLUKS2, not managed by crkvol (no crkvol-crk token)\n")
	if na != nil {
		fmt.Fprintf(w, "Adoptable\tno: %s\n", na.Reason)
	}
	fmt.Fprintf(w, "UUID\t%s\n", st.UUID)
	fmt.Fprintf(w, "Cipher\t%s, %d-bit key, %d-byte sectors\n", st.Cipher, st.KeyBits, st.SectorSize)
	fmt.Fprintf(w, "Data\tat %d\n", st.DataOffset)
	for _, ks := range st.Keyslots {
		fmt.Fprintf(w, "Keyslot %d\t%s, %s, priority %s\n", ks.ID, ks.Type, ks.KDF, ks.Priority)
	}
	if len(st.Keyslots) == 0 {
		fmt.Fprintf(w, "Keyslots\tnone\n")
	}
	for _, t := range st.Tokens {
		fmt.Fprintf(w, "Token %d\t%s, keyslots %v\n", t.ID, t.Type, t.Keyslots)
	}
}

// describeImage prints a `volume status` view of an image crkvol does not manage: st as JSON
// with --json, else the table rows text writes; then returns err, the status's outcome.
func (a *app) describeImage(st any, err error, text func(w io.Writer)) error {
	if a.asJSON {
		if jerr := a.emit(st); jerr != nil {
			return jerr
		}
		return err
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	text(w)
	if ferr := w.Flush(); ferr != nil {
		return ferr
	}
	return err
}

// unreadableStatusJSON is `volume status --json` of a LUKS2 image whose header names an
// algorithm crkvol does not implement (cryptsetup luksFormat --hash sha384, say).
type unreadableStatusJSON struct {
	Path         string `json:"path"`
	Format       string `json:"format"`
	Adoptable    bool   `json:"adoptable"`
	NotAdoptable string `json:"notAdoptable"`
}

// describeUnreadable prints what `volume status` can tell of a LUKS2 image whose header
// crkvol cannot read, na saying why (see volume.NotAdoptableError.Err): that it is LUKS2,
// and why crkvol cannot adopt it. It returns na, so that status fails with the hint on
// copying the data through cryptsetup.
func (a *app) describeUnreadable(na *volume.NotAdoptableError) error {
	st := unreadableStatusJSON{Path: absPath(na.Path), Format: "LUKS2", NotAdoptable: na.Reason}
	return a.describeImage(st, na, func(w io.Writer) {
		fmt.Fprintf(w, "Path\t%s\n", st.Path)
		fmt.Fprintf(w, "Format\tLUKS2, a header crkvol cannot read\n")
		fmt.Fprintf(w, "Adoptable\tno: %s\n", na.Reason)
	})
}
