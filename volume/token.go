package volume

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// TokenType is the LUKS2 token type holding a volume's wrapped passphrase.
const TokenType = "crkvol-crk"

// token is the crkvol-crk LUKS2 token. Everything in it is public: the passphrase is only
// there wrapped by the root key.
type token struct {
	Type       string    `json:"type"`
	Keyslots   []string  `json:"keyslots"`
	KeyID      string    `json:"key_id"`
	KeyCRN     string    `json:"key_crn"`
	KeyVersion string    `json:"key_version"`
	Ciphertext string    `json:"ciphertext"`
	WrappedAt  time.Time `json:"wrapped_at"`
	VolumeCRN  string    `json:"volume_crn"`
}

func (t *token) marshal() ([]byte, error) { return json.Marshal(t) }

func parseToken(raw []byte) (*token, error) {
	var t token
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	switch {
	case t.Type != TokenType:
		return nil, fmt.Errorf("%w: type %q", ErrBadToken, t.Type)
	case t.KeyID == "" || t.Ciphertext == "" || t.KeyVersion == "":
		return nil, fmt.Errorf("%w: missing key_id, key_version or ciphertext", ErrBadToken)
	case len(t.Keyslots) > 1:
		return nil, fmt.Errorf("%w: names %d keyslots, want 1", ErrBadToken, len(t.Keyslots))
	}
	if _, err := t.ciphertext(); err != nil {
		return nil, err
	}
	return &t, nil
}

func (t *token) ciphertext() ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(t.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext is not base64", ErrBadToken)
	}
	return b, nil
}
