package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"crkvol/keyslot"
)

// ErrUnhealthy means an image's keyslot area or data area is missing or inconsistent, so the
// volume cannot be opened: a rewrap of it is a failure, and nothing is written to it.
var ErrUnhealthy = errors.New("volume image is unhealthy")

// AreaKeyService is the Area of a Problem that is the key service's refusal or failure, not
// the image's: the image itself may be sound.
const AreaKeyService = "key service"

// Problem is one thing wrong with an image, found by [Manager.Check].
type Problem struct {
	// Area names the part at fault: "keyslot N", "data area", "token" or "key service".
	Area string
	// Err is the reason.
	Err error
}

// Error returns the problem as "area: reason".
func (p Problem) Error() string { return p.Area + ": " + p.Err.Error() }

// Check checks that a volume can be opened: that each keyslot's area and the data area are
// present in the image file (a dynamic data segment needs at least one whole sector, and a
// whole number of them), and that the crkvol keyslot opens with the passphrase the key
// service unwraps from the token, the volume key verifying against the digest. It returns
// the problems found, each with its area and reason, none for a healthy image; a key service
// that refuses or cannot be reached is a problem ("key service") too, since the volume cannot
// be opened then either. The error is for an image whose header cannot be read at all.
// No secret leaves Check: the passphrase and key are cleared before it returns. A registered
// volume that passes is recorded as proved in the registry (see [Manager.Rewrap]).
func (m *Manager) Check(ctx context.Context, path string) ([]Problem, error) {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	problems, err := m.check(ctx, f, img)
	if err == nil && len(problems) == 0 {
		if _, tok, terr := findToken(img); terr == nil {
			if r, rerr := m.imageRegistration(path, f, img); rerr == nil {
				m.recordVerified(f, img, tok, r)
			}
		}
	}
	return problems, err
}

// check is Check on an open image.
func (m *Manager) check(ctx context.Context, f *os.File, img *keyslot.Image) ([]Problem, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", f.Name(), err)
	}
	problems := layoutProblems(img, st.Size())
	if _, tok, terr := findToken(img); terr == nil && len(problems) == 0 {
		if err := truncatedData(img, tok, st.Size()); err != nil {
			problems = append(problems, Problem{"data area", err})
		}
	}
	return append(problems, m.unlockProblems(ctx, img, nil)...), nil
}

// truncatedData reports a dynamic data area of which the file of fileSize bytes holds less
// than the data_size the token recorded at creation: a file cut short at a sector boundary,
// which the layout alone cannot show. It is nil when the token records no size, and when
// the file lacks even one whole sector of data (the layout check and the open report that).
func truncatedData(img *keyslot.Image, tok *token, fileSize int64) error {
	seg := img.Segment()
	data := fileSize - int64(seg.Offset)
	if !seg.Dynamic || tok.DataSize == 0 || data < int64(seg.SectorSize) || data >= tok.DataSize {
		return nil
	}
	return fmt.Errorf("the file holds %d bytes of data, less than the %d the volume was created with (truncated?)", data, tok.DataSize)
}

// layoutProblems finds keyslot areas and a data area that the file of fileSize bytes does not
// hold: what needs no key to see.
func layoutProblems(img *keyslot.Image, fileSize int64) []Problem {
	var out []Problem
	for _, ks := range img.Keyslots() {
		if ks.Type != "luks2" {
			continue
		}
		if end := int64(ks.AreaOffset + ks.AreaSize); end > fileSize {
			out = append(out, Problem{fmt.Sprintf("keyslot %d", ks.ID),
				fmt.Errorf("area at byte %d (%d bytes) runs past the end of the %d-byte file (truncated?)", ks.AreaOffset, ks.AreaSize, fileSize)})
		}
	}
	seg := img.Segment()
	off, ss := int64(seg.Offset), int64(seg.SectorSize)
	switch {
	case !seg.Dynamic && off+int64(seg.Size) > fileSize:
		out = append(out, Problem{"data area", fmt.Errorf("segment runs to byte %d, past the end of the %d-byte file", off+int64(seg.Size), fileSize)})
	case seg.Dynamic && fileSize < off+ss:
		out = append(out, Problem{"data area", fmt.Errorf("the %d-byte file ends before the first %d-byte sector of the data at byte %d (truncated?)", fileSize, ss, off)})
	case seg.Dynamic && ss > 0 && (fileSize-off)%ss != 0:
		out = append(out, Problem{"data area", fmt.Errorf("%d bytes of data from byte %d are not a whole number of %d-byte sectors (truncated?)", fileSize-off, off, ss)})
	}
	return out
}

// unlockProblems unwraps the token's passphrase and opens its keyslot with it, as opening
// the volume does, and reports what fails. calls, if set, counts the key service call.
func (m *Manager) unlockProblems(ctx context.Context, img *keyslot.Image, calls *atomic.Int64) []Problem {
	id, tok, err := findToken(img)
	if err != nil {
		return []Problem{{"token", err}}
	}
	if len(img.Keyslots()) == 0 {
		return []Problem{{"keyslots", fmt.Errorf("%w: no keyslot left", ErrErased)}}
	}
	slot, ok := tok.slot()
	if !ok {
		return []Problem{{"token", fmt.Errorf("token %d: %w: keyslots: names no keyslot", id, ErrBadToken)}}
	}
	ct, err := tok.ciphertext()
	if err != nil {
		return []Problem{{"token", err}}
	}
	if calls != nil {
		calls.Add(1)
	}
	u, err := m.kms.Unwrap(ctx, tok.KeyID, ct, []string{img.UUID()})
	defer clear(u.Plaintext)
	if err == nil && len(u.Plaintext) == 0 {
		err = fmt.Errorf("%w: the unwrap answer has no plaintext", ErrIncompleteAnswer)
	}
	if err != nil {
		return []Problem{{AreaKeyService, fmt.Errorf("unwrapping the passphrase with key %s: %w", tok.KeyID, err)}}
	}
	key, _, err := img.UnlockContext(ctx, u.Plaintext, slot)
	clear(key)
	if err != nil {
		return []Problem{{fmt.Sprintf("keyslot %d", slot), fmt.Errorf("does not open with the unwrapped passphrase: %w", err)}}
	}
	return nil
}

// unhealthy joins problems into one error matching ErrUnhealthy, or returns nil.
func unhealthy(problems []Problem) error {
	if len(problems) == 0 {
		return nil
	}
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = p
	}
	return fmt.Errorf("%w: %w", ErrUnhealthy, errors.Join(errs...))
}

// checkForRewrap checks a volume before its rewrap: damage to it is a permanent failure
// matching ErrUnhealthy; a key service failure during the check is returned as it is (and
// retried, or not, as the rewrap's own would be). The layout is checked every time (a stat);
// the unwrap and the keyslot unlock are skipped when the registry entry's fingerprint
// (Entry.Verified) is the image's: this Manager proved the keyslot opens in this very state.
// A full check that passes leaves t ready to record the fingerprint it proved.
func (p *rewrapPass) checkForRewrap(t *volumeTask) error {
	st, err := t.f.Stat()
	if err != nil {
		return fmt.Errorf("volume: %s: %w", t.f.Name(), err)
	}
	problems := layoutProblems(t.img, st.Size())
	if len(problems) == 0 {
		if err := truncatedData(t.img, t.tok, st.Size()); err != nil {
			problems = append(problems, Problem{"data area", err})
		}
	}
	if slot, ok := t.tok.slot(); ok && len(problems) == 0 {
		if state, err := p.m.readKeyslotState(t.cf, t.img, slot); err == nil {
			t.state, t.hasState = state, true
			if t.e.Verified != "" && t.e.Verified == state.fingerprint(t.uuid, t.tok.KeyID, t.tok.Ciphertext) {
				return nil
			}
		}
	}
	problems = append(problems, p.m.unlockProblems(p.ctx, t.img, &p.kmsCalls)...)
	var damage []Problem
	for _, pr := range problems {
		if pr.Area == AreaKeyService {
			return pr.Err
		}
		damage = append(damage, pr)
	}
	if err := unhealthy(damage); err != nil {
		return permanent{err}
	}
	t.proved = true
	if t.hasState {
		t.verified = t.state.fingerprint(t.uuid, t.tok.KeyID, t.tok.Ciphertext)
	}
	return nil
}

// recordVerified records in the registry the fingerprint of the state in which the volume
// in file f (at path; its image img, token tok) was just proved to open with its token's
// passphrase, when the image is the volume's registered image and the fingerprint is new.
// It is best effort: a registry that cannot be written (read-only, locked) only means the
// next rewrap checks in full.
func (m *Manager) recordVerified(f *os.File, img *keyslot.Image, tok *token, r registration) {
	slot, ok := tok.slot()
	if !ok || !r.known || r.copy || r.entry.UUID != img.UUID() {
		return
	}
	state, err := m.readKeyslotState(f, img, slot)
	if err != nil {
		return
	}
	fp := state.fingerprint(img.UUID(), tok.KeyID, tok.Ciphertext)
	if fp == r.entry.Verified {
		return
	}
	u := verifiedUpdate{entry: r.entry, verified: fp, fill: r.fill, path: r.path, fi: r.fi}
	if err := m.reg.setVerified([]verifiedUpdate{u}); err != nil {
		m.opts.Logger.Debug("recording a volume's verification in the registry failed", "crn", r.entry.CRN, "err", err)
	}
}
