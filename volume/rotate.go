package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"crkvol/keyslot"
)

// Report describes one rewrap pass over the volumes of a key: after a rotation, a sync, or a
// lazy-rewrap catch-up.
type Report struct {
	KeyID string
	// NewVersion is the key version the volumes were brought to.
	NewVersion string
	// Volumes is the number of volumes the pass looked at.
	Volumes int
	// Rewrapped volumes got a new ciphertext; AlreadyCurrent ones had it already.
	Rewrapped, AlreadyCurrent int
	// Images is the number of catalog images (see [ImageEntry]) the pass looked at, counted
	// apart from the volumes: ImagesRewrapped got a new WDEK, ImagesAlreadyCurrent had it
	// already. Failed images are in Failed with the volumes, by CRN.
	Images, ImagesRewrapped, ImagesAlreadyCurrent int
	// ImagesReregistered counts the catalog images of the key the pass found with no
	// registration at the key service and registered again (with preventKeyDeletion, on the
	// version of their WDEK) before rewrapping them; they are among Images too.
	ImagesReregistered int
	// Retries counts attempts beyond the first.
	Retries int
	// Failed maps CRNs to the error of their last attempt. A failed volume keeps its old,
	// still valid wrapping.
	Failed map[string]error
	// Elsewhere counts the volumes (and images) asked for that this Manager's registry does
	// not have:
	// registered with the key from other hosts, whose own Manager (their agent, or a sync
	// there) rewraps them. They are not among Volumes.
	Elsewhere int
	// BytesWritten is the total written to images, all header metadata.
	BytesWritten int64
	// Elapsed is the wall time of the pass; Latencies the per-volume (and per-image) times,
	// sorted.
	Elapsed   time.Duration
	Latencies []time.Duration
	// VolumeLatency is each volume's (and image's) time (with retries), by CRN.
	VolumeLatency map[string]time.Duration
}

// RewrapProgress is how far a rewrap pass has got (see Options.Progress).
type RewrapProgress struct {
	KeyID string
	// Volumes is the number of volumes the pass looks at and Images the number of catalog
	// images; Done of the Volumes+Images are finished: Rewrapped, AlreadyCurrent (volumes),
	// ImagesRewrapped, ImagesAlreadyCurrent (images) or Failed (either).
	Volumes, Images, Done                 int
	Rewrapped, AlreadyCurrent, Failed     int
	ImagesRewrapped, ImagesAlreadyCurrent int
	// Elapsed is the wall time since the pass started.
	Elapsed time.Duration
}

// Percentile returns the q-th (0-1) per-volume latency.
func (r *Report) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// Err summarises the failures, or returns nil.
func (r *Report) Err() error {
	if len(r.Failed) == 0 {
		return nil
	}
	crns := make([]string, 0, len(r.Failed))
	for c := range r.Failed {
		crns = append(crns, c)
	}
	slices.Sort(crns)
	errs := make([]error, 0, len(crns))
	for _, c := range crns {
		errs = append(errs, fmt.Errorf("%s: %w", c, r.Failed[c]))
	}
	what := "volumes"
	if r.Images > 0 {
		what = "volumes and images"
	}
	return fmt.Errorf("volume: %d of %d %s of key %s not rewrapped: %w", len(r.Failed), r.Volumes+r.Images, what, r.KeyID, errors.Join(errs...))
}

// onRotate is the rotation hook: it rewraps the stale volumes of the rotated key. Catalog
// images of the key that the notice does not name (their registration is missing) are
// registered again and rewrapped too.
func (m *Manager) onRotate(ctx context.Context, n RotationNotice) error {
	stale := n.Stale
	var made []Registration
	var failed map[string]error
	if m.unregisteredImages(n.KeyID, n.Stale) {
		if regs, _, err := m.kms.Registrations(ctx, n.KeyID); err != nil {
			m.opts.Logger.Warn("rotation: listing the key's registrations to find unregistered images failed", "key", n.KeyID, "err", err)
		} else {
			made, failed = m.repairImageRegistrations(ctx, n.KeyID, regs)
			for _, r := range made {
				if !slices.Contains(stale, r.CRN) {
					stale = append(slices.Clip(stale), r.CRN)
				}
			}
		}
	}
	rep := m.Rewrap(ctx, n.KeyID, n.NewVersion, stale)
	addRepairs(rep, made, failed)
	if m.opts.OnReport != nil {
		m.opts.OnReport(rep)
	}
	return rep.Err()
}

// Sync rewraps every volume and catalog image of keyID whose registration is not on the
// key's latest version: what a crash, a failure or an unreachable volume left behind. Its
// report counts the volumes of the key registered on this machine that were current already
// among Volumes and AlreadyCurrent, and the current images among Images and
// ImagesAlreadyCurrent.
func (m *Manager) Sync(ctx context.Context, keyID string) (*Report, error) {
	regs, latest, err := m.kms.Registrations(ctx, keyID)
	if err != nil {
		return nil, fmt.Errorf("volume: sync key %s: %w", keyID, err)
	}
	made, failed := m.repairImageRegistrations(ctx, keyID, regs)
	regs = append(slices.Clip(regs), made...)
	var stale []string
	for _, r := range regs {
		if r.VersionID != latest {
			stale = append(stale, r.CRN)
		}
	}
	// Registrations may be current while a token is not (a crash between the two writes
	// is repaired by rewrapping every volume whose token lags; reading tokens is cheap).
	current := 0 // volumes of this machine already on latest, registration and token
	currentImages := 0
	for _, r := range regs {
		if r.VersionID == latest {
			if img, err := m.reg.ImageByCRN(r.CRN); err == nil {
				// An image is current when its catalog entry is (the catalog is written before
				// the registration, so this only lags after a hand edit or a restore).
				if img.KeyVersion != latest || img.KeyID != keyID {
					stale = append(stale, r.CRN)
				} else {
					currentImages++
				}
				continue
			}
			if e, err := m.reg.Get(r.CRN); err == nil {
				if info, err := describe(ctx, e.Path); err != nil || info.UUID != e.UUID || info.KeyVersion != latest {
					// Lagging, or unreadable: let the rewrap report what is wrong.
					stale = append(stale, r.CRN)
				} else {
					current++
				}
			}
		}
	}
	rep := m.Rewrap(ctx, keyID, latest, stale)
	// The report counts every volume of the key on this machine: the current ones were
	// looked at too.
	rep.Volumes += current
	rep.AlreadyCurrent += current
	rep.Images += currentImages
	rep.ImagesAlreadyCurrent += currentImages
	addRepairs(rep, made, failed)
	if m.opts.OnReport != nil {
		m.opts.OnReport(rep)
	}
	return rep, nil
}

// addRepairs adds to rep the images repairImageRegistrations registered again (made; the
// rewrap counted them already) and those it could not (failed).
func addRepairs(rep *Report, made []Registration, failed map[string]error) {
	rep.ImagesReregistered += len(made)
	for crn, err := range failed {
		rep.Images++
		rep.Failed[crn] = err
	}
}

// RewrapVolume brings one volume to its key's latest version.
func (m *Manager) RewrapVolume(ctx context.Context, path string) (*Report, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	info, err := describe(ctx, path)
	if err != nil {
		return nil, err
	}
	// Only the registered image is rewrapped: a copy's token is not its registration's.
	if err := m.checkRegisteredFile(path, info.CRN); err != nil {
		return nil, fmt.Errorf("volume: rewrap %s: %w", path, err)
	}
	_, latest, err := m.kms.Registrations(ctx, info.KeyID)
	if err != nil {
		return nil, fmt.Errorf("volume: rewrap %s: %w", path, err)
	}
	if _, err := m.reg.Get(info.CRN); err != nil {
		return nil, fmt.Errorf("volume: rewrap %s: %w", path, err)
	}
	rep := m.Rewrap(ctx, info.KeyID, latest, []string{info.CRN})
	return rep, rep.Err()
}

// Rewrap brings the passphrase ciphertexts of the given volumes and catalog images (by CRN)
// of key keyID to version latest, on a pool of Workers goroutines, retrying failures with
// backoff. Each volume is one atomic LUKS2 token update followed by its registration update;
// the data is never touched. Each image is a rewrap of its WDEK (no AAD), one catalog update
// and its registration update; the image file is never read nor written.
func (m *Manager) Rewrap(ctx context.Context, keyID, latest string, crns []string) *Report {
	start := time.Now()
	rep := &Report{KeyID: keyID, NewVersion: latest, Failed: map[string]error{}, VolumeLatency: map[string]time.Duration{}}
	// Volumes of other hosts (registered with the key, not in this registry) are theirs to
	// rewrap; any other registry error is the volume's failure, reported by its rewrap.
	local := make([]string, 0, len(crns))
	images := map[string]bool{}
	for _, crn := range crns {
		if _, err := m.reg.Get(crn); errors.Is(err, ErrNotRegistered) {
			if _, ierr := m.reg.ImageByCRN(crn); ierr == nil {
				images[crn] = true
				local = append(local, crn)
				continue
			}
			rep.Elsewhere++
			continue
		}
		local = append(local, crn)
	}
	crns = local
	rep.Images = len(images)
	rep.Volumes = len(crns) - rep.Images
	var mu sync.Mutex
	progress := func() {
		if m.opts.Progress != nil {
			m.opts.Progress(RewrapProgress{KeyID: keyID, Volumes: rep.Volumes, Images: rep.Images,
				Done:      rep.Rewrapped + rep.AlreadyCurrent + rep.ImagesRewrapped + rep.ImagesAlreadyCurrent + len(rep.Failed),
				Rewrapped: rep.Rewrapped, AlreadyCurrent: rep.AlreadyCurrent, Failed: len(rep.Failed),
				ImagesRewrapped: rep.ImagesRewrapped, ImagesAlreadyCurrent: rep.ImagesAlreadyCurrent, Elapsed: time.Since(start)})
		}
	}
	progress()
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range min(m.opts.Workers, max(len(crns), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for crn := range jobs {
				t0 := time.Now()
				res, attempts, err := m.rewrapWithRetry(ctx, keyID, latest, crn, images[crn])
				d := time.Since(t0)
				mu.Lock()
				rep.Retries += attempts - 1
				rep.Latencies = append(rep.Latencies, d)
				rep.VolumeLatency[crn] = d
				rep.BytesWritten += res.bytes
				switch {
				case err != nil:
					rep.Failed[crn] = err
				case images[crn] && res.changed:
					rep.ImagesRewrapped++
				case images[crn]:
					rep.ImagesAlreadyCurrent++
				case res.changed:
					rep.Rewrapped++
				default:
					rep.AlreadyCurrent++
				}
				progress()
				mu.Unlock()
			}
		}()
	}
	for _, crn := range crns {
		jobs <- crn
	}
	close(jobs)
	wg.Wait()
	sort.Slice(rep.Latencies, func(i, j int) bool { return rep.Latencies[i] < rep.Latencies[j] })
	rep.Elapsed = time.Since(start)
	m.opts.Logger.Info("rewrap pass done", "key", keyID, "version", latest, "volumes", rep.Volumes,
		"rewrapped", rep.Rewrapped, "current", rep.AlreadyCurrent, "images", rep.Images, "images_rewrapped", rep.ImagesRewrapped,
		"images_current", rep.ImagesAlreadyCurrent, "failed", len(rep.Failed), "retries", rep.Retries, "elsewhere", rep.Elsewhere)
	return rep
}

type rewrapResult struct {
	changed bool
	bytes   int64
}

// permanent marks errors not worth retrying.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

func (m *Manager) rewrapWithRetry(ctx context.Context, keyID, latest, crn string, image bool) (rewrapResult, int, error) {
	var total rewrapResult
	one := m.rewrapOne
	if image {
		one = m.rewrapImage
	}
	for attempt := 1; ; attempt++ {
		res, err := one(ctx, keyID, latest, crn)
		total.bytes += res.bytes
		total.changed = total.changed || res.changed
		if err == nil {
			return total, attempt, nil
		}
		// Permanent errors and refusals of the key service (suspended, destroyed or unknown
		// key, failed authentication, ...) cannot change by trying again.
		var p permanent
		if errors.As(err, &p) || errors.Is(err, ErrKeyRefused) || attempt >= m.opts.Attempts || ctx.Err() != nil {
			m.opts.Logger.Warn("rewrap failed", "crn", crn, "attempts", attempt, "err", err)
			return total, attempt, err
		}
		if err := m.opts.Sleep(ctx, m.opts.Backoff(attempt)); err != nil {
			return total, attempt, err
		}
	}
}

// maxCASRounds bounds how many times in a row rewrapOne starts over because another writer
// changed the token between its read and its commit.
const maxCASRounds = 3

// rewrapOne rewraps one volume. It reads the token (under the image's shared lock, briefly),
// has the key service rewrap the ciphertext with no lock held, and commits the new token
// under the exclusive lock only if the ciphertext is still the one it rewrapped (compare and
// swap); then it updates the registration. If another writer (a rewrap elsewhere, a lazy
// rewrap on open) changed the ciphertext meanwhile, theirs is never overwritten with ours:
// the volume is looked at again from what they wrote, which is normally on latest (or on the
// version ours had) already, and otherwise rewrapped from theirs. A failure at any point
// leaves the old, still valid ciphertext in place: an incomplete answer of the key service
// (ErrIncompleteAnswer) is never committed, nor any token that would not read back.
func (m *Manager) rewrapOne(ctx context.Context, keyID, latest, crn string) (res rewrapResult, err error) {
	e, err := m.reg.Get(crn)
	if err != nil {
		return res, permanent{err}
	}
	f, err := os.OpenFile(e.Path, os.O_RDWR, 0)
	if err != nil {
		return res, fmt.Errorf("opening %s: %w", e.Path, err)
	}
	defer f.Close()
	// The file at the registered path must be the registered file: one put there since
	// (a restored backup, another copy) is not rewrapped in its place.
	reg, err := m.registeredFile(e, f)
	if err != nil {
		return res, permanent{err}
	}
	cf := &countingFile{File: f, dev: f}
	if m.opts.RewrapDevice != nil {
		cf.dev = m.opts.RewrapDevice(ctx, crn, f)
	}
	defer func() { res.bytes = cf.written }()
	img, err := keyslot.OpenContext(ctx, cf, nil)
	if err != nil {
		return res, err
	}
	if img.UUID() != e.UUID || CRN(img.UUID()) != crn {
		return res, permanent{fmt.Errorf("%w: %s holds volume %s, not the registered %s (moved or replaced?)", ErrNotRegisteredImage, e.Path, img.UUID(), e.UUID)}
	}
	uuid := img.UUID() // fn below runs under the image's lock: no Image methods in it
	// version is the token's version; lost the version of a rewrap whose commit lost the
	// race to another writer.
	var version, lost string
	for round := 1; ; round++ {
		id, tok, err := findToken(img)
		if err != nil {
			return res, permanent{err}
		}
		if tok.KeyID != keyID {
			return res, permanent{fmt.Errorf("volume %s is protected by key %s, not %s", crn, tok.KeyID, keyID)}
		}
		if round == 1 {
			// A volume that cannot be opened is not rewrapped, nor reported current: that would
			// report a success for a volume that is lost. The check needs the key service (an
			// unwrap, to open the keyslot); its failures are retried as a rewrap's are.
			if err := m.checkForRewrap(ctx, f, img); err != nil {
				return res, err
			}
		}
		version = tok.KeyVersion
		if (version == latest && latest != "") || (version == lost && lost != "") {
			break // current, or the other writer's ciphertext is as new as ours was
		}
		ct, err := tok.ciphertext()
		if err != nil {
			return res, permanent{err}
		}
		// The network round trip, with no lock held.
		w, err := m.kms.Rewrap(ctx, keyID, ct, []string{uuid})
		if err == nil {
			err = checkWrapped("rewrap", w)
		}
		if err != nil {
			return res, fmt.Errorf("rewrapping with key %s: %w", keyID, err)
		}
		err = img.UpdateTokenContext(ctx, id, func(cur json.RawMessage) ([]byte, error) {
			t, err := parseToken(cur, uuid)
			if err != nil {
				return nil, err
			}
			if t.Ciphertext != tok.Ciphertext {
				return nil, errTokenChanged // someone else rewrapped first: never overwrite theirs
			}
			if t.Ciphertext, err = ciphertextMember(w.Ciphertext); err != nil {
				return nil, err
			}
			t.KeyVersion = w.VersionID
			t.WrappedAt = m.opts.Now().UTC().Truncate(time.Second)
			return t.marshalChecked(uuid)
		})
		if err == nil {
			version, res.changed = w.VersionID, true
			break
		}
		if !errors.Is(err, errTokenChanged) {
			return res, err
		}
		if round == maxCASRounds {
			return res, fmt.Errorf("volume %s: %w %d times during a rewrap", crn, errTokenChanged, round)
		}
		lost = w.VersionID
		if err := img.ReloadContext(ctx); err != nil {
			return res, err
		}
	}
	if err := m.kms.UpdateRegistration(ctx, keyID, crn, version); err != nil {
		return res, fmt.Errorf("updating the registration: %w", err)
	}
	m.fillIdentity(reg)
	return res, nil
}

// countingFile counts the bytes written through it to dev; it keeps *os.File's Fd and Sync
// so the keyslot package still locks and syncs.
type countingFile struct {
	*os.File
	dev     keyslot.Device
	written int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) { return c.dev.ReadAt(p, off) }

func (c *countingFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.dev.WriteAt(p, off)
	c.written += int64(n)
	return n, err
}
