package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"crkvol/internal/ident"
	"crkvol/keyslot"
)

// ReidentifyOptions tune [Manager.Reidentify].
type ReidentifyOptions struct {
	// KeyID is the root key that wraps the new passphrase; the key of the image's token if
	// empty.
	KeyID string
	// AllowKeyDeletion registers the new volume without preventKeyDeletion.
	AllowKeyDeletion bool
}

// Reidentify gives a copy of a volume (or an image whose registration is gone) an identity
// of its own, as cryptsetup luksUUID --uuid with luksChangeKey would: a new random LUKS2
// UUID, so a new volume CRN; a new random passphrase in a new keyslot, wrapped by the root key
// (opts.KeyID, or the token's key) in a new crkvol-crk token; a new registration with the
// key service and in the registry. The crkvol keyslot and token of the old identity are
// removed; other keyslots (a passphrase of an adopted image) are kept. The data is not
// touched.
//
// The volume key (the master key that encrypts the data) stays the one of the original:
// whoever holds the original's volume key, or its passphrase with an old copy of its header,
// can decrypt this image too. Reidentify makes the copy a separately registered and rotated
// volume, not a cryptographically independent one; that needs a re-encryption of the data
// (cryptsetup reencrypt), which is out of crkvol's scope.
//
// The steps keep the image in its old state or its new one at every point: the new keyslot
// and token are added first (the old token still opens the image), then the new volume is
// registered, then the UUID is switched in one header commit (from then on the new token
// opens it), then the old token and keyslot are removed. A failure before the switch undoes
// what was done; an interrupted run is finished by running Reidentify again (a registration
// made with the key service just before a crash may be left over; delete it with the key
// service's registration commands).
//
// The registered image of a volume is refused with ErrRegisteredImage; an image attached or
// open for writing elsewhere with ErrInUse.
func (m *Manager) Reidentify(ctx context.Context, path string, opts ReidentifyOptions) (*Info, error) {
	resolved, err := resolvePath(path)
	if err != nil {
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	f, img, err := openImage(ctx, resolved)
	if err != nil {
		return nil, err
	}
	defer closeImage(f)
	if err := lockImage(f, img, OpenOptions{}); err != nil {
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	pending, err := otherTokens(img)
	if err != nil {
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	r, err := m.registrationOf(resolved, fi, CRN(img.UUID()))
	switch {
	case r.sameFile:
		return nil, fmt.Errorf("volume: reidentify %s: %w %s (registered at %s; this path reaches the same file); reidentify gives a copy its own identity", path, ErrRegisteredImage, r.entry.CRN, r.entry.Path)
	case err == nil && r.known:
		// The registered image: an interrupted reidentification left the old identity's
		// token and keyslot behind, or this is a plain refusal.
		if len(pending) == 0 {
			return nil, fmt.Errorf("volume: reidentify %s: %w %s; reidentify gives a copy its own identity", path, ErrRegisteredImage, r.entry.CRN)
		}
		if err := m.removeOld(img, pending); err != nil {
			return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
		}
		return describe(ctx, resolved)
	case err != nil && !errors.Is(err, ErrNotRegisteredImage):
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	// A copy, or an image whose volume the registry does not know. A new identity already
	// registered at this path was interrupted before the switch: finish it.
	for _, p := range pending {
		e, err := m.reg.Get(p.crn)
		if err != nil || !samePath(e.Path, resolved) {
			continue
		}
		if id, ok := idOf(fi); e.hasIdentity() && ok && id != e.id() {
			continue
		}
		if err := img.SetUUID(e.UUID); err != nil {
			return nil, fmt.Errorf("volume: reidentify %s: switching to UUID %s: %w", path, e.UUID, err)
		}
		old, err := otherTokens(img)
		if err != nil {
			return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
		}
		if err := m.removeOld(img, old); err != nil {
			return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
		}
		return describe(ctx, resolved)
	}
	// Leftovers of an attempt that never registered: their keyslots' passphrases are lost.
	if err := m.removeOld(img, pending); err != nil {
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	info, err := m.reidentify(ctx, img, resolved, fi, opts)
	if err != nil {
		return nil, fmt.Errorf("volume: reidentify %s: %w", path, err)
	}
	return info, nil
}

// reidentify does the steps of Reidentify on a copy with no leftovers.
func (m *Manager) reidentify(ctx context.Context, img *keyslot.Image, path string, fi os.FileInfo, opts ReidentifyOptions) (_ *Info, err error) {
	vk, oldID, oldTok, u, err := m.unlock(ctx, img)
	if err != nil {
		return nil, err
	}
	clear(u.Plaintext)
	defer clear(vk)
	oldSlot, _ := oldTok.slot()
	keyID := opts.KeyID
	if keyID == "" {
		keyID = oldTok.KeyID
	}
	keyCRN, err := m.kms.KeyCRN(ctx, keyID)
	if err != nil {
		return nil, err
	}
	uuid, err := ident.NewUUID(m.opts.Rand)
	if err != nil {
		return nil, err
	}
	crn := CRN(uuid)
	pass := make([]byte, passphraseSize)
	defer clear(pass)
	if _, err := io.ReadFull(m.opts.Rand, pass); err != nil {
		return nil, fmt.Errorf("reading random passphrase: %w", err)
	}
	w, err := m.kms.Wrap(ctx, keyID, pass, []string{uuid})
	if err == nil {
		err = checkWrapped("wrap", w)
	}
	if err != nil {
		return nil, fmt.Errorf("wrapping the new passphrase with key %s: %w", keyID, err)
	}
	member, err := ciphertextMember(w.Ciphertext)
	if err != nil {
		return nil, err
	}

	// 1. The new keyslot and token; the old token still opens the image.
	slot, err := img.AddKeyslot(vk, pass, keyslot.SlotOptions{ID: keyslot.AnyKeyslot, KDF: passphraseKDF})
	if err != nil {
		return nil, fmt.Errorf("adding a keyslot: %w", err)
	}
	defer func() {
		if err != nil {
			if rerr := img.RemoveKeyslot(slot); rerr != nil {
				m.opts.Logger.Warn("undoing a failed reidentification: removing the new keyslot failed", "path", path, "err", rerr)
			}
		}
	}()
	tok := token{
		Keyslots: []string{strconv.Itoa(slot)}, KeyID: keyID, KeyCRN: keyCRN, KeyVersion: w.VersionID,
		Ciphertext: member, WrappedAt: m.opts.Now().UTC().Truncate(time.Second), VolumeCRN: crn,
		DataSize: oldTok.DataSize,
	}
	raw, err := tok.marshalChecked(uuid)
	if err != nil {
		return nil, err
	}
	tokID, err := img.AddToken(keyslot.AnyToken, raw)
	if err != nil {
		return nil, fmt.Errorf("adding the token: %w", err)
	}
	defer func() {
		if err != nil {
			if rerr := img.RemoveToken(tokID); rerr != nil {
				m.opts.Logger.Warn("undoing a failed reidentification: removing the new token failed", "path", path, "err", rerr)
			}
		}
	}()

	// 2. The registration of the new volume.
	if err := m.kms.Register(ctx, keyID, crn, w.VersionID, !opts.AllowKeyDeletion); err != nil {
		return nil, fmt.Errorf("registering %s with key %s: %w", crn, keyID, err)
	}
	defer func() {
		if err != nil {
			if rerr := m.kms.DeleteRegistration(ctx, keyID, crn); rerr != nil {
				m.opts.Logger.Warn("undoing a failed reidentification: deregistering failed", "crn", crn, "err", rerr)
			}
		}
	}()
	entry := Entry{CRN: crn, UUID: uuid, KeyID: keyID, Created: m.opts.Now().UTC()}.withIdentity(path, fi)
	if err := m.reg.Put(entry); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if rerr := m.reg.Delete(crn); rerr != nil {
				m.opts.Logger.Warn("undoing a failed reidentification: removing the registry entry failed", "crn", crn, "err", rerr)
			}
		}
	}()

	// 3. The switch: one header commit; from here on the image is the new volume.
	if err := img.SetUUID(uuid); err != nil {
		return nil, err
	}

	// 4. The old identity's token and keyslot.
	m.opts.Logger.Info("volume reidentified", "path", path, "crn", crn, "was", oldTok.VolumeCRN)
	if rerr := m.removeOld(img, []otherToken{{id: oldID, crn: oldTok.VolumeCRN, slot: oldSlot, hasSlot: true}}); rerr != nil {
		return nil, fmt.Errorf("the image is volume %s now, but %w; run reidentify again to finish", crn, rerr)
	}
	seg := img.Segment()
	return &Info{
		Path: path, UUID: uuid, CRN: crn, KeyID: keyID, KeyCRN: keyCRN, KeyVersion: w.VersionID, WrappedAt: tok.WrappedAt,
		Size: fi.Size() - int64(seg.Offset), SectorSize: seg.SectorSize, DataOffset: int64(seg.Offset),
	}, nil
}

// otherToken is a crkvol-crk token of an image whose volume_crn names another volume: the
// old identity's, or a new one not switched to yet, of a reidentification.
type otherToken struct {
	id      int
	crn     string
	slot    int
	hasSlot bool
}

// otherTokens lists the crkvol-crk tokens of img that name another volume.
func otherTokens(img *keyslot.Image) ([]otherToken, error) {
	var out []otherToken
	for _, t := range img.Tokens() {
		if t.Type != TokenType {
			continue
		}
		raw, err := img.Token(t.ID)
		if err != nil {
			return nil, err
		}
		var ov *otherVolumeError
		if _, err := parseToken(raw, img.UUID()); !errors.As(err, &ov) {
			continue
		}
		var loose struct {
			Keyslots []string `json:"keyslots"`
		}
		o := otherToken{id: t.ID, crn: ov.got}
		if json.Unmarshal(raw, &loose) == nil && len(loose.Keyslots) == 1 {
			if n, err := parseKeyslotID(loose.Keyslots[0]); err == nil {
				o.slot, o.hasSlot = n, true
			}
		}
		out = append(out, o)
	}
	return out, nil
}

// removeOld removes tokens of other identities and the keyslots they name, except a keyslot
// the image's own token uses.
func (m *Manager) removeOld(img *keyslot.Image, old []otherToken) error {
	own := -1
	if _, tok, err := findToken(img); err == nil {
		if s, ok := tok.slot(); ok {
			own = s
		}
	}
	for _, o := range old {
		if err := img.RemoveToken(o.id); err != nil && !errors.Is(err, keyslot.ErrTokenNotFound) {
			return fmt.Errorf("removing the old token %d: %w", o.id, err)
		}
		if o.hasSlot && o.slot != own && hasKeyslot(img, o.slot) {
			if err := img.RemoveKeyslot(o.slot); err != nil {
				return fmt.Errorf("removing the old keyslot %d: %w", o.slot, err)
			}
		}
	}
	return nil
}
