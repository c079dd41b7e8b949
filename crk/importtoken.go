package crk

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"time"

	// The hashes of the two RSA-OAEP encryption algorithms, registered for crypto.Hash.
	_ "crypto/sha1"
	_ "crypto/sha256"
)

// Import tokens, as Key Protect has them: an RSA-4096 key pair and a nonce that let a client
// send root key material encrypted end to end. The client creates a token (CreateImportToken),
// retrieves its public key and nonce (GetImportToken, a limited number of times), encrypts its
// material with the public key (RSA-OAEP) and the nonce with its material (AES-GCM), and
// creates or rotates an imported root key with the result ([CreateOptions.Encrypted],
// [Service.RotateKeyEncrypted]). An instance has at most one token: a new one replaces the old.
// The private key is stored sealed under the service master key, as key material is.
//
// Importing keys does not consume the token: as in Key Protect, a token imports any number of
// keys until it expires. Its retrieval count bounds GetImportToken only (Key Protect's own
// tutorial retrieves a one-retrieval token, then imports with it).

// Limits and defaults of import tokens (Key Protect's).
const (
	// DefaultImportTokenExpiration is how long a token lives when ImportTokenOptions gives
	// no Expiration.
	DefaultImportTokenExpiration = 600 * time.Second
	// MinImportTokenExpiration and MaxImportTokenExpiration bound a token's lifetime.
	MinImportTokenExpiration = 300 * time.Second
	MaxImportTokenExpiration = 86400 * time.Second
	// DefaultImportTokenRetrievals is the number of retrievals a token allows when
	// ImportTokenOptions gives no MaxRetrievals; MaxImportTokenRetrievals is the most.
	DefaultImportTokenRetrievals = 1
	MaxImportTokenRetrievals     = 500
	// ImportTokenKeyBits is the size of a token's RSA key.
	ImportTokenKeyBits = 4096
	// ImportTokenNonceSize is the size of a token's nonce, and of the AES-GCM IV that
	// encrypts it (Key Protect's nonces and IVs are 12 bytes).
	ImportTokenNonceSize = 12
)

// The encryption algorithms of [EncryptedMaterial], as the Key Protect API names them.
const (
	// AlgorithmRSAOAEPSHA256 is RSA-OAEP with SHA-256 (MGF1 with SHA-256, no label): the
	// default.
	AlgorithmRSAOAEPSHA256 = "RSAES_OAEP_SHA_256"
	// AlgorithmRSAOAEPSHA1 is RSA-OAEP with SHA-1, for older clients.
	AlgorithmRSAOAEPSHA1 = "RSAES_OAEP_SHA_1"
)

// Activity Tracker actions of import tokens.
const (
	// ActionImportTokenCreate: a token was created (or replaced). A success event's Reason
	// gives the token's expiration date and retrieval limit.
	ActionImportTokenCreate = "kms.import-token.create"
	// ActionImportTokenRead: a token's public key and nonce were retrieved. A success
	// event's Reason gives the retrievals left.
	ActionImportTokenRead = "kms.import-token.read"
	// ActionImportTokenStatus: a token's metadata was read, without retrieving it
	// ([Service.ImportTokenStatus]; crkvol's own action, Key Protect has no such read).
	ActionImportTokenStatus = "kms.import-token-metadata.read"
)

// ImportTokenOptions describe a new import token.
type ImportTokenOptions struct {
	// Expiration is how long the token can be retrieved and used, a whole number of seconds
	// from MinImportTokenExpiration to MaxImportTokenExpiration; 0 means
	// DefaultImportTokenExpiration.
	Expiration time.Duration
	// MaxRetrievals is how many times GetImportToken may retrieve it, 1 to
	// MaxImportTokenRetrievals; 0 means DefaultImportTokenRetrievals.
	MaxRetrievals int
}

// ImportToken is an import token's metadata.
type ImportToken struct {
	// CreationDate is when the token was created.
	CreationDate time.Time
	// ExpirationDate is when the token stops being usable.
	ExpirationDate time.Time
	// MaxRetrievals is the retrieval limit it was created with; RemainingRetrievals how many
	// retrievals it has left.
	MaxRetrievals       int
	RemainingRetrievals int
	// CreatedBy is the principal that created the token.
	CreatedBy string
}

// ImportTokenKey is a retrieved import token: its metadata, public key and nonce.
type ImportTokenKey struct {
	ImportToken
	// PublicKey is the token's RSA-4096 public key, PEM-encoded ("PUBLIC KEY", PKIX).
	PublicKey []byte
	// Nonce is the token's nonce (ImportTokenNonceSize random bytes), which an import must
	// send back encrypted under the imported material.
	Nonce []byte
}

// EncryptedMaterial is root key material sent through the instance's import token.
type EncryptedMaterial struct {
	// Payload is the material encrypted with the token's public key by Algorithm.
	Payload []byte
	// Algorithm is AlgorithmRSAOAEPSHA256 (the default when empty) or AlgorithmRSAOAEPSHA1.
	Algorithm string
	// EncryptedNonce is the token's nonce encrypted with AES-GCM under the material (the
	// material is the AES key, IV the GCM nonce, no additional data): ciphertext and tag.
	EncryptedNonce []byte
	// IV is the AES-GCM IV of EncryptedNonce, ImportTokenNonceSize bytes.
	IV []byte
}

// importTokenRecord is the import token as stored: the document importTokenKind /
// importTokenName. Its private key is a sealedSecret of that document (re-sealed with the key
// material by RotateMasterKey and CopyStore).
type importTokenRecord struct {
	Created       time.Time    `json:"creationDate"`
	Expires       time.Time    `json:"expirationDate"`
	MaxRetrievals int          `json:"maxAllowedRetrievals"`
	Remaining     int          `json:"remainingRetrievals"`
	CreatedBy     string       `json:"createdBy"`
	PublicKey     []byte       `json:"publicKey"`  // PKIX DER
	Nonce         []byte       `json:"nonce"`      // ImportTokenNonceSize bytes
	PrivateKey    sealedSecret `json:"privateKey"` // PKCS #8 DER
}

// The document of the instance's import token.
const (
	importTokenKind = "import-token"
	importTokenName = "current"
)

func (r *importTokenRecord) token() *ImportToken {
	return &ImportToken{
		CreationDate: r.Created, ExpirationDate: r.Expires, MaxRetrievals: r.MaxRetrievals,
		RemainingRetrievals: r.Remaining, CreatedBy: r.CreatedBy,
	}
}

// checkImportTokenOptions applies the defaults and the ranges.
func checkImportTokenOptions(o ImportTokenOptions) (ImportTokenOptions, error) {
	if o.Expiration == 0 {
		o.Expiration = DefaultImportTokenExpiration
	}
	if o.MaxRetrievals == 0 {
		o.MaxRetrievals = DefaultImportTokenRetrievals
	}
	if o.Expiration < MinImportTokenExpiration || o.Expiration > MaxImportTokenExpiration || o.Expiration%time.Second != 0 {
		return o, fmt.Errorf("%w: expiration %v: the import token expiration must be a whole number of seconds from %d to %d",
			ErrInvalidArgument, o.Expiration, int(MinImportTokenExpiration.Seconds()), int(MaxImportTokenExpiration.Seconds()))
	}
	if o.MaxRetrievals < 1 || o.MaxRetrievals > MaxImportTokenRetrievals {
		return o, fmt.Errorf("%w: maxAllowedRetrievals %d: an import token allows 1 to %d retrievals",
			ErrInvalidArgument, o.MaxRetrievals, MaxImportTokenRetrievals)
	}
	return o, nil
}

// CreateImportToken creates the instance's import token, replacing any it had: a new RSA-4096
// key pair and nonce, retrievable opts.MaxRetrievals times until opts.Expiration has passed.
func (s *Service) CreateImportToken(ctx context.Context, opts ImportTokenOptions) (*ImportToken, error) {
	opts, err := checkImportTokenOptions(opts)
	if err != nil {
		return nil, s.refuse(ctx, ActionImportTokenCreate, "", err)
	}
	// The policy is checked before the key pair is made (seconds of CPU), and again in the
	// transaction that stores the token.
	if err := s.view(ctx, checkImportTokenAccess); err != nil {
		return nil, s.refuse(ctx, ActionImportTokenCreate, "", err)
	}
	priv, err := s.importTokenKeyPair()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("crk: encoding the import token's private key: %w", err)
	}
	defer clear(der)
	pub, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("crk: encoding the import token's public key: %w", err)
	}
	nonce := make([]byte, ImportTokenNonceSize)
	if _, err := io.ReadFull(s.rand, nonce); err != nil {
		return nil, fmt.Errorf("crk: reading the import token's random nonce: %w", err)
	}
	now := s.clock.Now()
	r := &importTokenRecord{
		Created: now, Expires: now.Add(opts.Expiration), MaxRetrievals: opts.MaxRetrievals,
		Remaining: opts.MaxRetrievals, CreatedBy: s.who(ctx), PublicKey: pub, Nonce: nonce,
	}
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	if r.PrivateKey, err = s.sealDocSecret(importTokenKind, importTokenName, der); err != nil {
		return nil, err
	}
	data, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("crk: encoding the import token: %w", err)
	}
	err = s.update(ctx, func(tx storeTx) error {
		// sameMasterKey reads the instance row, locked: import token changes of all
		// processes are serialised.
		if err := s.sameMasterKey(tx); err != nil {
			return err
		}
		if err := checkImportTokenAccess(tx); err != nil {
			return err
		}
		if err := tx.putDoc(importTokenKind, importTokenName, data); err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionImportTokenCreate, nil, "", nil)
		ev.Reason = fmt.Sprintf("expirationDate %s, maxAllowedRetrievals %d", r.Expires.Format(time.RFC3339), r.MaxRetrievals)
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionImportTokenCreate, "", err)
	}
	s.log.Info("crk: import token created", "expires", r.Expires, "maxRetrievals", r.MaxRetrievals)
	return r.token(), nil
}

// importTokenKeyPair makes the RSA key pair of a new token: Options.ImportTokenKey's, or a
// new one. A key of another size than ImportTokenKeyBits is never used.
func (s *Service) importTokenKeyPair() (*rsa.PrivateKey, error) {
	var (
		priv *rsa.PrivateKey
		err  error
	)
	if s.importTokenKey != nil {
		priv, err = s.importTokenKey()
	} else {
		priv, err = rsa.GenerateKey(s.rand, ImportTokenKeyBits)
	}
	if err != nil {
		return nil, fmt.Errorf("crk: making the import token's key pair: %w", err)
	}
	if priv == nil || priv.N == nil || priv.N.BitLen() != ImportTokenKeyBits {
		return nil, fmt.Errorf("crk: the import token's key pair is not a %d-bit RSA key", ImportTokenKeyBits)
	}
	return priv, nil
}

// loadImportToken reads the instance's token; none is ErrImportTokenNotFound.
func loadImportToken(tx storeTx) (*importTokenRecord, error) {
	data, err := tx.doc(importTokenKind, importTokenName)
	if errors.Is(err, errNoDoc) {
		return nil, fmt.Errorf("%w: create one first", ErrImportTokenNotFound)
	}
	if err != nil {
		return nil, err
	}
	var r importTokenRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("crk: store: decoding the import token: %w", err)
	}
	return &r, nil
}

// usable refuses a token that has expired at now.
func (r *importTokenRecord) usable(now time.Time) error {
	if !now.Before(r.Expires) {
		return fmt.Errorf("%w: it expired on %s; create a new one", ErrImportTokenExpired, r.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// GetImportToken retrieves the instance's import token: its public key and nonce. Each call
// counts one retrieval; it is refused once the token has expired (ErrImportTokenExpired) or
// has no retrieval left (ErrImportTokenUsedUp), and when there is none
// (ErrImportTokenNotFound).
func (s *Service) GetImportToken(ctx context.Context) (*ImportTokenKey, error) {
	var r *importTokenRecord
	err := s.update(ctx, func(tx storeTx) error {
		r = nil
		// The instance row first, locked: concurrent retrievals (of any process) are
		// counted one after the other.
		if _, _, err := tx.meta(); err != nil {
			return err
		}
		if err := checkImportTokenAccess(tx); err != nil {
			return err
		}
		t, err := loadImportToken(tx)
		if err != nil {
			return err
		}
		if err := t.usable(s.clock.Now()); err != nil {
			return err
		}
		if t.Remaining <= 0 {
			return fmt.Errorf("%w: all %d retrievals were made; create a new one", ErrImportTokenUsedUp, t.MaxRetrievals)
		}
		t.Remaining--
		data, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("crk: encoding the import token: %w", err)
		}
		if err := tx.putDoc(importTokenKind, importTokenName, data); err != nil {
			return err
		}
		ev := s.newEvent(ctx, ActionImportTokenRead, nil, "", nil)
		ev.Reason = fmt.Sprintf("remainingRetrievals %d of %d", t.Remaining, t.MaxRetrievals)
		r = t
		return s.appendEvent(tx, ev)
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionImportTokenRead, "", err)
	}
	return &ImportTokenKey{
		ImportToken: *r.token(),
		PublicKey:   pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: r.PublicKey}),
		Nonce:       r.Nonce,
	}, nil
}

// ImportTokenStatus returns the metadata of the instance's import token, expired or not,
// without counting a retrieval; ErrImportTokenNotFound when there is none.
func (s *Service) ImportTokenStatus(ctx context.Context) (*ImportToken, error) {
	var r *importTokenRecord
	err := s.view(ctx, func(tx storeTx) error {
		var err error
		r, err = loadImportToken(tx)
		return err
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionImportTokenStatus, "", err)
	}
	if err := s.record(s.newEvent(ctx, ActionImportTokenStatus, nil, "", nil)); err != nil {
		return nil, err
	}
	return r.token(), nil
}

// oaepHash returns the hash of an encryption algorithm.
func oaepHash(algorithm string) (crypto.Hash, error) {
	switch algorithm {
	case "", AlgorithmRSAOAEPSHA256:
		return crypto.SHA256, nil
	case AlgorithmRSAOAEPSHA1:
		return crypto.SHA1, nil
	}
	return 0, fmt.Errorf("%w: %q; use %s or %s", ErrEncryptionAlgorithm, shorten(algorithm), AlgorithmRSAOAEPSHA256, AlgorithmRSAOAEPSHA1)
}

// checkEncrypted checks the fields of encrypted material, before any token is read.
func checkEncrypted(em *EncryptedMaterial) (crypto.Hash, error) {
	h, err := oaepHash(em.Algorithm)
	if err != nil {
		return 0, err
	}
	switch {
	case len(em.Payload) == 0:
		return 0, fmt.Errorf("%w: the payload (the key material encrypted with the import token's public key) is required", ErrInvalidArgument)
	case len(em.EncryptedNonce) == 0:
		return 0, fmt.Errorf("%w: encryptedNonce is required to import with an import token", ErrInvalidArgument)
	case len(em.IV) == 0:
		return 0, fmt.Errorf("%w: iv is required to import with an import token", ErrInvalidArgument)
	case len(em.IV) != ImportTokenNonceSize:
		return 0, fmt.Errorf("%w: iv is %d bytes, want %d (the AES-GCM IV that encrypted the nonce)", ErrInvalidArgument, len(em.IV), ImportTokenNonceSize)
	}
	return h, nil
}

// openEncrypted returns the root key material em carries: decrypted with the private key of
// the instance's import token, checked as root key material, and checked to have encrypted
// the token's nonce. The caller clears it after use.
func (s *Service) openEncrypted(ctx context.Context, em *EncryptedMaterial) ([]byte, error) {
	h, err := checkEncrypted(em)
	if err != nil {
		return nil, err
	}
	s.mkMu.RLock()
	defer s.mkMu.RUnlock()
	var t *importTokenRecord
	err = s.view(ctx, func(tx storeTx) error {
		var err error
		t, err = loadImportToken(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := t.usable(s.clock.Now()); err != nil {
		return nil, err
	}
	der, err := s.openDocSecret(importTokenKind, importTokenName, t.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("crk: opening the import token's private key: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	clear(der)
	if err != nil {
		return nil, fmt.Errorf("crk: store: decoding the import token's private key: %w", err)
	}
	priv, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("crk: store: the import token's private key is a %T, not an RSA key", key)
	}
	material, err := rsa.DecryptOAEP(h.New(), nil, priv, em.Payload, nil)
	if err != nil {
		alg := em.Algorithm
		if alg == "" {
			alg = AlgorithmRSAOAEPSHA256
		}
		return nil, fmt.Errorf("%w: the payload does not decrypt with the private key of the instance's import token by %s; encrypt the material with the public key of the current import token, by the algorithm named", ErrInvalidMaterial, alg)
	}
	if err := checkRootMaterial(material); err != nil {
		clear(material)
		return nil, err
	}
	if err := checkNonce(material, em, t.Nonce); err != nil {
		clear(material)
		return nil, err
	}
	return material, nil
}

// checkNonce checks that em's encrypted nonce is the token's nonce under AES-GCM with the
// material as key.
func checkNonce(material []byte, em *EncryptedMaterial, want []byte) error {
	block, err := aes.NewCipher(material)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidMaterial, err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return fmt.Errorf("crk: %w", err)
	}
	nonce, err := gcm.Open(nil, em.IV, em.EncryptedNonce, nil)
	if err != nil {
		return fmt.Errorf("%w: the encrypted nonce does not open with AES-GCM under the imported key material and the given iv", ErrNonceIV)
	}
	if subtle.ConstantTimeCompare(nonce, want) != 1 {
		return fmt.Errorf("%w: the encrypted nonce is not the nonce of the instance's import token; retrieve the token and encrypt its nonce", ErrIncorrectNonce)
	}
	return nil
}

// checkEncryptedCreate checks a key creation through the import token, before the token is
// read: encrypted material imports a root key, and replaces Material.
func checkEncryptedCreate(o CreateOptions) error {
	if o.Material != nil {
		return fmt.Errorf("%w: give the key material either in the clear (Material) or encrypted with the import token (Encrypted), not both", ErrInvalidArgument)
	}
	if o.Type != RootKey {
		return fmt.Errorf("%w: an import token imports root keys only; import a standard key's payload as it is", ErrInvalidArgument)
	}
	_, err := checkEncrypted(o.Encrypted)
	return err
}

// RotateKeyEncrypted rotates an imported root key to new material sent through the
// instance's import token (see [EncryptedMaterial]); otherwise as RotateKey with material.
func (s *Service) RotateKeyEncrypted(ctx context.Context, id string, em *EncryptedMaterial) (*Key, error) {
	if em == nil {
		return nil, s.refuse(ctx, ActionRotate, id, fmt.Errorf("%w: no encrypted material", ErrInvalidArgument))
	}
	material, err := s.openEncrypted(ctx, em)
	if err != nil {
		return nil, s.refuse(ctx, ActionRotate, id, err)
	}
	defer clear(material)
	return s.rotateKey(ctx, id, material, true)
}
