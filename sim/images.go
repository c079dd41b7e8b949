package sim

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"crkvol/keyslot"
	"crkvol/qcow2"
	"crkvol/volume"
)

// The encrypted custom images of a run (Scenario.Images): LUKS-encrypted qcow2 files made at
// the start from volumes of the fleet, in the image catalog beside the volume registry with
// their passphrases wrapped by the source volume's root key (their WDEKs). Nothing of the sim
// handles them afterwards: a rotation's hook (or a host's agent, or a sync) rewraps an image's
// WDEK with the volumes of its key, through the same faulty key service, so KMS errors,
// outages and crashes inside a rewrap hit images as they hit volumes. The audit checks every
// image and creates a volume from each (up to imageVolumesChecked of a catalog).

// imageVolumesChecked bounds the volumes the audit creates from the images of one catalog
// (the fleet's, or a host's).
const imageVolumesChecked = 8

// simImage is one catalog image.
type simImage struct {
	idx      int
	name     string
	crn      string
	path     string
	key      int      // index into keys
	host     *simHost // with hosts: the host whose catalog holds it
	imported bool     // exported with a passphrase of the sim's and imported with its WDEK
	// extents and sum are the content of the source volume when the image was made, which a
	// volume created from the image must read back.
	extents [2]int64
	sum     [32]byte
	// sha256 is the image file's at its making: no rotation may change it.
	sha256 string
}

// ImagesReport describes the encrypted custom images of a run (Scenario.Images).
type ImagesReport struct {
	// Images is the number made at the start: Exported by volume.Manager.ExportImage with a
	// random passphrase wrapped straight into the catalog, Imported exported with a
	// passphrase of the sim's and imported (volume.Manager.ImportImage) with its WDEK.
	Images   int `json:"images"`
	Exported int `json:"exported"`
	Imported int `json:"imported"`
	// Rewraps counts WDEKs rewrapped to a new key version over every pass (images are not
	// counted in the report's Rewraps); RewrapFailures those a pass could not rewrap after
	// its retries (they kept their old, valid WDEK until a later pass); RewrapsAborted those
	// a crash cut off.
	Rewraps        int `json:"rewraps"`
	RewrapFailures int `json:"rewrapFailures"`
	RewrapsAborted int `json:"rewrapsAborted"`
	// MaxOnOldVersions is the most images seen on an older key version at one sample;
	// StaleAtEnd those still on one when the run ended, before the final reconciliation.
	MaxOnOldVersions int `json:"maxOnOldVersions"`
	StaleAtEnd       int `json:"staleAtEnd"`
	// The audit: Current counts the images whose catalog WDEK is on their key's latest
	// version, with a registration on it too; Unlocked those whose WDEK unwraps and unlocks
	// the LUKS1 header inside the image; Unchanged those whose file's SHA-256 is the one it
	// had when made; VolumesCreated the volumes created from an image (under another key
	// when there is one) that read back the image's content. Failed counts the images that
	// failed a check, and the catalog entries that are no image of the run (the audit then
	// fails).
	Current        int `json:"current"`
	Unlocked       int `json:"unlocked"`
	Unchanged      int `json:"unchanged"`
	VolumesCreated int `json:"volumesCreated"`
	Failed         int `json:"failed"`
}

// imageCatalog is one catalog of images: the fleet's, or a host's.
type imageCatalog struct {
	host *simHost // nil without hosts
	mgr  *volume.Manager
	reg  *volume.Registry
	dir  string // holds images/ and volumes/
}

// catalogs lists the run's catalogs: the fleet's, or each host's.
func (r *runner) catalogs() []imageCatalog {
	if r.hs == nil {
		return []imageCatalog{{mgr: r.mgr, reg: r.reg, dir: r.opts.Dir}}
	}
	cs := make([]imageCatalog, 0, len(r.hs.hosts))
	for _, h := range r.hs.hosts {
		cs = append(cs, imageCatalog{host: h, mgr: h.mgr, reg: h.reg, dir: h.dir})
	}
	return cs
}

// makeImages makes the scenario's images in every catalog, from the catalog's volumes. It
// runs at setup, without faults, after the fleet is created. Image j of a catalog is under
// key j mod Keys, made from a volume of that key (or, if the catalog has none, of another
// key: with hosts, a host may so have images of a key none of its volumes uses); every
// other image is imported.
func (r *runner) makeImages(ctx context.Context) error {
	n := r.sc.images()
	if n == 0 {
		return nil
	}
	r.rep.Images = &ImagesReport{}
	for _, c := range r.catalogs() {
		if err := os.MkdirAll(filepath.Join(c.dir, "images"), 0o700); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		var vols []*vol
		for _, crn := range r.order {
			if v := r.vols[crn]; v.host == c.host && v.written {
				vols = append(vols, v)
			}
		}
		if len(vols) == 0 {
			continue
		}
		for j := range n {
			want := j % r.sc.Keys
			var ofKey []*vol
			for _, v := range vols {
				if v.key == want {
					ofKey = append(ofKey, v)
				}
			}
			if len(ofKey) == 0 {
				ofKey = vols
			}
			src := ofKey[(j/r.sc.Keys)%len(ofKey)]
			img, err := r.makeImage(ctx, c, len(r.imgs), src, want, j%2 == 1)
			if err != nil {
				return fmt.Errorf("sim: making image %d from %s: %w", len(r.imgs), filepath.Base(src.path), err)
			}
			r.imgs = append(r.imgs, img)
			r.imgByCRN[img.crn] = img
			if c.host != nil {
				id := r.keys[img.key].id
				c.host.imgs[id] = append(c.host.imgs[id], img.crn)
			}
		}
	}
	r.rep.Images.Images = len(r.imgs)
	return nil
}

// imageRand is the randomness of image idx (its catalog UUID, passphrase and LUKS header),
// from the seed and its index, so that runs repeat.
func (r *runner) imageRand(idx int, what string) *rand.ChaCha8 {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], r.sc.Seed)
	binary.LittleEndian.PutUint64(seed[8:], uint64(idx))
	copy(seed[16:], what)
	return rand.NewChaCha8(seed)
}

// makeImage exports volume src into an image of catalog c, under key k: into the catalog
// with a random passphrase, or (imported) with a passphrase of the sim's, whose WDEK the sim
// has the key service make and then imports with the file.
func (r *runner) makeImage(ctx context.Context, c imageCatalog, idx int, src *vol, k int, imported bool) (*simImage, error) {
	img := &simImage{idx: idx, name: fmt.Sprintf("img-%06d", idx), key: k, host: c.host, imported: imported,
		extents: src.extents, sum: src.sum}
	img.path = filepath.Join(c.dir, "images", img.name+".qcow2")
	keyID := r.keys[k].id
	// A manager of its own, with the image's randomness, unsubscribed from rotations.
	mgr := volume.NewManager(r.kms, c.reg, volume.Options{Now: r.clock.Now, Logger: r.log, Rand: &lockedReader{r: r.imageRand(idx, "image")}})
	mgr.Close()
	var entry *volume.ImageEntry
	if !imported {
		res, err := mgr.ExportImage(ctx, src.path, img.path, volume.ExportOptions{Name: img.name, KeyID: keyID, ClusterSize: 4096})
		if err != nil {
			return nil, err
		}
		if res.Image == nil {
			return nil, errors.New("the export made no catalog entry")
		}
		entry = res.Image
		r.rep.Images.Exported++
	} else {
		raw := make([]byte, 32)
		r.imageRand(idx, "passphrase").Read(raw)
		// Printable, as QEMU requires of a LUKS passphrase (a UTF-8 secret). A fixed iteration
		// count: stretching cannot strengthen 32 random bytes, and an IterTime (2 s by default
		// with a passphrase) would be measured, making the run slow and its images differ.
		pass := []byte(base64.StdEncoding.EncodeToString(raw))
		if _, err := mgr.ExportImage(ctx, src.path, img.path, volume.ExportOptions{Passphrase: pass, Iterations: 1000}); err != nil {
			return nil, err
		}
		// The WDEK, as `crkvol key wrap` makes it: the passphrase wrapped without AAD.
		w, err := r.kms.Wrap(ctx, keyID, pass, nil)
		if err != nil {
			return nil, err
		}
		if entry, err = mgr.ImportImage(ctx, img.path, volume.ImportOptions{Name: img.name, KeyID: keyID, WDEK: w.Ciphertext}); err != nil {
			return nil, err
		}
		r.rep.Images.Imported++
	}
	img.crn = entry.CRN
	sum, err := fileSHA256(img.path)
	if err != nil {
		return nil, err
	}
	img.sha256 = sum
	if entry.SHA256 != sum {
		return nil, fmt.Errorf("the catalog has SHA-256 %s for %s, the file has %s", entry.SHA256, img.path, sum)
	}
	r.kms.nameImage(entry.CRN, entry.WDEK, idx)
	return img, nil
}

// fileSHA256 is the hex SHA-256 of a file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// isImage reports whether crn is one of the run's images.
func (r *runner) isImage(crn string) bool { return r.imgByCRN[crn] != nil }

// auditImages checks every image: its catalog entry's WDEK is on its key's latest version
// and its registration too, the WDEK unwraps and unlocks the LUKS1 header in the image, the
// file is unchanged, every catalog lists exactly the run's images, and a volume created
// from each image (up to imageVolumesChecked of a catalog) reads back the image's content.
// latest and regVersion are the audit's: each key's latest version, each registration's.
func (r *runner) auditImages(ctx context.Context, latest, regVersion map[string]string) {
	ir := r.rep.Images
	if ir == nil {
		return
	}
	a := &r.rep.Audit
	fail := func(img *simImage, format string, args ...any) {
		ir.Failed++
		a.Failed++
		a.Failures = appendCapped(a.Failures, fmt.Sprintf("image %s: %s", img.name, fmt.Sprintf(format, args...)))
	}
	for _, c := range r.catalogs() {
		entries, err := c.reg.Images()
		if err != nil {
			ir.Failed++
			a.Failed++
			a.Failures = appendCapped(a.Failures, fmt.Sprintf("image catalog: %v", err))
			continue
		}
		listed := map[string]bool{}
		for _, e := range entries {
			listed[e.CRN] = true
			if img := r.imgByCRN[e.CRN]; img == nil || img.host != c.host {
				ir.Failed++
				a.Failed++
				a.Failures = appendCapped(a.Failures, fmt.Sprintf("image catalog lists %s (%s), which is not an image of the run", e.Name, e.CRN))
			}
		}
		created := 0
		for _, img := range r.imgs {
			if img.host != c.host {
				continue
			}
			if !listed[img.crn] {
				fail(img, "missing from the image catalog")
				continue
			}
			ok := r.auditImage(ctx, c, img, latest, regVersion, func(format string, args ...any) { fail(img, format, args...) })
			if ok && created < imageVolumesChecked {
				created++
				if err := r.volumeFromImage(ctx, c, img); err != nil {
					fail(img, "a volume created from it: %v", err)
				} else {
					ir.VolumesCreated++
				}
			}
		}
	}
	a.Passed = a.Passed && ir.Failed == 0
}

// auditImage checks one image's catalog entry, registration, WDEK and file; it reports
// whether every check passed.
func (r *runner) auditImage(ctx context.Context, c imageCatalog, img *simImage, latest, regVersion map[string]string, fail func(string, ...any)) bool {
	ir := r.rep.Images
	e, err := c.reg.Image(img.name)
	if err != nil {
		fail("%v", err)
		return false
	}
	ok := true
	switch {
	case e.CRN != img.crn:
		fail("the catalog entry has CRN %s, not %s", e.CRN, img.crn)
		return false
	case e.KeyVersion != latest[e.KeyID]:
		fail("WDEK on version %s, key's latest is %s", e.KeyVersion, latest[e.KeyID])
		ok = false
	case regVersion[e.CRN] != e.KeyVersion:
		fail("registration on version %q, catalog WDEK on %s", regVersion[e.CRN], e.KeyVersion)
		ok = false
	default:
		ir.Current++
	}
	if sum, err := fileSHA256(img.path); err != nil {
		fail("%v", err)
		ok = false
	} else if sum != img.sha256 || e.SHA256 != img.sha256 {
		fail("file SHA-256 %s (catalog %s), made with %s: the image file was written", sum, e.SHA256, img.sha256)
		ok = false
	} else {
		ir.Unchanged++
	}
	if err := unlockImage(ctx, r.kms, e); err != nil {
		fail("%v", err)
		ok = false
	} else {
		ir.Unlocked++
	}
	return ok
}

// unlockImage unwraps an image's WDEK with its key through ks and unlocks the LUKS1 header
// inside the image file with it.
func unlockImage(ctx context.Context, ks volume.KeyService, e volume.ImageEntry) error {
	u, err := ks.Unwrap(ctx, e.KeyID, e.WDEK, nil)
	defer clear(u.Plaintext)
	if err != nil {
		return fmt.Errorf("unwrapping its WDEK: %w", err)
	}
	f, err := os.Open(e.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	q, err := qcow2.Open(f, fi.Size(), qcow2.Options{})
	if err != nil {
		return err
	}
	hdr := q.EncryptionHeader()
	if hdr == nil {
		return errors.New("the image is not encrypted")
	}
	l1, err := keyslot.ParseLUKS1(hdr, hdr.Size())
	if err != nil {
		return err
	}
	mk, _, err := l1.Unlock(ctx, hdr, u.Plaintext)
	if err != nil {
		return fmt.Errorf("its WDEK does not unlock its LUKS1 header: %w", err)
	}
	clear(mk)
	return nil
}

// volumeFromImage creates a volume from img (under the next key, so the image's key and the
// volume's differ when there are two), checks that it reads back the image's content, and
// deletes it (crypto-erased, its registration gone).
func (r *runner) volumeFromImage(ctx context.Context, c imageCatalog, img *simImage) error {
	path := filepath.Join(c.dir, "volumes", fmt.Sprintf("from-%s.img", img.name))
	k := (img.key + 1) % len(r.keys)
	info, err := c.mgr.CreateFromImage(ctx, path, volume.FromImageOptions{Image: img.name, KeyID: r.keys[k].id, Sparse: true})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("creating it: %w", err)
	}
	h, err := c.mgr.Open(ctx, info.Path)
	if err == nil {
		err = verify(h, &vol{path: info.Path, extents: img.extents, sum: img.sum})
		if cerr := h.Close(); err == nil {
			err = cerr
		}
	}
	if derr := c.mgr.Delete(ctx, info.Path, volume.DeleteOptions{CryptoErase: true, RemoveImage: true}); err == nil && derr != nil {
		err = fmt.Errorf("deleting it: %w", derr)
	}
	return err
}

// splitFailed counts a pass's failures: of volumes and of images, each as failed after its
// retries or cut off by a crash.
func (r *runner) splitFailed(rep *volume.Report) (failed, aborted, imgFailed, imgAborted int) {
	for crn, err := range rep.Failed {
		cut := errors.Is(err, ErrCrash) || errors.Is(err, ErrServiceDown) || errors.Is(err, context.Canceled)
		switch img := r.isImage(crn); {
		case img && cut:
			imgAborted++
		case img:
			imgFailed++
		case cut:
			aborted++
		default:
			failed++
		}
	}
	return failed, aborted, imgFailed, imgAborted
}
