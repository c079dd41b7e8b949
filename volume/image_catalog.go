package volume

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"crkvol/internal/ident"
)

// Errors of the image catalog.
var (
	// ErrImageNotFound means the catalog has no image of that name (or CRN).
	ErrImageNotFound = errors.New("image not found")
	// ErrImageExists means the catalog already has an image of that name.
	ErrImageExists = errors.New("image already exists")
	// ErrImageChanged means the file at an image's path is no longer the file that was
	// imported: another file (device and inode differ), or the same file with other content
	// (its size differs, or its modification or change time differs and so does its SHA-256),
	// or a file that changed while it was read.
	ErrImageChanged = errors.New("image file is no longer the imported one")
	// ErrImageName means an image name is not a valid name: 1 to 63 characters, lowercase
	// letters, digits and hyphens, starting with a letter and not ending with a hyphen (the
	// rule of VPC resource names).
	ErrImageName = errors.New("invalid image name")
)

// ImageEntry is one image of the catalog: an encrypted qcow2 file (QEMU's LUKS inside qcow2)
// whose LUKS passphrase is wrapped by a root key. The wrapped passphrase (the WDEK) is all
// the catalog keeps of the secret; the passphrase itself is never stored.
type ImageEntry struct {
	// Name is the image's name in the catalog, unique (see [ErrImageName]).
	Name string `json:"name"`
	// CRN is the image's CRN (ident.ImageCRN of UUID), registered with its key.
	CRN string `json:"crn"`
	// UUID is crkvol's id of the catalog entry, random, made at import.
	UUID string `json:"uuid"`
	// Path is the image file's absolute path, symbolic links resolved.
	Path string `json:"path"`
	// KeyID is the root key wrapping the passphrase; KeyVersion the version that made WDEK.
	KeyID      string `json:"key_id"`
	KeyVersion string `json:"key_version"`
	// WDEK is the wrapped passphrase: a binary ciphertext of the key service, made with no
	// additional authenticated data (as `ibmcloud kp key wrap` makes one).
	WDEK []byte `json:"wdek"`
	// Size is the guest (virtual) size of the image.
	Size int64 `json:"size"`
	// FileSize and SHA256 (hex) are the image file's size and digest at import.
	FileSize int64  `json:"file_size"`
	SHA256   string `json:"sha256"`
	// ModTime and CTime are the image file's modification and inode change times at import:
	// with Device, Inode and FileSize they tell that the file is still the imported one
	// without reading it all. A write moves CTime even when the writer sets the modification
	// time back; when either differs, the file is hashed and accepted only if its SHA-256 is
	// still SHA256. CTime is zero where the platform has no change time.
	ModTime time.Time `json:"mod_time"`
	CTime   time.Time `json:"ctime,omitzero"`
	// Keyslot is the LUKS keyslot the passphrase unlocked at import (the one tried first
	// when the image is opened; the others are tried only if it fails).
	Keyslot int `json:"keyslot"`
	// ClusterSize and QcowVersion describe the qcow2 file.
	ClusterSize int `json:"cluster_size"`
	QcowVersion int `json:"qcow_version"`
	// Cipher describes the image's LUKS encryption, such as "aes-xts-plain64, 512-bit key,
	// sha256".
	Cipher string `json:"cipher"`
	// Created is when the image was imported.
	Created time.Time `json:"created"`
	// Device and Inode identify the image file (from its stat at import).
	Device uint64 `json:"device,omitempty"`
	Inode  uint64 `json:"inode,omitempty"`
	// RewrappedAt is when WDEK was last rewrapped (zero: never since import).
	RewrappedAt time.Time `json:"rewrapped_at,omitzero"`
}

// Catalog buckets: images by name, and the name of each image's CRN.
var (
	bucketImages      = []byte("images")
	bucketImageByCRN  = []byte("images-by-crn")
	imageNamePattern  = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	errImageCatalogRO = fmt.Errorf("volume: image catalog: %w", bolt.ErrDatabaseReadOnly)
)

// maxImageName is the longest image name.
const maxImageName = 63

// CheckImageName checks an image name: 1 to 63 characters, lowercase letters, digits and
// hyphens, starting with a letter and not ending with a hyphen. The error wraps ErrImageName.
func CheckImageName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrImageName)
	case len(name) > maxImageName:
		return fmt.Errorf("%w: %d characters, at most %d allowed", ErrImageName, len(name), maxImageName)
	case !imageNamePattern.MatchString(name):
		return fmt.Errorf("%w: %q: use lowercase letters, digits and hyphens, start with a letter and do not end with a hyphen", ErrImageName, shortName(name))
	}
	return nil
}

// shortName shortens a refused name for an error message.
func shortName(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Images returns every image of the catalog, sorted by name.
func (r *Registry) Images() ([]ImageEntry, error) {
	if r.db == nil {
		return nil, nil
	}
	var out []ImageEntry
	err := r.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImages)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			e, err := decodeImage(k, v)
			if err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b ImageEntry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Image returns the image called name; ErrImageNotFound if there is none.
func (r *Registry) Image(name string) (ImageEntry, error) {
	var e ImageEntry
	if r.db == nil {
		return e, fmt.Errorf("%w: %s", ErrImageNotFound, name)
	}
	err := r.db.View(func(tx *bolt.Tx) error {
		var err error
		e, err = getImage(tx, name)
		return err
	})
	return e, err
}

// ImageByCRN returns the image with that CRN; ErrImageNotFound if there is none.
func (r *Registry) ImageByCRN(crn string) (ImageEntry, error) {
	var e ImageEntry
	if r.db == nil {
		return e, fmt.Errorf("%w: %s", ErrImageNotFound, crn)
	}
	err := r.db.View(func(tx *bolt.Tx) error {
		var name []byte
		if b := tx.Bucket(bucketImageByCRN); b != nil {
			name = b.Get([]byte(crn))
		}
		if name == nil {
			return fmt.Errorf("%w: %s", ErrImageNotFound, crn)
		}
		var err error
		e, err = getImage(tx, string(name))
		if err == nil && e.CRN != crn {
			err = fmt.Errorf("volume: image catalog: the index names image %s for %s, which has CRN %s", e.Name, crn, e.CRN)
		}
		return err
	})
	return e, err
}

// getImage reads the image called name in tx.
func getImage(tx *bolt.Tx, name string) (ImageEntry, error) {
	var raw []byte
	if b := tx.Bucket(bucketImages); b != nil {
		raw = b.Get([]byte(name))
	}
	if raw == nil {
		return ImageEntry{}, fmt.Errorf("%w: %s", ErrImageNotFound, name)
	}
	return decodeImage([]byte(name), raw)
}

// decodeImage decodes the catalog record of image name.
func decodeImage(name, raw []byte) (ImageEntry, error) {
	var e ImageEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return e, fmt.Errorf("volume: image catalog: image %s: %w", name, err)
	}
	if e.Name != string(name) {
		return e, fmt.Errorf("volume: image catalog: the record of image %s names %s", name, e.Name)
	}
	return e, nil
}

// checkImageEntry checks what the catalog needs of an entry before it is stored.
func checkImageEntry(e ImageEntry) error {
	if err := CheckImageName(e.Name); err != nil {
		return err
	}
	if !ident.IsImageCRN(e.CRN) || e.KeyID == "" || e.KeyVersion == "" || len(e.WDEK) == 0 {
		return fmt.Errorf("volume: image catalog: image %s: incomplete entry (CRN, key, key version or WDEK missing)", e.Name)
	}
	return nil
}

// addImage stores a new image; ErrImageExists if the name is taken (or the CRN is).
func (r *Registry) addImage(e ImageEntry) error {
	if err := checkImageEntry(e); err != nil {
		return err
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if r.db == nil {
		return errImageCatalogRO
	}
	return r.update(func(tx *bolt.Tx) error {
		b, idx, err := imageBuckets(tx)
		if err != nil {
			return err
		}
		if b.Get([]byte(e.Name)) != nil {
			return fmt.Errorf("%w: %s", ErrImageExists, e.Name)
		}
		if idx.Get([]byte(e.CRN)) != nil {
			return fmt.Errorf("%w: CRN %s", ErrImageExists, e.CRN)
		}
		if err := b.Put([]byte(e.Name), raw); err != nil {
			return err
		}
		return idx.Put([]byte(e.CRN), []byte(e.Name))
	})
}

// errImageEntryChanged is returned by an updateImage function that finds the entry changed
// since it was read (a compare and swap that lost).
var errImageEntryChanged = errors.New("image catalog entry changed concurrently")

// updateImage applies fn to the image called name (with that CRN) in one transaction and
// stores what it leaves; an error of fn aborts the update and is returned. Name and CRN
// cannot change.
func (r *Registry) updateImage(name, crn string, fn func(e *ImageEntry) error) error {
	if r.db == nil {
		return errImageCatalogRO
	}
	return r.update(func(tx *bolt.Tx) error {
		e, err := getImage(tx, name)
		if err != nil {
			return err
		}
		if e.CRN != crn {
			// The image was deleted and another imported under its name.
			return fmt.Errorf("%w: %s (CRN %s; now %s)", ErrImageNotFound, name, crn, e.CRN)
		}
		if err := fn(&e); err != nil {
			return err
		}
		if e.Name != name || e.CRN != crn {
			return fmt.Errorf("volume: image catalog: image %s: name and CRN cannot change", name)
		}
		if err := checkImageEntry(e); err != nil {
			return err
		}
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketImages).Put([]byte(name), raw)
	})
}

// deleteImage removes the image called name, if its CRN is crn; a missing image is not an
// error.
func (r *Registry) deleteImage(name, crn string) error {
	if r.db == nil {
		return errImageCatalogRO
	}
	return r.update(func(tx *bolt.Tx) error {
		b, idx, err := imageBuckets(tx)
		if err != nil {
			return err
		}
		if raw := b.Get([]byte(name)); raw != nil {
			e, err := decodeImage([]byte(name), raw)
			if err == nil && e.CRN != crn {
				return nil // another image took the name since
			}
			if err := b.Delete([]byte(name)); err != nil {
				return err
			}
		}
		if cur := idx.Get([]byte(crn)); cur != nil && bytes.Equal(cur, []byte(name)) {
			return idx.Delete([]byte(crn))
		}
		return nil
	})
}

// imageBuckets returns the catalog's buckets, creating them in a registry made before
// images existed.
func imageBuckets(tx *bolt.Tx) (images, byCRN *bolt.Bucket, err error) {
	if images, err = tx.CreateBucketIfNotExists(bucketImages); err != nil {
		return nil, nil, err
	}
	if byCRN, err = tx.CreateBucketIfNotExists(bucketImageByCRN); err != nil {
		return nil, nil, err
	}
	return images, byCRN, nil
}
