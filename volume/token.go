package volume

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"crkvol/keyslot"
)

// TokenType is the LUKS2 token type holding a volume's wrapped passphrase.
const TokenType = "crkvol-crk"

// token is the crkvol-crk LUKS2 token. Everything in it is public: the passphrase is only
// there wrapped by the root key.
//
// The fields are the members crkvol owns. A token read from an image also keeps its whole
// JSON object, member by member in document order: marshal writes the owned members from the
// fields and every other member (added by another version of crkvol, or by a person with
// `cryptsetup token import`) exactly as read, so no rewrap drops or reorders them.
type token struct {
	Keyslots   []string
	KeyID      string
	KeyCRN     string
	KeyVersion string
	Ciphertext string
	WrappedAt  time.Time
	VolumeCRN  string

	members []tokenMember // as read; nil for a new token
}

// tokenMember is one name/value pair of a token's JSON object.
type tokenMember struct {
	name  string
	value json.RawMessage
}

// ownedTokenMembers lists the members crkvol owns, in the order a new token has them.
func ownedTokenMembers() []string {
	return []string{"type", "keyslots", "key_id", "key_crn", "key_version", "ciphertext", "wrapped_at", "volume_crn"}
}

// value returns the JSON encoding of owned member name, or ok false if crkvol does not own it.
func (t *token) value(name string) (v []byte, ok bool, err error) {
	var x any
	switch name {
	case "type":
		x = TokenType
	case "keyslots":
		x = t.Keyslots
		if t.Keyslots == nil {
			x = []string{}
		}
	case "key_id":
		x = t.KeyID
	case "key_crn":
		x = t.KeyCRN
	case "key_version":
		x = t.KeyVersion
	case "ciphertext":
		x = t.Ciphertext
	case "wrapped_at":
		x = t.WrappedAt
	case "volume_crn":
		x = t.VolumeCRN
	default:
		return nil, false, nil
	}
	v, err = json.Marshal(x)
	if err != nil {
		return nil, true, fmt.Errorf("volume: encoding token member %s: %w", name, err)
	}
	return v, true, nil
}

// marshal encodes the token: the members of the token as read, in their order, with the owned
// ones replaced by the fields' values and the others unchanged; then any owned member the
// token did not have.
func (t *token) marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	write := func(name string, v []byte) {
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		n, _ := json.Marshal(name) // a string always encodes
		b.Write(n)
		b.WriteByte(':')
		b.Write(v)
	}
	seen := make(map[string]bool, len(t.members))
	for _, m := range t.members {
		seen[m.name] = true
		v, owned, err := t.value(m.name)
		if err != nil {
			return nil, err
		}
		if !owned {
			v = m.value
		}
		write(m.name, v)
	}
	for _, name := range ownedTokenMembers() {
		if seen[name] {
			continue
		}
		v, _, err := t.value(name)
		if err != nil {
			return nil, err
		}
		write(name, v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// parseToken decodes and checks the crkvol-crk token of the volume with LUKS2 UUID uuid:
// its type, the members crkvol needs, that its keyslot ids are LUKS2 ids (decimal strings 0
// to 31, at most one) and that volume_crn, if present, is this volume's CRN. Each error matches
// ErrBadToken and names the member at fault. Whether the named keyslot exists is for the
// caller, which has the image, to check.
func parseToken(raw []byte, uuid string) (*token, error) {
	members, err := splitObject(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	t := &token{members: members}
	var typ string
	found := map[string]bool{}
	for _, m := range members {
		var dst any
		switch m.name {
		case "type":
			dst = &typ
		case "keyslots":
			dst = &t.Keyslots
		case "key_id":
			dst = &t.KeyID
		case "key_crn":
			dst = &t.KeyCRN
		case "key_version":
			dst = &t.KeyVersion
		case "ciphertext":
			dst = &t.Ciphertext
		case "wrapped_at":
			dst = &t.WrappedAt
		case "volume_crn":
			dst = &t.VolumeCRN
		default:
			continue
		}
		if err := json.Unmarshal(m.value, dst); err != nil {
			return nil, fmt.Errorf("%w: member %s: %w", ErrBadToken, m.name, err)
		}
		found[m.name] = true
	}
	if typ != TokenType {
		return nil, fmt.Errorf("%w: type %.64q, want %q", ErrBadToken, typ, TokenType)
	}
	switch {
	case t.KeyID == "" || t.Ciphertext == "" || t.KeyVersion == "":
		return nil, fmt.Errorf("%w: missing key_id, key_version or ciphertext", ErrBadToken)
	case len(t.Keyslots) > 1:
		return nil, fmt.Errorf("%w: names %d keyslots, want 1", ErrBadToken, len(t.Keyslots))
	}
	for _, s := range t.Keyslots {
		if _, err := parseKeyslotID(s); err != nil {
			return nil, err
		}
	}
	// Tokens without volume_crn are accepted, as they always were (crkvol has written it from
	// the start, but another tool may not): the image's UUID says what it is, and the next
	// rewrap writes it.
	if want := CRN(uuid); !found["volume_crn"] {
		t.VolumeCRN = want
	} else if t.VolumeCRN != want {
		return nil, fmt.Errorf("%w: volume_crn %.200q is not this volume's CRN %s (token copied from another volume?)", ErrBadToken, t.VolumeCRN, want)
	}
	if _, err := t.ciphertext(); err != nil {
		return nil, err
	}
	return t, nil
}

// parseKeyslotID parses a LUKS2 keyslot id: a decimal string from 0 to 31, without sign or
// leading zeros.
func parseKeyslotID(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= keyslot.MaxKeyslots || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("%w: keyslots: %.16q is not a LUKS2 keyslot id (a decimal string 0 to %d)", ErrBadToken, s, keyslot.MaxKeyslots-1)
	}
	return n, nil
}

// slot returns the keyslot the token names, or ok false if it names none (the volume was
// crypto-erased). The token must have been checked by parseToken.
func (t *token) slot() (n int, ok bool) {
	if len(t.Keyslots) == 0 {
		return 0, false
	}
	n, err := parseKeyslotID(t.Keyslots[0])
	return n, err == nil
}

func (t *token) ciphertext() ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(t.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext is not base64", ErrBadToken)
	}
	return b, nil
}

// splitObject decodes raw as one JSON object and returns its members in document order, each
// value exactly as it appears in raw. Duplicate member names are refused.
func splitObject(raw []byte) ([]tokenMember, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object")
	}
	var out []tokenMember
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("decoding the token: %w", err)
		}
		name, _ := tok.(string) // an object key is always a string
		if seen[name] {
			return nil, fmt.Errorf("duplicate member %.64q", name)
		}
		seen[name] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("member %.64q: %w", name, err)
		}
		out = append(out, tokenMember{name: name, value: v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("decoding the token: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the token object")
	}
	return out, nil
}
