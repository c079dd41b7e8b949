package crk

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"crkvol/internal/ident"
)

// Ciphertext format (opaque to callers, base64 in the HTTP API):
//
//	"CRK1" | version id (16 bytes) | GCM nonce (12 bytes) | AES-GCM(plaintext) with tag
//
// The GCM key is the version's material (AES-128, -192 or -256 by its length); the additional
// data binds the key id, the version id and the caller's AAD strings, so a ciphertext moved to
// another key or presented with other AAD fails with ErrAuth.
const (
	ctMagic    = "CRK1"
	ctHeader   = len(ctMagic) + 16 + 12
	maxDEKSize = 7168 // bytes, as Key Protect
	dekSize    = 32   // a generated DEK
)

// WrapResult is the outcome of Wrap.
type WrapResult struct {
	Ciphertext []byte
	// Plaintext is the generated DEK, set only by WrapCreateDEK.
	Plaintext  []byte
	KeyVersion Version
}

// UnwrapResult is the outcome of Unwrap.
type UnwrapResult struct {
	Plaintext []byte
	// KeyVersion is the version the ciphertext was made with.
	KeyVersion Version
	// Rewrapped is a new ciphertext under the latest version when KeyVersion is older (nil
	// otherwise); store it in place of the old one.
	Rewrapped        []byte
	RewrappedVersion Version
}

// RewrapResult is the outcome of Rewrap.
type RewrapResult struct {
	Ciphertext []byte
	// KeyVersion is the (latest) version of the new ciphertext; OldVersion that of the input.
	KeyVersion, OldVersion Version
}

// Wrap encrypts plaintext (1 to 7168 bytes) with the latest version of root key keyID,
// binding aad.
func (s *Service) Wrap(ctx context.Context, keyID string, plaintext []byte, aad []string) (*WrapResult, error) {
	if len(plaintext) == 0 || len(plaintext) > maxDEKSize {
		return nil, s.refuse(ctx, ActionWrap, keyID, fmt.Errorf("%w: plaintext is %d bytes, want 1 to %d", ErrInvalidArgument, len(plaintext), maxDEKSize))
	}
	res, err := s.wrap(ctx, keyID, plaintext, aad)
	if err != nil {
		return nil, s.refuse(ctx, ActionWrap, keyID, err)
	}
	return res, nil
}

// WrapCreateDEK generates a 256-bit data encryption key and wraps it; the result carries both.
func (s *Service) WrapCreateDEK(ctx context.Context, keyID string, aad []string) (*WrapResult, error) {
	dek := make([]byte, dekSize)
	if _, err := io.ReadFull(s.rand, dek); err != nil {
		return nil, fmt.Errorf("crk: reading random DEK: %w", err)
	}
	res, err := s.wrap(ctx, keyID, dek, aad)
	if err != nil {
		clear(dek)
		return nil, s.refuse(ctx, ActionWrap, keyID, err)
	}
	res.Plaintext = dek
	return res, nil
}

func (s *Service) wrap(ctx context.Context, keyID string, plaintext []byte, aad []string) (*WrapResult, error) {
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	var res *WrapResult
	var rec *keyRecord
	err := s.view(ctx, func(tx storeTx) error {
		r, err := s.usableKey(tx, keyID, ActionWrap)
		if err != nil {
			return err
		}
		rec = r
		v := r.latest()
		ct, err := s.seal(r, v, plaintext, aad)
		if err != nil {
			return err
		}
		res = &WrapResult{Ciphertext: ct, KeyVersion: Version{ID: v.ID, CreationDate: v.Created}}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ev := s.newEvent(ctx, ActionWrap, rec, keyID, nil)
	ev.KeyVersion = res.KeyVersion.ID
	if err := s.record(ev); err != nil {
		return nil, err
	}
	return res, nil
}

// Unwrap decrypts a ciphertext made by any retained version of root key keyID with the same
// aad. When that version is not the latest, the result also carries the plaintext rewrapped
// under the latest version.
func (s *Service) Unwrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (*UnwrapResult, error) {
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	var res *UnwrapResult
	var rec *keyRecord
	err := s.view(ctx, func(tx storeTx) error {
		r, pt, v, err := s.open(tx, keyID, ActionUnwrap, ciphertext, aad)
		if err != nil {
			return err
		}
		rec = r
		res = &UnwrapResult{Plaintext: pt, KeyVersion: Version{ID: v.ID, CreationDate: v.Created}}
		if latest := r.latest(); latest.ID != v.ID {
			ct, err := s.seal(r, latest, pt, aad)
			if err != nil {
				return err
			}
			res.Rewrapped = ct
			res.RewrappedVersion = Version{ID: latest.ID, CreationDate: latest.Created}
		}
		return nil
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionUnwrap, keyID, err)
	}
	ev := s.newEvent(ctx, ActionUnwrap, rec, keyID, nil)
	ev.KeyVersion = res.KeyVersion.ID
	if err := s.record(ev); err != nil {
		// The audit log just failed: the error is ErrAudit, not a refusal to record.
		clear(res.Plaintext)
		clear(res.Rewrapped)
		return nil, err
	}
	return res, nil
}

// Rewrap converts a ciphertext of root key keyID to its latest version without returning the
// plaintext. A ciphertext already on the latest version is re-encrypted all the same.
func (s *Service) Rewrap(ctx context.Context, keyID string, ciphertext []byte, aad []string) (*RewrapResult, error) {
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	var res *RewrapResult
	var rec *keyRecord
	err := s.view(ctx, func(tx storeTx) error {
		r, pt, v, err := s.open(tx, keyID, ActionRewrap, ciphertext, aad)
		if err != nil {
			return err
		}
		rec = r
		defer clear(pt)
		latest := r.latest()
		ct, err := s.seal(r, latest, pt, aad)
		if err != nil {
			return err
		}
		res = &RewrapResult{
			Ciphertext: ct,
			KeyVersion: Version{ID: latest.ID, CreationDate: latest.Created},
			OldVersion: Version{ID: v.ID, CreationDate: v.Created},
		}
		return nil
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionRewrap, keyID, err)
	}
	ev := s.newEvent(ctx, ActionRewrap, rec, keyID, nil)
	ev.KeyVersion = res.KeyVersion.ID
	if err := s.record(ev); err != nil {
		return nil, err // ErrAudit, as for Wrap and Unwrap
	}
	return res, nil
}

// CiphertextVersion returns the key version id a ciphertext names, without decrypting it.
func CiphertextVersion(ciphertext []byte) (string, error) {
	if len(ciphertext) < ctHeader+16 || string(ciphertext[:4]) != ctMagic {
		return "", fmt.Errorf("%w: not a crk ciphertext", ErrAuth)
	}
	return ident.FormatUUID([16]byte(ciphertext[4:20])), nil
}

// open loads root key keyID, checks that its state allows action, and decrypts ciphertext.
func (s *Service) open(tx storeTx, keyID, action string, ciphertext []byte, aad []string) (*keyRecord, []byte, *versionRecord, error) {
	r, err := s.usableKey(tx, keyID, action)
	if err != nil {
		return nil, nil, nil, err
	}
	pt, v, err := s.unseal(r, ciphertext, aad)
	if err != nil {
		return nil, nil, nil, err
	}
	return r, pt, v, nil
}

// usableKey loads a root key and checks that its state allows action.
func (s *Service) usableKey(tx storeTx, keyID, action string) (*keyRecord, error) {
	r, err := tx.key(keyID)
	if err != nil {
		return nil, err
	}
	if err := requireRoot(r); err != nil {
		return nil, err
	}
	r.State = r.effectiveState(s.clock.Now())
	if err := allowed(r, action); err != nil {
		return nil, err
	}
	return r, nil
}

func wrapAAD(keyID, versionID string, aad []string) []byte {
	var b bytes.Buffer
	b.WriteString("crkvol wrap v1\x00")
	b.WriteString(keyID)
	b.WriteByte(0)
	b.WriteString(versionID)
	var n [4]byte
	for _, a := range aad {
		binary.BigEndian.PutUint32(n[:], uint32(len(a)))
		b.Write(n[:])
		b.WriteString(a)
	}
	return b.Bytes()
}

// versionAEAD returns the AES-GCM of a key version's material: the cached one (aeadCache)
// when the version's sealed material is the one it was made from.
func (s *Service) versionAEAD(r *keyRecord, v *versionRecord) (cipher.AEAD, error) {
	if v.Destroyed || v.Material == nil {
		_, err := s.openVersion(r, v) // its refusal
		return nil, err
	}
	if a := s.aeads.get(r.ID, v.ID, v.Material); a != nil {
		return a, nil
	}
	material, err := s.openVersion(r, v)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, fmt.Errorf("crk: key %s version %s: %w", r.ID, v.ID, err)
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	s.aeads.put(r.ID, v.ID, v.Material, a)
	return a, nil
}

// aeadCacheSize is the most key versions an aeadCache keeps.
const aeadCacheSize = 1024

// aeadCache keeps the AES-GCM of the key versions used last, so that a wrap or an unwrap
// does not unseal the material and expand the AES key again on every call. Each is kept
// with the sealed material it was made from and used only for the same bytes: a version
// re-sealed (master key rotation) or destroyed is never served from the cache. The expanded
// keys live in memory only, never on disk, and are dropped when the version's key is
// pruned, purged or deleted, when the master key rotates, and when the service closes. It is
// safe for concurrent use (AES-GCM's Seal and Open keep no state between calls).
type aeadCache struct {
	mu sync.Mutex
	m  map[[2]string]cachedAEAD // by key id and version id
}

type cachedAEAD struct {
	sealed []byte
	aead   cipher.AEAD
}

func (c *aeadCache) get(keyID, versionID string, sealed []byte) cipher.AEAD {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[[2]string{keyID, versionID}]; ok && bytes.Equal(e.sealed, sealed) {
		return e.aead
	}
	return nil
}

func (c *aeadCache) put(keyID, versionID string, sealed []byte, a cipher.AEAD) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := [2]string{keyID, versionID}
	if c.m == nil {
		c.m = make(map[[2]string]cachedAEAD)
	}
	if _, ok := c.m[id]; !ok && len(c.m) >= aeadCacheSize {
		for k := range c.m { // evict one, any
			delete(c.m, k)
			break
		}
	}
	c.m[id] = cachedAEAD{sealed: bytes.Clone(sealed), aead: a}
}

// forget drops the versions of key keyID.
func (c *aeadCache) forget(keyID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.m {
		if id[0] == keyID {
			delete(c.m, id)
		}
	}
}

// clear drops every version.
func (c *aeadCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
}

func (s *Service) seal(r *keyRecord, v *versionRecord, plaintext []byte, aad []string) ([]byte, error) {
	aead, err := s.versionAEAD(r, v)
	if err != nil {
		return nil, err
	}
	vid, err := ident.ParseUUID(v.ID)
	if err != nil {
		return nil, fmt.Errorf("crk: internal error: version id %q: %w", v.ID, err)
	}
	out := make([]byte, ctHeader, ctHeader+len(plaintext)+aead.Overhead())
	copy(out, ctMagic)
	copy(out[4:20], vid[:])
	if _, err := io.ReadFull(s.rand, out[20:ctHeader]); err != nil {
		return nil, fmt.Errorf("crk: reading random nonce: %w", err)
	}
	return aead.Seal(out, out[20:ctHeader], plaintext, wrapAAD(r.ID, v.ID, aad)), nil
}

func (s *Service) unseal(r *keyRecord, ct []byte, aad []string) ([]byte, *versionRecord, error) {
	vid, err := CiphertextVersion(ct)
	if err != nil {
		return nil, nil, err
	}
	v := r.version(vid)
	if v == nil {
		return nil, nil, fmt.Errorf("%w: %w: the ciphertext names version %s, which key %s never had", ErrAuth, ErrVersionNotFound, vid, r.ID)
	}
	aead, err := s.versionAEAD(r, v)
	if err != nil {
		return nil, nil, err
	}
	pt, err := aead.Open(nil, ct[20:ctHeader], ct[ctHeader:], wrapAAD(r.ID, v.ID, aad))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: key %s version %s", ErrAuth, r.ID, v.ID)
	}
	return pt, v, nil
}
