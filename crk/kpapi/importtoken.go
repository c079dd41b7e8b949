package kpapi

import (
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"time"

	"crkvol/crk"
)

// ImportTokenPath is the import token's resource: POST creates (or replaces) the instance's
// token, GET retrieves it.
const ImportTokenPath = "/api/v2/import_token"

// ImportToken is an import token as the API shows it: its metadata, and when retrieved, its
// public key and nonce. Times are RFC 3339.
type ImportToken struct {
	// CreationDate is when the token was created.
	CreationDate string `json:"creationDate"`
	// ExpirationDate is when the token stops being usable.
	ExpirationDate string `json:"expirationDate"`
	// MaxAllowedRetrievals is how many times the token may be retrieved.
	MaxAllowedRetrievals int `json:"maxAllowedRetrievals"`
	// RemainingRetrievals is how many retrievals the token has left.
	RemainingRetrievals int `json:"remainingRetrievals"`
	// Payload is the base64 encoding of the token's public key in PEM ("PUBLIC KEY", PKIX),
	// as keyprotect-go-client's EncryptKey decodes it; retrieval only.
	Payload string `json:"payload,omitempty"`
	// Nonce is the base64 encoding of the token's nonce; retrieval only.
	Nonce string `json:"nonce,omitempty"`
}

func fromImportToken(t *crk.ImportToken) ImportToken {
	return ImportToken{
		CreationDate: RFC3339(t.CreationDate), ExpirationDate: RFC3339(t.ExpirationDate),
		MaxAllowedRetrievals: t.MaxRetrievals, RemainingRetrievals: t.RemainingRetrievals,
	}
}

// importTokenBody is the body of POST /api/v2/import_token. A member left out (or 0, which
// keyprotect-go-client never sends) takes the default: 600 seconds, 1 retrieval.
type importTokenBody struct {
	Expiration           *int64 `json:"expiration"`
	MaxAllowedRetrievals *int64 `json:"maxAllowedRetrievals"`
}

// createImportToken answers POST /api/v2/import_token: 201 with the new token's metadata.
func (s *Server) createImportToken(q *request) error {
	var body importTokenBody
	if err := decode(q.r, &body); err != nil {
		return err
	}
	var opts crk.ImportTokenOptions
	if e := body.Expiration; e != nil {
		// Seconds beyond what a Duration holds are refused here; any other value is the
		// service's to check.
		if *e > math.MaxInt64/int64(time.Second) || *e < math.MinInt64/int64(time.Second) {
			return badRequest("INVALID_FIELD_ERR", fmt.Sprintf("expiration %d: the import token expiration must be from %d to %d seconds",
				*e, int(crk.MinImportTokenExpiration.Seconds()), int(crk.MaxImportTokenExpiration.Seconds())), "expiration")
		}
		opts.Expiration = time.Duration(*e) * time.Second
	}
	if m := body.MaxAllowedRetrievals; m != nil {
		opts.MaxRetrievals = int(*m)
	}
	t, err := q.svc.CreateImportToken(q.ctx, opts)
	if err != nil {
		return err
	}
	writeJSON(q.w, http.StatusCreated, fromImportToken(t))
	return nil
}

// getImportToken answers GET /api/v2/import_token: 200 with the token's metadata (its
// remaining retrievals counting this one), public key and nonce.
func (s *Server) getImportToken(q *request) error {
	k, err := q.svc.GetImportToken(q.ctx)
	if err != nil {
		return err
	}
	res := fromImportToken(&k.ImportToken)
	res.Payload = base64.StdEncoding.EncodeToString(k.PublicKey)
	res.Nonce = base64.StdEncoding.EncodeToString(k.Nonce)
	writeJSON(q.w, http.StatusOK, res)
	return nil
}

// importFields are the members of a key creation resource or a rotate action that send
// material through the import token, beside its encrypted payload.
type importFields struct {
	EncryptedNonce      *string `json:"encryptedNonce"`
	IV                  *string `json:"iv"`
	EncryptionAlgorithm *string `json:"encryptionAlgorithm"`
}

// material returns the encrypted material of a request that gives any of the import fields,
// and nil for a plain one (payload in the clear, or none). The iv is base64, as Key Protect
// takes it, except an iv of exactly 12 characters: keyprotect-go-client's EncryptNonce,
// given an iv, seals with the iv's own bytes as the 12-byte GCM nonce and returns it
// unencoded, and base64 of 12 bytes is 16 characters, so the two never meet.
func (f importFields) material(payload *string) (*crk.EncryptedMaterial, error) {
	given := func(p *string) bool { return p != nil && *p != "" }
	if !given(f.EncryptedNonce) && !given(f.IV) && !given(f.EncryptionAlgorithm) {
		return nil, nil
	}
	em := &crk.EncryptedMaterial{}
	var err error
	if payload != nil {
		if em.Payload, err = b64("payload", *payload); err != nil {
			return nil, err
		}
	}
	if f.EncryptedNonce != nil {
		if em.EncryptedNonce, err = b64("encryptedNonce", *f.EncryptedNonce); err != nil {
			return nil, err
		}
	}
	if iv := f.IV; iv != nil {
		if len(*iv) == crk.ImportTokenNonceSize {
			em.IV = []byte(*iv)
		} else if em.IV, err = b64("iv", *iv); err != nil {
			return nil, err
		}
	}
	if f.EncryptionAlgorithm != nil {
		em.Algorithm = *f.EncryptionAlgorithm
	}
	return em, nil
}
