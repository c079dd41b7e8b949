package main

import (
	"errors"
	"fmt"
	"io"

	"crkvol/keyslot"
	"crkvol/volume"
)

// luks1StatusJSON is `volume status --json` of a LUKS1 image, which crkvol describes but does
// not manage.
type luks1StatusJSON struct {
	Path          string          `json:"path"`
	Format        string          `json:"format"`
	UUID          string          `json:"uuid"`
	Cipher        string          `json:"cipher"`
	KeyBits       int             `json:"keyBits"`
	Hash          string          `json:"hash"`
	PayloadOffset uint64          `json:"payloadOffset"`
	Keyslots      []luks1SlotJSON `json:"keyslots"`
}

type luks1SlotJSON struct {
	ID  int    `json:"id"`
	KDF string `json:"kdf"`
}

// describeLUKS1 prints what `volume status` can tell of a LUKS1 image when err, the error of
// describing path, says it is one with a valid header; it returns err either way, so that
// status still fails (the image is not a crkvol volume) and the hint says how to convert it.
func (a *app) describeLUKS1(path string, err error) error {
	var le *volume.LUKS1Error
	if !errors.As(err, &le) || le.Header == nil {
		return err
	}
	h := le.Header
	st := luks1StatusJSON{
		Path: absPath(path), Format: "LUKS1", UUID: h.UUID, Cipher: h.CipherSpec(), KeyBits: 8 * h.KeyBytes,
		Hash: h.HashSpec, PayloadOffset: h.PayloadOffset * 512, Keyslots: []luks1SlotJSON{},
	}
	for _, i := range h.ActiveSlots() {
		st.Keyslots = append(st.Keyslots, luks1SlotJSON{ID: i, KDF: fmt.Sprintf("pbkdf2-%s/%d", h.HashSpec, h.Slots[i].Iterations)})
	}
	return a.describeImage(st, err, func(w io.Writer) {
		describeLUKS1Text(w, st, h)
	})
}

// describeLUKS1Text writes the rows of describeLUKS1's table.
func describeLUKS1Text(w io.Writer, st luks1StatusJSON, h *keyslot.LUKS1) {
	fmt.Fprintf(w, "Path\t%s\n", st.Path)
	fmt.Fprintf(w, "Format\tLUKS1 (not a crkvol volume: crkvol volumes are LUKS2)\n")
	if ok, why := luks1Adoptable(h); !ok {
		fmt.Fprintf(w, "Adoptable\tno: %s\n", why)
	}
	fmt.Fprintf(w, "UUID\t%s\n", st.UUID)
	fmt.Fprintf(w, "Cipher\t%s, %d-bit key, hash %s\n", st.Cipher, st.KeyBits, st.Hash)
	fmt.Fprintf(w, "Data\tat %d\n", st.PayloadOffset)
	for _, ks := range st.Keyslots {
		fmt.Fprintf(w, "Keyslot %d\tluks1, %s\n", ks.ID, ks.KDF)
	}
	if len(st.Keyslots) == 0 {
		fmt.Fprintf(w, "Keyslots\tnone active\n")
	}
}

// luks1Adoptable reports whether crkvol can adopt the LUKS1 image of header h once converted
// to LUKS2 (see keyslot.LUKS1.Adoptable); if not, why is a sentence saying so.
func luks1Adoptable(h *keyslot.LUKS1) (ok bool, why string) {
	if err := h.Adoptable(); err != nil {
		return false, "crkvol cannot adopt this image, not even after cryptsetup convert: " + err.Error()
	}
	return true, ""
}

// luks1Hint is the hint for a LUKS1 image at path with header h: convert it, then adopt it
// (freeing a keyslot first if all 8 are used); or, for a cipher crkvol cannot adopt, that it
// cannot, and how to copy the data into a new volume.
func luks1Hint(path string, h *keyslot.LUKS1) []string {
	p := shellArg(path)
	if ok, why := luks1Adoptable(h); !ok {
		return []string{why, copyHint(p)}
	}
	hints := []string{
		"cryptsetup convert --type luks2 " + p + " converts it in place (back up its header first: cryptsetup luksHeaderBackup " + p + " --header-backup-file FILE)",
		"then crkvol volume adopt " + p + " --key ID --passphrase-file FILE brings it under a root key (FILE holds one of its passphrases)",
	}
	if len(h.ActiveSlots()) == len(h.Slots) {
		hints = append(hints, "all 8 keyslots are in use and adopt adds one: first free one with cryptsetup luksKillSlot "+p+" N (keep one whose passphrase you know)")
	}
	return hints
}

// copyHint is the hint for an image crkvol cannot adopt, at p (quoted for a shell): how to copy
// its data into a new crkvol volume through cryptsetup.
func copyHint(p string) string {
	return "to move its data into a crkvol volume, open it with cryptsetup (cryptsetup open " + p + " NAME) and copy it: crkvol volume create VOL --size SIZE --key ID, then crkvol volume write VOL --input /dev/mapper/NAME"
}

// Hints for a LUKS2 image whose keyslots area is full, and for erasing a LUKS1 image.
const (
	hintKillSlot   = "the image has no room for another keyslot (a LUKS1 image converted to LUKS2 keeps room for 8): free one with cryptsetup luksKillSlot IMG N, keeping one whose passphrase you know (cryptsetup luksDump IMG lists them)"
	hintLUKS1Erase = "crkvol erases only its own volumes; cryptsetup luksErase IMG destroys every keyslot of a LUKS1 image (its data then never opens again)"
)
