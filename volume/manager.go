package volume

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"crkvol/internal/ident"
	"crkvol/keyslot"
)

// Errors of volume management.
var (
	// ErrBadToken means the crkvol-crk token is missing fields or malformed.
	ErrBadToken = errors.New("invalid crkvol-crk token")
	// ErrNoToken means the image has no crkvol-crk token: it was not made or adopted by
	// crkvol.
	ErrNoToken = errors.New("LUKS2 image not managed by crkvol (no crkvol-crk token)")
	// ErrAlreadyAdopted means the image already has a crkvol-crk token.
	ErrAlreadyAdopted = errors.New("image already has a crkvol-crk token")
	// ErrErased means the volume was crypto-erased: no keyslot is left.
	ErrErased = errors.New("volume has been crypto-erased")
	// ErrBadSize means a volume size is not a positive multiple of the sector size.
	ErrBadSize = errors.New("invalid volume size")
	// ErrIncompleteAnswer means the key service answered a wrap, unwrap or rewrap as a
	// success but without a ciphertext, a plaintext or a key version, or with a key or version
	// id that is not well-formed. It is a failure of the service, not a refusal (it does not
	// match ErrKeyRefused), and nothing of such an answer is stored: the token keeps its old,
	// still valid ciphertext.
	ErrIncompleteAnswer = errors.New("incomplete or malformed answer from the key service")
)

// checkWrapped refuses a wrap or rewrap answer that crkvol could not store: one without a
// ciphertext or without a key version. op names the call.
func checkWrapped(op string, w Wrapped) error {
	if len(w.Ciphertext) == 0 || w.VersionID == "" {
		return fmt.Errorf("%w: the %s answer has no ciphertext or no key version", ErrIncompleteAnswer, op)
	}
	return nil
}

// DefaultWorkers is the default of Options.Workers. A rewrap pass is bound by the header
// commits' flushes and by CPU: more commits at once keep more flushes in the device's queue
// (ext4 on virtio here: 2-flush commits/s grow from ~2.6k with 1 at a time to ~6-7k with 16,
// ~8-10k with 64, and no further), and larger waves share the key service's and the
// registry's commits among more volumes (2.38 flushes per volume with waves of 16, 2.10 with
// 64). Measured over 1,000 volumes (BenchmarkRotateFleet, Workers 8/16/32/64/128 in
// interleaved rounds on 2 cores): 64 gave the most volumes/s, 1.6-2× 16's, and 128 no more. A
// small pass is one wave whatever the value, so it costs nothing there.
const DefaultWorkers = 64

// maxRewrapBatch is the most volumes a rewrap wave takes (the key service's batch limit).
const maxRewrapBatch = 1000

// passphraseSize is the size of a volume's random LUKS passphrase.
const passphraseSize = 32

// passphraseKDF protects keyslots holding random passphrases: the passphrase has 256 bits of
// entropy, so the KDF adds nothing but time (as systemd-cryptenroll does for tokens).
var passphraseKDF = keyslot.PBKDF2("sha256", 1000)

// CRN returns the CRN of the volume with LUKS2 UUID uuid.
func CRN(uuid string) string {
	return ident.VolumeCRN(uuid).String()
}

// Options configure a Manager. The zero value is ready to use.
type Options struct {
	// Workers bounds the rewraps a rotation runs at once (the header commits, and the reads
	// and checks of the next wave meanwhile); default DefaultWorkers. With 1, the volumes of
	// a pass go through one after the other, each with its retries, so that a pass repeats
	// exactly (the simulator relies on it).
	Workers int
	// Attempts is how many times a volume's rewrap is tried; default 4.
	Attempts int
	// Backoff returns the wait before retry n (1-based); default 50 ms doubling, at most 2 s.
	Backoff func(n int) time.Duration
	// Sleep waits; default a timer that honours ctx. The simulator replaces it.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand is the source of passphrases and LUKS randomness; crypto/rand if nil.
	Rand io.Reader
	// Now is the clock for token timestamps; time.Now if nil.
	Now func() time.Time
	// Logger receives progress and failures (never secrets); discarded if nil.
	Logger *slog.Logger
	// OnReport, if set, receives the report of every rotation the Manager carries out.
	OnReport func(*Report)
	// Progress, if set, is called as a rewrap pass goes: once at its start and once after
	// each volume, with counts that only grow. Calls are serialised (never two at once) and
	// hold up the pass while they run: keep them short.
	Progress func(RewrapProgress)
	// RewrapBatch is how many volumes a rewrap pass takes through together (a wave): their
	// ciphertexts are rewrapped by one batch call to the key service, their registrations
	// updated by another, and their registry entries in one registry commit, so the key
	// service's and the registry's flushes are shared by the wave. Default: Workers (at most
	// 1000, the key service's batch limit).
	RewrapBatch int
	// RewrapDevice, if set, wraps the image file a rewrap reads and writes the header
	// through (the simulator tears writes with it, as a crash would). The device it returns
	// must pass I/O on to dev; flock and fsync still go to the file.
	RewrapDevice func(ctx context.Context, crn string, dev keyslot.Device) keyslot.Device
}

// Manager creates, opens, adopts and deletes volumes against a key service, and rewraps them
// when their root key rotates. It is safe for concurrent use.
type Manager struct {
	kms   KeyService
	reg   *Registry
	opts  Options
	unsub func()
	// fpBufs are the buffers fingerprints read keyslot areas through.
	fpBufs fingerprintBufs
	// hdrBufs lends the images the Manager opens their header read and write buffers, shared
	// by them all (a rewrap pass opens thousands one after another).
	hdrBufs keyslot.Buffers
	// testOnlyResizeStep, if set (by tests, before use), is called after each step of a
	// resize; an error it returns stops the resize there, as a crash would.
	testOnlyResizeStep func(step string) error
}

// NewManager returns a Manager using kms and the registry reg, subscribed to rotations.
// Close unsubscribes it.
func NewManager(kms KeyService, reg *Registry, opts Options) *Manager {
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.RewrapBatch <= 0 {
		opts.RewrapBatch = opts.Workers
	}
	opts.RewrapBatch = min(opts.RewrapBatch, maxRewrapBatch)
	if opts.Attempts <= 0 {
		opts.Attempts = 4
	}
	if opts.Backoff == nil {
		opts.Backoff = func(n int) time.Duration {
			return min(50*time.Millisecond<<(n-1), 2*time.Second)
		}
	}
	if opts.Sleep == nil {
		opts.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{kms: kms, reg: reg, opts: opts, fpBufs: fingerprintBufs{free: make(chan *[]byte, fingerprintBufsKept)}}
	m.unsub = kms.OnRotate(m.onRotate)
	return m
}

// Close unsubscribes the Manager from rotations. Its other methods keep working: a caller
// that rewraps with Sync itself closes the Manager first so that a renotification it sends
// (a key service's sync) does not also start a rewrap pass of its own.
func (m *Manager) Close() { m.unsub() }

// Info describes a volume.
type Info struct {
	Path       string
	UUID       string
	CRN        string
	KeyID      string
	KeyCRN     string
	KeyVersion string
	// WrappedAt is when the passphrase ciphertext was last made.
	WrappedAt  time.Time
	Size       int64
	SectorSize int
	DataOffset int64
	// Wipe is the record of an incomplete wipe of the data area ([Manager.Wipe]), or nil.
	Wipe *WipeProgress
}

// CreateOptions describe a new volume.
type CreateOptions struct {
	// KeyID is the root key that wraps the volume's passphrase. Required.
	KeyID string
	// Size is the data size in bytes, a multiple of the sector size. Required.
	Size int64
	// SectorSize is 512, 1024, 2048 or 4096 (default).
	SectorSize int
	// KeySize is the master key size in bytes: 64 (AES-256-XTS, default) or 32.
	KeySize int
	// MetadataSize and KeyslotsSize are the LUKS2 header areas (cryptsetup's defaults if
	// zero; small values keep simulated fleets small).
	MetadataSize, KeyslotsSize uint64
	// AllowKeyDeletion registers the volume without preventKeyDeletion.
	AllowKeyDeletion bool
	// Label is the LUKS2 label.
	Label string
	// Rand, if set, replaces the Manager's random source for this volume (its passphrase,
	// UUID, salts and master key). The simulator derives it from a seed so that runs repeat.
	Rand io.Reader
	// Wipe records a wipe of the whole data area in the new token, to be carried out by
	// [Manager.Wipe] (without All): until it completes, the volume shows it as incomplete.
	Wipe bool
}

// Create makes a sparse volume image at path (which must not exist): a LUKS2 header with a
// random 32-byte passphrase in keyslot 0, the passphrase wrapped by the root key (AAD: the
// volume UUID) in a crkvol-crk token, and a registration of the volume's CRN with the key.
// The plaintext passphrase is never written anywhere.
func (m *Manager) Create(ctx context.Context, path string, opts CreateOptions) (*Info, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("volume: create: %w", err)
	}
	if opts.KeyID == "" {
		return nil, fmt.Errorf("volume: create %s: a root key id is required", path)
	}
	if opts.SectorSize == 0 {
		opts.SectorSize = keyslot.DefaultSectorSize
	}
	if opts.Size <= 0 || opts.Size%int64(opts.SectorSize) != 0 {
		return nil, fmt.Errorf("%w: %d bytes is not a positive multiple of the %d-byte sector size", ErrBadSize, opts.Size, opts.SectorSize)
	}
	meta := opts.MetadataSize
	if meta == 0 {
		meta = keyslot.DefaultMetadataSize
	}
	ks := opts.KeyslotsSize
	if ks == 0 {
		ks = 16<<20 - 2*meta
	}
	dataOff := roundUp(int64(2*meta+ks), 1<<20)

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("volume: create: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(path)
		}
	}()
	if err := f.Truncate(dataOff + opts.Size); err != nil {
		return nil, fmt.Errorf("volume: create %s: %w", path, err)
	}
	rnd := m.opts.Rand
	if opts.Rand != nil {
		rnd = opts.Rand
	}
	pass := make([]byte, passphraseSize)
	defer clear(pass)
	if _, err := io.ReadFull(rnd, pass); err != nil {
		return nil, fmt.Errorf("volume: reading random passphrase: %w", err)
	}
	img, vk, err := keyslot.Format(f, uint64(dataOff+opts.Size), pass, keyslot.FormatOptions{
		KDF: passphraseKDF, SectorSize: opts.SectorSize, KeySize: opts.KeySize, MetadataSize: meta, KeyslotsSize: ks,
		DataOffset: uint64(dataOff), Label: opts.Label, Rand: rnd,
	})
	clear(vk) // the keyslot holds it; crkvol needs only the passphrase
	if err != nil {
		return nil, fmt.Errorf("volume: create %s: %w", path, err)
	}
	var wipe *WipeProgress
	if opts.Wipe {
		wipe = &WipeProgress{Size: opts.Size}
	}
	info, err := m.enroll(ctx, img, f, path, opts.KeyID, 0, pass, !opts.AllowKeyDeletion, wipe)
	if err != nil {
		return nil, fmt.Errorf("volume: create %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		m.unenroll(ctx, info)
		return nil, fmt.Errorf("volume: create %s: %w", path, err)
	}
	ok = true
	f.Close()
	m.opts.Logger.Info("volume created", "path", path, "crn", info.CRN, "key", info.KeyID)
	return info, nil
}

// enroll wraps pass (which opens keyslot slot of img, the image in file f at path), stores the
// token, registers the volume with the key service and in the registry (with the image's
// resolved path and file identity); wipe, if set, is recorded in the token. If a step fails,
// the steps before it are undone (registration, token), so a retry starts clean.
func (m *Manager) enroll(ctx context.Context, img *keyslot.Image, f *os.File, path, keyID string, slot int, pass []byte, prevent bool, wipe *WipeProgress) (_ *Info, err error) {
	uuid := img.UUID()
	crn := CRN(uuid)
	w, err := m.kms.Wrap(ctx, keyID, pass, []string{uuid})
	if err == nil {
		err = checkWrapped("wrap", w)
	}
	if err != nil {
		return nil, fmt.Errorf("wrapping the passphrase with key %s: %w", keyID, err)
	}
	keyCRN, err := m.kms.KeyCRN(ctx, keyID)
	if err != nil {
		return nil, err
	}
	member, err := ciphertextMember(w.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("wrapping the passphrase with key %s: %w", keyID, err)
	}
	tok := token{
		Keyslots: []string{fmt.Sprint(slot)}, KeyID: keyID, KeyCRN: keyCRN,
		KeyVersion: w.VersionID, Ciphertext: member,
		WrappedAt: m.opts.Now().UTC().Truncate(time.Second), VolumeCRN: crn, Wipe: wipe,
	}
	if fi, serr := f.Stat(); serr == nil {
		if seg := img.Segment(); seg.Dynamic && fi.Size() > int64(seg.Offset) {
			tok.DataSize = fi.Size() - int64(seg.Offset)
		}
	}
	raw, err := tok.marshalChecked(uuid)
	if err != nil {
		return nil, err
	}
	tokID, err := img.AddToken(keyslot.AnyToken, raw)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if rerr := img.RemoveToken(tokID); rerr != nil {
				m.opts.Logger.Warn("undoing a failed enrolment: removing the token failed", "path", path, "err", rerr)
			}
		}
	}()
	if err := m.kms.Register(ctx, keyID, crn, w.VersionID, prevent); err != nil {
		return nil, fmt.Errorf("registering %s with key %s: %w", crn, keyID, err)
	}
	defer func() {
		if err != nil {
			if rerr := m.kms.DeleteRegistration(ctx, keyID, crn); rerr != nil {
				m.opts.Logger.Warn("undoing a failed enrolment: deregistering failed", "crn", crn, "err", rerr)
			}
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	resolved, err := resolvePath(path)
	if err != nil {
		return nil, err
	}
	e := Entry{CRN: crn, UUID: uuid, KeyID: keyID, Created: m.opts.Now().UTC()}
	// The keyslot was just made to open with pass, and the key service wrapped pass: the
	// volume is proved to open in this state (see [Manager.Rewrap]).
	if state, err := m.readKeyslotState(f, img, slot); err == nil {
		e.Verified = state.fingerprint(uuid, keyID, member)
	}
	if err := m.reg.Put(e.withIdentity(resolved, st)); err != nil {
		return nil, err
	}
	seg := img.Segment()
	return &Info{
		Path: path, UUID: uuid, CRN: crn, KeyID: keyID, KeyCRN: keyCRN, KeyVersion: w.VersionID, WrappedAt: tok.WrappedAt,
		Size: st.Size() - int64(seg.Offset), SectorSize: seg.SectorSize, DataOffset: int64(seg.Offset), Wipe: wipe,
	}, nil
}

// findToken returns the crkvol-crk token of an image, checked (parseToken) against the image:
// its volume_crn must be the image's, and the keyslot it names must exist. A token whose
// volume_crn names another volume is skipped when a token of this volume follows it.
func findToken(img *keyslot.Image) (int, *token, error) {
	id, tok, _, err := findTokenRaw(img)
	return id, tok, err
}

// findTokenRaw is findToken that also returns the token's JSON as stored.
func findTokenRaw(img *keyslot.Image) (int, *token, json.RawMessage, error) {
	uuid := img.UUID()
	var other error
	for _, t := range img.Tokens() {
		if t.Type != TokenType {
			continue
		}
		raw, err := img.Token(t.ID)
		if err != nil {
			return 0, nil, nil, err
		}
		tok, err := parseToken(raw, uuid)
		if ov := (*otherVolumeError)(nil); errors.As(err, &ov) {
			// A token naming another volume (copied, or left by an interrupted
			// reidentification): refused unless a token of this volume follows.
			if other == nil {
				other = fmt.Errorf("token %d: %w", t.ID, err)
			}
			continue
		}
		if err != nil {
			return 0, nil, nil, fmt.Errorf("token %d: %w", t.ID, err)
		}
		if slot, ok := tok.slot(); ok && !hasKeyslot(img, slot) {
			return 0, nil, nil, fmt.Errorf("token %d: %w: keyslots: keyslot %d does not exist", t.ID, ErrBadToken, slot)
		}
		return t.ID, tok, raw, nil
	}
	if other != nil {
		return 0, nil, nil, other
	}
	return 0, nil, nil, ErrNoToken
}

// hasKeyslot reports whether img has keyslot id.
func hasKeyslot(img *keyslot.Image, id int) bool {
	for _, ks := range img.Keyslots() {
		if ks.ID == id {
			return true
		}
	}
	return false
}

// Open attaches a volume: the token's ciphertext is unwrapped by the key service, the
// passphrase unlocks its keyslot, and the master key serves the data. If the key service
// hands back a ciphertext rewrapped to a newer key version, it is stored in the token and the
// registration is updated (lazy rewrap).
func (m *Manager) Open(ctx context.Context, path string) (*Volume, error) {
	return m.OpenWith(ctx, path, OpenOptions{})
}

// OpenWith is Open with options: read-only, or an exclusive attachment. A conflicting open
// elsewhere (an attachment, or a writer) fails at once with ErrInUse. An image file that can
// only be read (no write permission, a read-only file system) opens read-only, not
// exclusively, and without a lazy rewrap; other opens of it fail with ErrReadOnlyImage.
func (m *Manager) OpenWith(ctx context.Context, path string, opts OpenOptions) (*Volume, error) {
	f, img, err := openImage(ctx, path)
	if errors.Is(err, ErrReadOnlyImage) && opts.ReadOnly && !opts.Exclusive {
		// An image the user may only read still opens read-only (no lazy rewrap then: the
		// token cannot be written). An exclusive open needs the write lock, which a
		// read-only descriptor cannot take.
		f, img, err = readImage(ctx, path)
		opts.fileReadOnly = true
	}
	if err != nil {
		return nil, err
	}
	if err := lockImage(f, img, opts); err != nil {
		closeImage(f)
		return nil, err
	}
	r, err := m.imageRegistration(path, f, img)
	if errors.Is(err, ErrNotRegisteredImage) && opts.ReadOnly {
		err = nil // a copy opens read-only
	}
	if err != nil {
		closeImage(f)
		return nil, fmt.Errorf("volume: open %s: %w", path, err)
	}
	if !opts.ReadOnly && !opts.wiping {
		_, tok, terr := findToken(img)
		// A resumed wipe zeroes everything from where it stopped: data written before then
		// would be lost, so nothing else writes until the wipe is done.
		if terr == nil && tok.Wipe != nil {
			closeImage(f)
			return nil, fmt.Errorf("volume: open %s: %w: %d%% of the data area zeroed; finish it first (volume wipe), "+
				"since resuming it zeroes everything past that point", path, ErrWipeIncomplete, tok.Wipe.Percent())
		}
		// A file cut short at a sector boundary still looks like a (smaller) volume: it opens
		// read-only, to recover what is left, but nothing writes to it.
		if fi, serr := f.Stat(); terr == nil && serr == nil {
			if err := truncatedData(img, tok, fi.Size()); err != nil {
				closeImage(f)
				return nil, fmt.Errorf("volume: open %s: %w: data area: %w; it opens read-only", path, ErrUnhealthy, err)
			}
		}
	}
	v, err := m.open(ctx, f, img, opts, r)
	if err != nil {
		closeImage(f)
		return nil, fmt.Errorf("volume: open %s: %w", path, err)
	}
	return v, nil
}

// open unlocks the image and serves its data. Whatever fails, the passphrase is cleared as
// soon as the keyslot is open, and the volume key unless a Volume took it. An unregistered
// copy (r, from imageRegistration, names another image) is served read-only and never
// lazily rewrapped: its registration belongs to the registered image; nor is an image file
// opened read-only (opts.fileReadOnly), whose token cannot be written.
func (m *Manager) open(ctx context.Context, f *os.File, img *keyslot.Image, opts OpenOptions, r registration) (_ *Volume, err error) {
	key, id, tok, u, err := m.unlock(ctx, img)
	if err != nil {
		return nil, err
	}
	clear(u.Plaintext)
	defer func() {
		if err != nil {
			clear(key)
		}
	}()
	copyOf := r.copyOf()
	if u.Rewrapped == nil && copyOf == "" && !opts.fileReadOnly {
		// The keyslot opened with the token's passphrase: a later rewrap need not prove it
		// again while the image stays as it is.
		m.recordVerified(f, img, tok, r)
	}
	if u.Rewrapped != nil && copyOf == "" && !opts.fileReadOnly {
		if err := m.storeRewrapped(ctx, img, id, tok, u.Rewrapped); err != nil {
			// The old wrapping still works; a later rotation or sync retries.
			m.opts.Logger.Warn("lazy rewrap failed", "crn", tok.VolumeCRN, "err", err)
		} else {
			m.fillIdentity(r)
		}
	}
	v, err := newVolume(f, img, key, opts)
	if err != nil {
		return nil, err
	}
	v.copyOf = copyOf
	return v, nil
}

// unlock unwraps the passphrase in the image's crkvol-crk token with the key service and
// opens the token's keyslot with it. It returns the volume key, the token (and its id) and
// the unwrap result, whose Plaintext (the passphrase) the caller must clear with the key. On
// error it returns no secret: whatever it obtained (a passphrase even from a failed unwrap, a
// key) is cleared.
func (m *Manager) unlock(ctx context.Context, img *keyslot.Image) (key []byte, id int, tok *token, u Unwrapped, err error) {
	defer func() {
		if err != nil {
			clear(u.Plaintext)
			clear(key)
			key, u = nil, Unwrapped{}
		}
	}()
	id, tok, err = findToken(img)
	if err != nil {
		return nil, 0, nil, u, err
	}
	if len(img.Keyslots()) == 0 {
		return nil, 0, nil, u, fmt.Errorf("%w: no keyslot left", ErrErased)
	}
	slot, ok := tok.slot()
	if !ok {
		// Keyslots remain, so this is not a crypto-erase: the token lost its keyslot (a hand
		// edit, or its keyslot was killed while others were kept).
		return nil, 0, nil, u, fmt.Errorf("token %d: %w: keyslots: names no keyslot, but the image has %d", id, ErrBadToken, len(img.Keyslots()))
	}
	ct, err := tok.ciphertext()
	if err != nil {
		return nil, 0, nil, u, err
	}
	u, err = m.kms.Unwrap(ctx, tok.KeyID, ct, []string{img.UUID()})
	if err == nil && len(u.Plaintext) == 0 {
		err = fmt.Errorf("%w: the unwrap answer has no plaintext", ErrIncompleteAnswer)
	}
	if err != nil {
		return nil, 0, nil, u, fmt.Errorf("unwrapping the passphrase with key %s: %w", tok.KeyID, err)
	}
	key, _, err = img.UnlockContext(ctx, u.Plaintext, slot)
	if err != nil {
		return key, 0, nil, u, fmt.Errorf("opening keyslot %d: %w", slot, err)
	}
	return key, id, tok, u, nil
}

// storeRewrapped replaces the token's ciphertext with w, unless another writer changed the
// ciphertext meanwhile (theirs is then as new as w or newer, and is kept), and updates the
// registration. No key service call happens under the image's lock. An incomplete w (no
// ciphertext or no key version) is refused and the token left as it is.
func (m *Manager) storeRewrapped(ctx context.Context, img *keyslot.Image, id int, old *token, w *Wrapped) error {
	if err := checkWrapped("unwrap's rewrapped", *w); err != nil {
		return err
	}
	uuid := img.UUID() // fn below runs under the image's lock: no Image methods in it
	err := img.UpdateTokenContext(ctx, id, func(cur json.RawMessage) ([]byte, error) {
		t, err := parseToken(cur, uuid)
		if err != nil {
			return nil, err
		}
		if t.Ciphertext != old.Ciphertext {
			return nil, errTokenChanged
		}
		if t.Ciphertext, err = ciphertextMember(w.Ciphertext); err != nil {
			return nil, err
		}
		t.KeyVersion = w.VersionID
		t.WrappedAt = m.opts.Now().UTC().Truncate(time.Second)
		return t.marshalChecked(uuid)
	})
	if errors.Is(err, errTokenChanged) {
		return nil
	}
	if err != nil {
		return err
	}
	return m.kms.UpdateRegistration(ctx, old.KeyID, old.VolumeCRN, w.VersionID)
}

var errTokenChanged = errors.New("token changed concurrently")

// OpenWithPassphrase attaches a volume with one of its LUKS passphrases, without a key
// service (recovery, or an image not adopted).
func OpenWithPassphrase(path string, passphrase []byte) (*Volume, error) {
	f, img, err := openImage(context.Background(), path)
	if err != nil {
		return nil, err
	}
	if err := lockImage(f, img, OpenOptions{}); err != nil {
		closeImage(f)
		return nil, err
	}
	key, _, err := img.Unlock(passphrase, keyslot.AnyKeyslot)
	if err == nil {
		var v *Volume
		if v, err = newVolume(f, img, key, OpenOptions{}); err == nil {
			return v, nil
		}
		clear(key)
	}
	closeImage(f)
	return nil, fmt.Errorf("volume: open %s: %w", path, err)
}

// openImage opens an image file for reading and writing and reads its header; waiting for
// the header lock ends when ctx does. A file that can be read but not written is refused
// with ErrReadOnlyImage.
func openImage(ctx context.Context, path string) (*os.File, *keyslot.Image, error) {
	return openImageFile(ctx, path, os.O_RDWR)
}

// readImage is openImage for what only reads the image (describing, checking, probing its
// locks): the file is opened read-only, so that an image the user may only read, or one on
// a read-only file system, works. The header lock (flock) and a shared data-area lock work
// on a read-only descriptor.
func readImage(ctx context.Context, path string) (*os.File, *keyslot.Image, error) {
	return openImageFile(ctx, path, os.O_RDONLY)
}

// openImageFile opens the image with flag, os.O_RDWR or os.O_RDONLY, and reads its header.
func openImageFile(ctx context.Context, path string, flag int) (*os.File, *keyslot.Image, error) {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, nil, notWritable(path, flag, err)
	}
	img, err := keyslot.OpenContext(ctx, f, nil)
	if err != nil {
		switch {
		case isLUKS1(err):
			err = luks1Error(f, path)
		case errors.Is(err, keyslot.ErrNotLUKS2) && errors.Is(err, keyslot.ErrUnsupported):
			err = unreadableError(path, err)
		default:
			err = fmt.Errorf("volume: %s: %w", path, err)
		}
		f.Close()
		return nil, nil, err
	}
	return f, img, nil
}

// notWritable returns err, the error of opening path with flag, as ErrReadOnlyImage when the
// file could not be opened for writing but can be for reading (no write permission, or a
// read-only file system), else as it is.
func notWritable(path string, flag int, err error) error {
	var pe *fs.PathError
	if flag&(os.O_RDWR|os.O_WRONLY) == 0 || !errors.As(err, &pe) ||
		!(errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)) {
		return fmt.Errorf("volume: %w", err)
	}
	if r, rerr := os.Open(path); rerr == nil {
		r.Close()
		return fmt.Errorf("volume: %s: %w (%w); it opens read-only", path, ErrReadOnlyImage, pe.Err)
	}
	return fmt.Errorf("volume: %w", err)
}

// AdoptOptions tune Adopt.
type AdoptOptions struct {
	// AllowKeyDeletion registers the volume without preventKeyDeletion.
	AllowKeyDeletion bool
}

// Adopt brings an existing LUKS2 image (made by cryptsetup, say) under a root key: with one of
// its passphrases it adds a keyslot with a random passphrase, wraps that into a crkvol-crk
// token and registers the volume. The data and the existing keyslots are untouched, so the
// original passphrase keeps working. An image crkvol could not serve gives a
// *NotAdoptableError (see Adoptable).
func (m *Manager) Adopt(ctx context.Context, path string, passphrase []byte, keyID string, opts AdoptOptions) (*Info, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("volume: adopt: %w", err)
	}
	f, img, err := openImage(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	switch _, _, err := findToken(img); {
	case err == nil:
		return nil, fmt.Errorf("volume: adopt %s: %w", path, ErrAlreadyAdopted)
	case !errors.Is(err, ErrNoToken):
		// A damaged crkvol-crk token: adopting again would leave two.
		return nil, fmt.Errorf("volume: adopt %s: %w", path, err)
	}
	// An image with the UUID of a registered volume (a copy of a cryptsetup image adopted
	// before, its token removed) must not take over that volume's registration.
	if _, err := m.imageRegistration(path, f, img); err != nil {
		return nil, fmt.Errorf("volume: adopt %s: %w", path, err)
	}
	// Refuse up front, before anything is written, what could not be served once adopted
	// (see Adoptable).
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("volume: adopt %s: %w", path, err)
	}
	if err := adoptable(path, img, st.Size()); err != nil {
		return nil, err
	}
	vk, _, err := img.UnlockContext(ctx, passphrase, keyslot.AnyKeyslot)
	if err != nil {
		return nil, fmt.Errorf("volume: adopt %s: %w", path, err)
	}
	defer clear(vk)
	pass := make([]byte, passphraseSize)
	defer clear(pass)
	if _, err := io.ReadFull(m.opts.Rand, pass); err != nil {
		return nil, fmt.Errorf("volume: reading random passphrase: %w", err)
	}
	// Check the key first, so that a wrong key id costs no keyslot.
	if _, err := m.kms.KeyCRN(ctx, keyID); err != nil {
		return nil, fmt.Errorf("volume: adopt %s: %w", path, err)
	}
	slot, err := img.AddKeyslot(vk, pass, keyslot.SlotOptions{ID: keyslot.AnyKeyslot, KDF: passphraseKDF})
	if err != nil {
		return nil, fmt.Errorf("volume: adopt %s: adding a keyslot: %w", path, err)
	}
	info, err := m.enroll(ctx, img, f, path, keyID, slot, pass, !opts.AllowKeyDeletion, nil)
	if err != nil {
		// The new keyslot's passphrase would be lost: destroy it.
		if rerr := img.RemoveKeyslot(slot); rerr != nil {
			m.opts.Logger.Warn("undoing a failed adoption: removing the keyslot failed", "path", path, "err", rerr)
		}
		return nil, fmt.Errorf("volume: adopt %s: %w", path, err)
	}
	return info, nil
}

// Describe reads a volume's public facts (no key service needed). It waits as long as it
// takes for another process's header commit to end; DescribeContext bounds the wait.
func Describe(path string) (*Info, error) {
	return describe(context.Background(), path)
}

// DescribeContext is Describe with ctx bounding the wait for the header lock (a file whose
// lock another process holds for good, such as a database, would otherwise block forever).
func DescribeContext(ctx context.Context, path string) (*Info, error) {
	return describe(ctx, path)
}

// describe is Describe with a context bounding the wait for the header lock.
func describe(ctx context.Context, path string) (*Info, error) {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_, tok, err := findToken(img)
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", path, err)
	}
	seg := img.Segment()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &Info{
		Path: path, UUID: img.UUID(), CRN: CRN(img.UUID()), KeyID: tok.KeyID, KeyCRN: tok.KeyCRN,
		KeyVersion: tok.KeyVersion, WrappedAt: tok.WrappedAt,
		Size: st.Size() - int64(seg.Offset), SectorSize: seg.SectorSize, DataOffset: int64(seg.Offset), Wipe: tok.Wipe,
	}, nil
}

// DeleteOptions tune Delete.
type DeleteOptions struct {
	// CryptoErase destroys every keyslot first: the data becomes unrecoverable even with
	// the key service.
	CryptoErase bool
	// RemoveImage deletes the image file.
	RemoveImage bool
}

// Delete deregisters a volume from its key and the registry, optionally crypto-erasing it and
// removing its image.
func (m *Manager) Delete(ctx context.Context, path string, opts DeleteOptions) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("volume: delete: %w", err)
	}
	resolved, err := resolvePath(abs)
	if err != nil {
		return fmt.Errorf("volume: delete: %w", err)
	}
	f, img, err := openImage(ctx, abs)
	if err != nil {
		// A lost or unreadable image must not pin its key forever: deregister what the
		// registry knows of that path.
		e, rerr := m.entryByPath(resolved)
		if rerr != nil {
			return fmt.Errorf("%w (and no registry entry has that path)", err) // err names the path
		}
		return m.deregister(ctx, e.KeyID, e.CRN, path)
	}
	defer closeImage(f)
	if err := lockImage(f, img, OpenOptions{}); err != nil {
		return fmt.Errorf("volume: delete %s: %w", path, err)
	}
	_, tok, err := findToken(img)
	if err != nil {
		return fmt.Errorf("volume: delete %s: %w", path, err)
	}
	// Only the registered image gives up its registration: deleting a copy must not
	// deregister the original.
	if _, err := m.imageRegistration(abs, f, img); err != nil {
		return fmt.Errorf("volume: delete %s: %w", path, err)
	}
	if opts.CryptoErase {
		if err := img.Erase(); err != nil {
			return fmt.Errorf("volume: crypto-erase %s: %w", path, err)
		}
	}
	if err := m.deregister(ctx, tok.KeyID, tok.VolumeCRN, path); err != nil {
		return err
	}
	if opts.RemoveImage {
		// The image itself, not a symbolic link to it (which would leave the image on disk,
		// deregistered); a link at path then dangles, and is removed as well.
		if err := os.Remove(resolved); err != nil {
			return fmt.Errorf("volume: delete %s: %w", path, err)
		}
		if resolved != abs {
			if err := os.Remove(abs); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("volume: delete %s: removing the link: %w", path, err)
			}
		}
	}
	return nil
}

func (m *Manager) deregister(ctx context.Context, keyID, crn, path string) error {
	if err := m.kms.DeleteRegistration(ctx, keyID, crn); err != nil {
		return fmt.Errorf("volume: delete %s: deregistering from key %s: %w", path, keyID, err)
	}
	return m.reg.Delete(crn)
}

// unenroll undoes a completed enrolment (best effort).
func (m *Manager) unenroll(ctx context.Context, info *Info) {
	if err := m.kms.DeleteRegistration(ctx, info.KeyID, info.CRN); err != nil {
		m.opts.Logger.Warn("undoing a failed create: deregistering failed", "crn", info.CRN, "err", err)
	}
	if err := m.reg.Delete(info.CRN); err != nil {
		m.opts.Logger.Warn("undoing a failed create: removing the registry entry failed", "crn", info.CRN, "err", err)
	}
}

// entryByPath finds the registry entry of a resolved image path.
func (m *Manager) entryByPath(abs string) (Entry, error) {
	entries, err := m.reg.List()
	if err != nil {
		return Entry{}, err
	}
	for _, e := range entries {
		if samePath(e.Path, abs) {
			return e, nil
		}
	}
	return Entry{}, fmt.Errorf("%w: no volume at %s", ErrNotRegistered, abs)
}

// UnwrapPassphrase returns a volume's LUKS passphrase, unwrapped by the key service and
// checked against its keyslot — for handing to cryptsetup --key-file. The caller must clear
// it and must never log or display it.
func (m *Manager) UnwrapPassphrase(ctx context.Context, path string) ([]byte, error) {
	f, img, err := readImage(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	key, _, _, u, err := m.unlock(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", path, err)
	}
	clear(key)
	return u.Plaintext, nil
}
