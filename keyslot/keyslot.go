package keyslot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"crkvol/sector"
)

// AnyKeyslot asks Unlock to try every keyslot, and AddKeyslot to take the lowest free id.
const AnyKeyslot = -1

// areaEncryption is the only keyslot area cipher this package implements, cryptsetup's
// default for LUKS2.
const areaEncryption = "aes-xts-plain64"

// SlotInfo describes a keyslot, without any secret.
type SlotInfo struct {
	ID       int
	Type     string // "luks2", or "reencrypt" for online-reencryption state
	KeySize  int    // volume key bytes
	Priority Priority
	KDF      KDF // Salt is nil
	// AreaOffset and AreaSize place the keyslot's encrypted material on the device;
	// AreaEncryption and AreaKeySize say how it is encrypted.
	AreaOffset, AreaSize uint64
	AreaEncryption       string
	AreaKeySize          int
	AFHash               string
	// Unbound reports a keyslot whose digest covers no segment (cryptsetup luksAddKey
	// --unbound): the key it holds is not the volume key. Unlock never returns it (with
	// AnyKeyslot it is not tried; named, it gives ErrUnboundKeyslot); KeyslotKey does.
	Unbound bool
}

// SlotOptions describe a new keyslot.
type SlotOptions struct {
	// ID is the keyslot id to use, or AnyKeyslot for the lowest free one.
	ID int
	// KDF is required: for example PBKDF2("sha256", 1000) for a random, high-entropy
	// passphrase, or Argon2id(4, 1<<20, 4) for one a person chose.
	KDF KDF
	// Priority is PriorityNormal if empty.
	Priority Priority
	// AFHash is the AF splitter hash; "sha256" if empty.
	AFHash string
}

// Keyslots lists the keyslots in id order.
func (img *Image) Keyslots() []SlotInfo {
	m := img.snapshot().meta
	out := make([]SlotInfo, 0, len(m.keyslots))
	for _, id := range sortedKeys(m.keyslots) {
		ks := m.keyslots[id]
		info := SlotInfo{ID: id, Type: ks.typ}
		if ks.typ == keyslotLUKS2 {
			kdf := ks.kdf
			kdf.Salt = nil
			info.KeySize, info.Priority, info.KDF = ks.keySize, ks.priority, kdf
			info.AreaOffset, info.AreaSize = ks.area.offset, ks.area.size
			info.AreaEncryption, info.AreaKeySize = ks.area.encryption, ks.area.keySize
			info.AFHash = ks.afHash
			info.Unbound = !m.boundToData(id)
		}
		out = append(out, info)
	}
	return out
}

// Unlock returns the volume key and the id of the keyslot that opened with passphrase. The
// key is always checked against the digest of the data segment (segment 0). With slot
// AnyKeyslot it tries the keyslots bound to the data segment, of priority prefer, then
// normal, each in id order, and never those of priority ignore nor unbound ones (see
// [SlotInfo.Unbound]). A named slot is tried whatever its priority; a named unbound keyslot
// that opens gives an error matching ErrUnboundKeyslot and no key ([Image.KeyslotKey] returns
// its key). A passphrase that opens no keyslot gives an error matching ErrWrongPassphrase.
// The caller should clear the returned key when done with it.
func (img *Image) Unlock(passphrase []byte, slot int) ([]byte, int, error) {
	return img.UnlockContext(context.Background(), passphrase, slot)
}

// UnlockContext is [Image.Unlock] with a context: it returns as soon as ctx ends, with an
// error wrapping ctx.Err() instead of ErrWrongPassphrase. pbkdf2 (keyslot or digest) stops
// within about a millisecond; an argon2 derivation, which cannot be interrupted, is abandoned
// and still finishes in the background, bounded by the argon2 limits read headers are held
// to (MaxArgon2Memory, MaxArgon2Threads, MaxArgon2Time). A header may ask for up to
// MaxPBKDF2Iterations or MaxArgon2Time, which take minutes to hours; give a context with a
// deadline, or one cancelled on an interrupt, when the image may come from someone else.
func (img *Image) UnlockContext(ctx context.Context, passphrase []byte, slot int) ([]byte, int, error) {
	m := img.snapshot().meta

	var order []int
	if slot != AnyKeyslot {
		ks, ok := m.keyslots[slot]
		if !ok {
			return nil, -1, fmt.Errorf("%w: keyslot %d", ErrKeyslotNotFound, slot)
		}
		if ks.typ != keyslotLUKS2 {
			return nil, -1, fmt.Errorf("%w: keyslot %d is of type %q and cannot unlock", ErrUnsupported, slot, ks.typ)
		}
		order = []int{slot}
	} else {
		for _, id := range sortedKeys(m.keyslots) {
			if ks := m.keyslots[id]; ks.typ == keyslotLUKS2 && ks.priority != PriorityIgnore && m.boundToData(id) {
				order = append(order, id)
			}
		}
		slices.SortStableFunc(order, func(a, b int) int {
			pa, _ := m.keyslots[a].priority.disk()
			pb, _ := m.keyslots[b].priority.disk()
			return cmp.Compare(pb, pa)
		})
	}
	if len(order) == 0 {
		return nil, -1, fmt.Errorf("%w: the image has no usable keyslot", ErrWrongPassphrase)
	}

	var errs []error
	allWrong := true
	for _, id := range order {
		key, err := img.openKeyslot(ctx, m, id, passphrase)
		if err == nil {
			if !m.boundToData(id) {
				clear(key)
				return nil, -1, fmt.Errorf("keyslot %d: %w", id, ErrUnboundKeyslot)
			}
			return key, id, nil
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, -1, fmt.Errorf("keyslot %d: %w", id, err)
		}
		if !errors.Is(err, ErrWrongPassphrase) {
			allWrong = false
		}
		errs = append(errs, fmt.Errorf("keyslot %d: %w", id, err))
	}
	if allWrong {
		if len(order) == 1 {
			return nil, -1, fmt.Errorf("keyslot %d: %w", order[0], ErrWrongPassphrase)
		}
		return nil, -1, fmt.Errorf("%w (tried keyslots %v)", ErrWrongPassphrase, order)
	}
	return nil, -1, fmt.Errorf("keyslot: no keyslot opened: %w", errors.Join(errs...))
}

// KeyslotKey returns the key keyslot slot holds when passphrase opens it, checked against
// that keyslot's own digest: the volume key for a keyslot bound to the data segment, another
// key for an unbound one (cryptsetup luksAddKey --unbound). Key derivation stops when ctx
// ends, as in [Image.UnlockContext]. The caller should clear the returned key.
func (img *Image) KeyslotKey(ctx context.Context, passphrase []byte, slot int) ([]byte, error) {
	m := img.snapshot().meta
	ks, ok := m.keyslots[slot]
	if !ok {
		return nil, fmt.Errorf("%w: keyslot %d", ErrKeyslotNotFound, slot)
	}
	if ks.typ != keyslotLUKS2 {
		return nil, fmt.Errorf("%w: keyslot %d is of type %q and holds no key", ErrUnsupported, slot, ks.typ)
	}
	key, err := img.openKeyslot(ctx, m, slot, passphrase)
	if err != nil {
		return nil, fmt.Errorf("keyslot %d: %w", slot, err)
	}
	return key, nil
}

// openKeyslot derives the keyslot key, decrypts and merges the keyslot material and checks
// the result against the digest.
func (img *Image) openKeyslot(ctx context.Context, m *metadata, id int, passphrase []byte) ([]byte, error) {
	ks := m.keyslots[id]
	_, d := m.digestOfKeyslot(id)
	if d == nil {
		return nil, fmt.Errorf("%w: keyslot %d has no digest", ErrInvalidMetadata, id)
	}
	if ks.area.encryption != areaEncryption {
		return nil, fmt.Errorf("%w: keyslot area encryption %q", ErrUnsupported, truncate(ks.area.encryption))
	}
	if ks.area.keySize != 32 && ks.area.keySize != 64 {
		return nil, fmt.Errorf("%w: keyslot area key size %d for %s", ErrUnsupported, ks.area.keySize, areaEncryption)
	}
	material := make([]byte, afSize(ks.keySize))
	if _, err := img.dev.ReadAt(material, int64(ks.area.offset)); err != nil {
		return nil, fmt.Errorf("keyslot: reading keyslot area at %d: %w", ks.area.offset, err)
	}
	defer clear(material)

	areaKey, err := ks.kdf.derive(ctx, passphrase, ks.area.keySize)
	if err != nil {
		return nil, err
	}
	if err := withAreaCipher(areaKey, func(c *sector.Cipher) { c.DecryptSectors(material, material, 0) }); err != nil {
		// Only a KDF output with equal halves, as likely as guessing the key.
		return nil, fmt.Errorf("%w: %v", ErrWrongPassphrase, err)
	}
	key, err := afMerge(material, ks.keySize, ks.afHash)
	if err != nil {
		return nil, err
	}
	ok, err := d.verify(ctx, key)
	if err != nil {
		clear(key)
		return nil, err
	}
	if !ok {
		clear(key)
		return nil, ErrWrongPassphrase
	}
	return key, nil
}

// withAreaCipher runs f with the keyslot-area cipher (aes-xts-plain64, 512-byte sectors) of
// areaKey, then wipes the cipher. It clears areaKey once the cipher has its schedule, on
// every path.
func withAreaCipher(areaKey []byte, f func(c *sector.Cipher)) error {
	c, err := sector.New(areaKey, 512)
	clear(areaKey)
	if err != nil {
		return err
	}
	defer c.Wipe()
	f(c)
	return nil
}

// VerifyVolumeKey reports whether volumeKey is the image's volume key (matches the digest of
// the data segment).
func (img *Image) VerifyVolumeKey(volumeKey []byte) error {
	m := img.snapshot().meta
	_, d := m.segmentDigest()
	if d == nil {
		return fmt.Errorf("%w: no digest covers segment 0", ErrInvalidMetadata)
	}
	ok, err := d.verify(context.Background(), volumeKey)
	if err != nil {
		return err
	}
	if !ok {
		return ErrWrongVolumeKey
	}
	return nil
}

// AddKeyslot adds a keyslot holding volumeKey under passphrase and returns its id. The volume
// key must match the image's digest (unlock an existing keyslot to get it). The keyslot
// material is written to a free part of the keyslots area before the metadata commit, so a
// crash leaves either no new keyslot or a complete one.
func (img *Image) AddKeyslot(volumeKey, passphrase []byte, opts SlotOptions) (int, error) {
	if err := opts.KDF.checkNew(); err != nil {
		return -1, err
	}
	if opts.AFHash == "" {
		opts.AFHash = "sha256"
	}
	if _, err := hashByName(opts.AFHash); err != nil {
		return -1, err
	}
	if _, ok := opts.Priority.disk(); !ok {
		return -1, fmt.Errorf("keyslot: priority %q, want normal, ignore or prefer", opts.Priority)
	}
	if opts.Priority == "" {
		opts.Priority = PriorityNormal
	}
	var id int
	err := img.update(func(st *state, m *metadata) error {
		did, d := m.segmentDigest()
		if d == nil {
			return fmt.Errorf("%w: no digest covers segment 0", ErrInvalidMetadata)
		}
		if ok, err := d.verify(context.Background(), volumeKey); err != nil {
			return err
		} else if !ok {
			return ErrWrongVolumeKey
		}
		var err error
		if id, err = m.pickKeyslotID(opts.ID); err != nil {
			return err
		}
		ks, err := img.writeKeyslot(st, m, volumeKey, passphrase, opts)
		if err != nil {
			return err
		}
		m.keyslots[id] = ks
		d.keyslots = append(d.keyslots, id)
		slices.Sort(d.keyslots)
		m.digests[did] = d
		return nil
	})
	if err != nil {
		return -1, err
	}
	return id, nil
}

func (m *metadata) pickKeyslotID(want int) (int, error) {
	if want != AnyKeyslot {
		if want < 0 || want >= MaxKeyslots {
			return -1, fmt.Errorf("%w: keyslot id %d out of range [0, %d)", ErrKeyslotNotFound, want, MaxKeyslots)
		}
		if _, taken := m.keyslots[want]; taken {
			return -1, fmt.Errorf("%w: keyslot %d", ErrKeyslotInUse, want)
		}
		return want, nil
	}
	for id := range MaxKeyslots {
		if _, taken := m.keyslots[id]; !taken {
			return id, nil
		}
	}
	return -1, fmt.Errorf("%w: all %d keyslots are in use", ErrNoSpace, MaxKeyslots)
}

// writeKeyslot allocates an area, writes the encrypted AF-split volume key into it and returns
// the keyslot's metadata.
func (img *Image) writeKeyslot(st *state, m *metadata, volumeKey, passphrase []byte, opts SlotOptions) (*keyslotMeta, error) {
	const areaKeySize = 64 // aes-xts-plain64 with a 512-bit key, as cryptsetup
	offset, size, err := m.allocArea(st.bin.hdrSize, len(volumeKey))
	if err != nil {
		return nil, err
	}
	kdf := opts.KDF
	kdf.Salt = make([]byte, saltSize)
	if _, err := io.ReadFull(img.rand, kdf.Salt); err != nil {
		return nil, fmt.Errorf("keyslot: reading random KDF salt: %w", err)
	}
	areaKey, err := kdf.derive(context.Background(), passphrase, areaKeySize)
	if err != nil {
		return nil, err
	}
	defer clear(areaKey)
	split, err := afSplit(volumeKey, opts.AFHash, img.rand)
	if err != nil {
		return nil, err
	}
	// The whole area: split material then random filler, encrypted in 512-byte units.
	buf := make([]byte, size)
	n := copy(buf, split)
	clear(split)
	if _, err := io.ReadFull(img.rand, buf[n:]); err != nil {
		clear(buf[:n]) // the split volume key, not yet encrypted
		return nil, fmt.Errorf("keyslot: reading random keyslot filler: %w", err)
	}
	material := buf[:afSize(len(volumeKey))]
	if err := withAreaCipher(areaKey, func(c *sector.Cipher) { c.EncryptSectors(material, material, 0) }); err != nil {
		clear(buf[:n])
		return nil, fmt.Errorf("keyslot: keyslot key: %w", err)
	}
	if _, err := img.dev.WriteAt(buf, int64(offset)); err != nil {
		return nil, fmt.Errorf("keyslot: writing keyslot area at %d: %w", offset, err)
	}
	if err := syncDevice(img.dev); err != nil {
		return nil, fmt.Errorf("keyslot: syncing keyslot area: %w", err)
	}
	ks := &keyslotMeta{
		typ:      keyslotLUKS2,
		keySize:  len(volumeKey),
		afHash:   opts.AFHash,
		area:     area{offset: offset, size: size, encryption: areaEncryption, keySize: areaKeySize},
		kdf:      kdf,
		priority: opts.Priority,
	}
	if opts.Priority != PriorityNormal {
		ks.hasPriority = true
	}
	return ks, nil
}

// allocArea finds the first free 4096-aligned gap in the keyslots area for a key of keySize
// bytes (cryptsetup's LUKS2_find_area_gap).
func (m *metadata) allocArea(hdrSize uint64, keySize int) (uint64, uint64, error) {
	size := afAreaSize(keySize)
	start, end := 2*hdrSize, 2*hdrSize+m.config.keyslotsSize
	if d := m.segments[0].offset; d != 0 && d < end {
		end = d
	}
	type span struct{ start, end uint64 }
	var used []span
	for _, ks := range m.keyslots {
		if ks.typ == keyslotLUKS2 {
			used = append(used, span{ks.area.offset, ks.area.offset + ks.area.size})
		}
	}
	slices.SortFunc(used, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	pos := start
	for _, u := range used {
		if u.start >= pos+size {
			break
		}
		if u.end > pos {
			pos = (u.end + 4095) / 4096 * 4096
		}
	}
	if pos+size > end {
		return 0, 0, fmt.Errorf("%w: no free %d-byte gap in the %d-byte keyslots area", ErrNoSpace, size, m.config.keyslotsSize)
	}
	return pos, size, nil
}

// RemoveKeyslot destroys a keyslot: its area is overwritten with random bytes and synced,
// then it is removed from the metadata, its digest and any token that names it (cryptsetup's
// order). Removing the last keyslot bound to the data segment is refused with ErrLastKeyslot
// (unbound keyslots do not open the data); [Image.Erase] does that.
//
// Unlike every other change, removing a luks2 keyslot is allowed on an image with unmet
// requirements, as cryptsetup's luksKillSlot allows it; the requirements are kept.
func (img *Image) RemoveKeyslot(slot int) error {
	return img.updateWith(context.Background(), true, false, func(st *state, m *metadata) error {
		ks, ok := m.keyslots[slot]
		if !ok {
			return fmt.Errorf("%w: keyslot %d", ErrKeyslotNotFound, slot)
		}
		if req := m.config.mandatory; len(req) > 0 && ks.typ != keyslotLUKS2 {
			// Keyslots of other types hold the state of a feature this package does not
			// know (online reencryption): leave them alone.
			return fmt.Errorf("%w: the image requires %q; keyslot %d of type %q may not be removed", ErrUnmetRequirement, req, slot, ks.typ)
		}
		// Only keyslots bound to the data segment open the data; unbound ones do not count.
		bound := 0
		for id, k := range m.keyslots {
			if k.typ == keyslotLUKS2 && m.boundToData(id) {
				bound++
			}
		}
		if ks.typ == keyslotLUKS2 && m.boundToData(slot) && bound == 1 {
			return fmt.Errorf("%w: keyslot %d", ErrLastKeyslot, slot)
		}
		return img.destroyKeyslot(m, slot)
	})
}

// Erase destroys every keyslot (cryptsetup luksErase): the data becomes unrecoverable by
// anyone without a copy of the volume key. Tokens are kept, with their keyslot lists emptied.
// An image with unmet requirements is refused with ErrUnmetRequirement, although cryptsetup
// 2.6.1 erases it: Erase would also remove keyslots of types this package does not know,
// which hold the state of the unknown feature; remove the luks2 keyslots one by one with
// [Image.RemoveKeyslot] instead.
func (img *Image) Erase() error {
	return img.update(func(st *state, m *metadata) error {
		for _, id := range sortedKeys(m.keyslots) {
			if err := img.destroyKeyslot(m, id); err != nil {
				return err
			}
		}
		return nil
	})
}

func (img *Image) destroyKeyslot(m *metadata, slot int) error {
	ks := m.keyslots[slot]
	if ks.typ == keyslotLUKS2 {
		if err := wipe(img.dev, img.rand, ks.area.offset, ks.area.size); err != nil {
			return fmt.Errorf("keyslot %d: %w", slot, err)
		}
	}
	delete(m.keyslots, slot)
	for _, d := range m.digests {
		d.keyslots = slices.DeleteFunc(d.keyslots, func(k int) bool { return k == slot })
	}
	for tid, raw := range m.tokens {
		if !slices.Contains(tokenKeyslots(raw), slot) {
			continue
		}
		updated, err := setTokenKeyslots(raw, slices.DeleteFunc(tokenKeyslots(raw), func(k int) bool { return k == slot }))
		if err != nil {
			return err
		}
		m.tokens[tid] = updated
	}
	return nil
}

// wipe overwrites [off, off+n) with random bytes and syncs.
func wipe(dev Device, rand io.Reader, off, n uint64) error {
	buf := make([]byte, min(n, 1<<20))
	for done := uint64(0); done < n; {
		chunk := buf[:min(uint64(len(buf)), n-done)]
		if _, err := io.ReadFull(rand, chunk); err != nil {
			return fmt.Errorf("reading random wipe bytes: %w", err)
		}
		if _, err := dev.WriteAt(chunk, int64(off+done)); err != nil {
			return fmt.Errorf("wiping keyslot area at %d: %w", off+done, err)
		}
		done += uint64(len(chunk))
	}
	if err := syncDevice(dev); err != nil {
		return fmt.Errorf("syncing wiped keyslot area: %w", err)
	}
	return nil
}
