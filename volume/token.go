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
// The exported fields are the members crkvol owns ([tokenFields] lists them). A token read
// from an image also keeps its whole JSON object, member by member in document order: marshal
// writes the owned members from the fields and every other member (added by another version
// of crkvol, or by a person with `cryptsetup token import`) exactly as read, so no rewrap drops
// or reorders them.
type token struct {
	Keyslots   []string
	KeyID      string
	KeyCRN     string
	KeyVersion string
	Ciphertext string
	// WrappedAt is when the ciphertext was made. Opening does not need it, so a wrapped_at
	// that is not an RFC 3339 time (a hand edit, another tool) is tolerated: WrappedAt is
	// then zero, and the member is written back as read until the next rewrap sets it.
	WrappedAt time.Time
	VolumeCRN string
	// Wipe is the record of an incomplete wipe of the data area, or nil: the member is
	// written while a wipe runs and removed when it completes (see [Manager.Wipe]).
	Wipe *WipeProgress
	// DataSize is the size in bytes of the data area when the volume was enrolled, or 0 for
	// tokens written before crkvol recorded it: [Manager.Check] reports a file that no longer
	// holds it (truncated at a sector boundary, which the layout alone cannot show).
	DataSize int64

	typ          string          // the type member as read; marshal always writes TokenType
	wrappedAtRaw json.RawMessage // wrapped_at as read, when it is not an RFC 3339 time
	members      []tokenMember   // as read; nil for a new token
}

// tokenMember is one name/value pair of a token's JSON object.
type tokenMember struct {
	name  string
	value json.RawMessage
}

// tokenField is a member crkvol owns: its name, and the token field holding it, as a pointer
// that encoding/json decodes into and encodes from.
type tokenField struct {
	name  string
	field func(t *token) any
	// absent, if set, reports that t has no value for this member: marshal then leaves the
	// member out (and drops it if the token as read had it). Members without it are always
	// written.
	absent func(t *token) bool
}

// tokenFields returns the one list of the members crkvol owns, in the order a new token has
// them. Reading (parseToken) and writing (marshal) both go through it, so a member is added in
// one place. The list is made once (it holds no state) and must not be changed.
func tokenFields() []tokenField { return ownedTokenFields }

// ownedTokenFields is the list tokenFields returns.
var ownedTokenFields = func() []tokenField {
	return []tokenField{
		{"type", func(t *token) any { return &t.typ }, nil},
		{"keyslots", func(t *token) any { return &t.Keyslots }, nil},
		{"key_id", func(t *token) any { return &t.KeyID }, nil},
		{"key_crn", func(t *token) any { return &t.KeyCRN }, nil},
		{"key_version", func(t *token) any { return &t.KeyVersion }, nil},
		{"ciphertext", func(t *token) any { return &t.Ciphertext }, nil},
		{"wrapped_at", func(t *token) any { return (*tokenTime)(t) }, nil},
		{"volume_crn", func(t *token) any { return &t.VolumeCRN }, nil},
		{"wipe", func(t *token) any { return &t.Wipe }, func(t *token) bool { return t.Wipe == nil }},
		{"data_size", func(t *token) any { return &t.DataSize }, func(t *token) bool { return t.DataSize == 0 }},
	}
}()

// tokenFieldIndex returns the index in tokenFields of the owned member called name, or ok
// false if crkvol does not own it.
func tokenFieldIndex(name string) (i int, ok bool) {
	for i, f := range tokenFields() {
		if f.name == name {
			return i, true
		}
	}
	return 0, false
}

// ownedTokenMembers lists the names of the members crkvol owns that every token has, in the
// order a new token has them (the optional ones, such as wipe, follow when present).
func ownedTokenMembers() []string {
	var names []string
	for _, f := range tokenFields() {
		if f.absent == nil {
			names = append(names, f.name)
		}
	}
	return names
}

// tokenTime is the wrapped_at member of a token: its WrappedAt, or the member as read when
// that was not an RFC 3339 time (see [token.WrappedAt]).
type tokenTime token

// MarshalJSON writes WrappedAt, or the member as read while WrappedAt is zero.
func (t *tokenTime) MarshalJSON() ([]byte, error) {
	if t.WrappedAt.IsZero() && t.wrappedAtRaw != nil {
		return t.wrappedAtRaw, nil
	}
	return json.Marshal(t.WrappedAt)
}

// UnmarshalJSON reads an RFC 3339 time into WrappedAt, and keeps anything else as read with
// WrappedAt zero: it never fails.
func (t *tokenTime) UnmarshalJSON(b []byte) error {
	var at time.Time
	// b is a valid JSON value (the Decoder checked it): json.Unmarshal would only call this.
	if err := at.UnmarshalJSON(b); err != nil || at.IsZero() {
		t.WrappedAt, t.wrappedAtRaw = time.Time{}, bytes.Clone(b)
		return nil
	}
	t.WrappedAt, t.wrappedAtRaw = at, nil
	return nil
}

// appendMember appends the JSON encoding of owned member f of t to b: what json.Marshal
// gives, written directly for the common cases (strings of plain ASCII, a time, a number)
// and by json.Marshal otherwise.
func appendMember(b []byte, t *token, f tokenField) ([]byte, error) {
	switch v := f.field(t).(type) {
	case *string:
		if out, ok := appendPlainString(b, *v); ok {
			return out, nil
		}
	case *[]string:
		if out, ok := appendPlainStrings(b, *v); ok {
			return out, nil
		}
	case *int64:
		return strconv.AppendInt(b, *v, 10), nil
	case *tokenTime:
		if !v.WrappedAt.IsZero() || v.wrappedAtRaw == nil {
			// json.Marshal of a time.Time is its MarshalJSON: quoted RFC 3339, nothing to
			// escape.
			if out, err := v.WrappedAt.AppendText(append(b, '"')); err == nil {
				return append(out, '"'), nil
			}
		}
	}
	v, err := json.Marshal(f.field(t))
	if err != nil {
		return nil, fmt.Errorf("volume: encoding token member %s: %w", f.name, err)
	}
	return append(b, v...), nil
}

// plainJSONByte reports whether c stands for itself inside a JSON string as json.Marshal
// writes it: printable ASCII but the quote, the backslash and the characters it escapes for
// HTML (<, >, &).
func plainJSONByte(c byte) bool {
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
}

// appendPlainString appends s quoted, as json.Marshal writes it, when no byte of s needs an
// escape; ok is false (and b unchanged) otherwise.
func appendPlainString(b []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if !plainJSONByte(s[i]) {
			return b, false
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

// appendPlainStrings appends ss as a JSON array, as json.Marshal writes it ("null" for nil),
// when no string needs an escape; ok is false (and b unchanged) otherwise.
func appendPlainStrings(b []byte, ss []string) ([]byte, bool) {
	if ss == nil {
		return append(b, "null"...), true
	}
	n := len(b)
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = appendPlainString(b, s); !ok {
			return b[:n], false
		}
	}
	return append(b, ']'), true
}

// marshal encodes the token: the members of the token as read, in their order, with the owned
// ones replaced by the fields' values and the others unchanged; then any owned member the
// token did not have.
func (t *token) marshal() ([]byte, error) {
	out := *t // what is written: the type is always crkvol's, keyslots always an array
	out.typ = TokenType
	if out.Keyslots == nil {
		out.Keyslots = []string{}
	}
	size := 2
	for _, m := range t.members {
		size += len(m.name) + len(m.value) + 4
	}
	b := make([]byte, 1, size+len(t.Ciphertext)+len(t.KeyVersion)+256)
	b[0] = '{'
	name := func(n string) {
		if len(b) > 1 {
			b = append(b, ',')
		}
		if out, ok := appendPlainString(b, n); ok {
			b = out
		} else {
			q, _ := json.Marshal(n) // a string always encodes
			b = append(b, q...)
		}
		b = append(b, ':')
	}
	var seen uint64 // bit i: owned member tokenFields()[i] was in the token as read
	for _, m := range t.members {
		i, owned := tokenFieldIndex(m.name)
		if !owned {
			name(m.name)
			b = append(b, m.value...)
			continue
		}
		f := tokenFields()[i]
		seen |= 1 << i
		if f.absent != nil && f.absent(&out) {
			continue
		}
		name(m.name)
		var err error
		if b, err = appendMember(b, &out, f); err != nil {
			return nil, err
		}
	}
	for i, f := range tokenFields() {
		if seen&(1<<i) != 0 || (f.absent != nil && f.absent(&out)) {
			continue
		}
		name(f.name)
		var err error
		if b, err = appendMember(b, &out, f); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// marshalChecked is marshal for a token about to be written to the image of the volume with
// LUKS2 UUID uuid: the encoding must read back (parseToken) as a token of that volume with
// the same key, version and ciphertext. The token may hold the only wrapped copy of the
// passphrase, so nothing crkvol could not read again is ever written.
func (t *token) marshalChecked(uuid string) ([]byte, error) {
	raw, err := t.marshal()
	if err != nil {
		return nil, err
	}
	back, err := parseToken(raw, uuid)
	if err != nil {
		return nil, fmt.Errorf("volume: refusing to write a token that does not read back: %w", err)
	}
	if back.KeyID != t.KeyID || back.KeyVersion != t.KeyVersion || back.Ciphertext != t.Ciphertext {
		return nil, fmt.Errorf("volume: refusing to write a token that does not read back: %w: key, version or ciphertext changed in encoding", ErrBadToken)
	}
	return raw, nil
}

// parseToken decodes and checks the crkvol-crk token of the volume with LUKS2 UUID uuid:
// its type, the members crkvol needs, that its keyslot ids are LUKS2 ids (decimal strings 0
// to 31, at most one) and that volume_crn, if present, is this volume's CRN. Each error matches
// ErrBadToken and names the member at fault. Whether the named keyslot exists is for the
// caller, which has the image, to check. A wrapped_at that is not an RFC 3339 time is not an
// error (opening does not need it): it is kept as read, with WrappedAt zero.
func parseToken(raw []byte, uuid string) (*token, error) {
	members, err := splitObject(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	t := &token{members: members}
	foundCRN := false
	for _, m := range members {
		i, owned := tokenFieldIndex(m.name)
		if !owned {
			continue
		}
		f := tokenFields()[i]
		if err := decodeMember(m.value, f.field(t)); err != nil {
			return nil, fmt.Errorf("%w: member %s: %w", ErrBadToken, m.name, err)
		}
		foundCRN = foundCRN || m.name == "volume_crn"
	}
	if t.typ != TokenType {
		return nil, fmt.Errorf("%w: type %.64q, want %q", ErrBadToken, t.typ, TokenType)
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
	if want := CRN(uuid); !foundCRN {
		t.VolumeCRN = want
	} else if t.VolumeCRN != want {
		return nil, &otherVolumeError{got: t.VolumeCRN, want: want}
	}
	if _, err := t.ciphertext(); err != nil {
		return nil, err
	}
	if t.Wipe != nil {
		if err := t.Wipe.check(); err != nil {
			return nil, fmt.Errorf("%w: member wipe: %w", ErrBadToken, err)
		}
	}
	return t, nil
}

// otherVolumeError is the ErrBadToken of a token whose volume_crn names another volume than
// the image's UUID: copied from another volume, or the pending token of an interrupted
// [Manager.Reidentify].
type otherVolumeError struct{ got, want string }

func (e *otherVolumeError) Error() string {
	return fmt.Sprintf("%v: volume_crn %.200q is not this volume's CRN %s (token copied from another volume?)", ErrBadToken, e.got, e.want)
}

func (e *otherVolumeError) Unwrap() error { return ErrBadToken }

// parseKeyslotID parses a LUKS2 keyslot id: a decimal string from 0 to 31, without sign or
// leading zeros.
func parseKeyslotID(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= keyslot.MaxKeyslots || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("%w: keyslots: %.16q is not a LUKS2 keyslot id (a decimal string 0 to %d)", ErrBadToken, s, keyslot.MaxKeyslots-1)
	}
	return n, nil
}

// slot returns the keyslot the token names, or ok false if it names none: the volume was
// crypto-erased if the image has no keyslot left, and the token is bad otherwise. The token
// must have been checked by parseToken.
func (t *token) slot() (n int, ok bool) {
	if len(t.Keyslots) == 0 {
		return 0, false
	}
	n, err := parseKeyslotID(t.Keyslots[0])
	return n, err == nil
}

// ciphertext returns the binary ciphertext ([KeyService] takes) the token holds.
//
// The ciphertext member is the Key Protect ciphertext string: standard base64 of the binary
// ciphertext, the form of the key service API. crkvol writes only that form. Earlier
// versions wrote it in local mode too, but in --kms-url mode wrote base64 of that string;
// such a member is recognised (it decodes to base64 text) and read as the same ciphertext,
// and the next rewrap writes the member in the one form. A binary ciphertext is never taken
// for that old form by mistake in practice: that needs every one of its bytes (a random nonce
// and an authentication tag among them) to be a base64 character, with a valid padding.
func (t *token) ciphertext() ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(t.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext is not base64", ErrBadToken)
	}
	if inner, ok := base64Text(b); ok {
		clear(b)
		return inner, nil // the old --kms-url form: base64 of the Key Protect string
	}
	return b, nil
}

// ciphertextMember returns the ciphertext member for binary ciphertext ct: the Key Protect
// ciphertext string. A ciphertext that would read back as another ([token.ciphertext] would
// take it for the old --kms-url form) is refused with ErrBadToken: such a token could not be
// opened.
func ciphertextMember(ct []byte) (string, error) {
	if _, ok := base64Text(ct); ok {
		return "", fmt.Errorf("%w: refusing to write a token that does not read back: the key service's ciphertext is base64 text (an encoded ciphertext where a binary one is expected)", ErrBadToken)
	}
	return base64.StdEncoding.EncodeToString(ct), nil
}

// base64Text decodes b if it is standard base64 text, with padding and nothing else (no
// line breaks, which the decoder would skip), and reports whether it was.
func base64Text(b []byte) ([]byte, bool) {
	if len(b) == 0 || len(b)%4 != 0 {
		return nil, false
	}
	for _, c := range b {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '+', c == '/', c == '=':
		default:
			return nil, false
		}
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(out, b)
	if err != nil || n == 0 {
		return nil, false
	}
	return out[:n], true
}

// quotedTokenType is TokenType as a JSON string.
const quotedTokenType = `"` + TokenType + `"`

// decodeMember decodes value, a valid JSON value, into the field v of an owned member: what
// json.Unmarshal(value, v) does, done directly for the common cases (a string of plain
// ASCII, an array of such strings, a wrapped_at) and by json.Unmarshal otherwise.
func decodeMember(value []byte, v any) error {
	switch v := v.(type) {
	case *string:
		if string(value) == quotedTokenType {
			*v = TokenType // the type member, without a copy
			return nil
		}
		if s, ok := plainString(value); ok {
			*v = s
			return nil
		}
	case *[]string:
		if ss, ok := plainStrings(value); ok {
			*v = ss
			return nil
		}
	case *tokenTime:
		// json.Unmarshal of a valid value into an Unmarshaler is its UnmarshalJSON, which
		// never fails.
		return v.UnmarshalJSON(value)
	}
	return json.Unmarshal(value, v)
}

// plainString returns the string the JSON string literal b stands for when it has no escape
// and only printable ASCII (so that it is exactly its bytes); ok is false otherwise.
func plainString(b []byte) (string, bool) {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return "", false
	}
	for _, c := range b[1 : len(b)-1] {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(b[1 : len(b)-1]), true
}

// plainStrings returns the strings of b, a JSON array of plain strings (plainString) with no
// white space, such as a keyslots member; ok is false for anything else.
func plainStrings(b []byte) ([]string, bool) {
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, false
	}
	inner := b[1 : len(b)-1]
	out := []string{}
	for len(inner) > 0 {
		if inner[0] != '"' {
			return nil, false
		}
		end := bytes.IndexByte(inner[1:], '"')
		if end < 0 {
			return nil, false
		}
		s, ok := plainString(inner[:end+2])
		if !ok {
			return nil, false
		}
		out = append(out, s)
		inner = inner[end+2:]
		if len(inner) > 0 {
			if inner[0] != ',' || len(inner) == 1 {
				return nil, false
			}
			inner = inner[1:]
		}
	}
	return out, true
}

// splitObject decodes raw as one JSON object and returns its members in document order, each
// value exactly as it appears in raw (the values alias raw). Duplicate member names are
// refused.
func splitObject(raw []byte) ([]tokenMember, error) {
	if json.Valid(raw) {
		if out, ok := splitValidObject(raw); ok {
			return out, nil
		}
	}
	return splitObjectDecoder(raw)
}

// splitValidObject is splitObject for raw that json.Valid accepts: the members found by
// walking the text, which validity makes a matter of finding where strings and nested values
// end. ok is false when raw is not an object, has a duplicate member, or has a member name
// with escapes or other than printable ASCII: splitObjectDecoder takes those.
func splitValidObject(raw []byte) (out []tokenMember, ok bool) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, false
	}
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return []tokenMember{}, skipSpace(raw, i+1) == len(raw)
	}
	out = make([]tokenMember, 0, 12)
	for i < len(raw) {
		end := stringEnd(raw, i)
		if end < 0 {
			return nil, false
		}
		name, plain := memberName(raw[i:end])
		if !plain {
			return nil, false
		}
		for _, m := range out {
			if m.name == name {
				return nil, false
			}
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return nil, false
		}
		start := skipSpace(raw, i+1)
		stop := valueEnd(raw, start)
		if stop < 0 {
			return nil, false
		}
		out = append(out, tokenMember{name: name, value: raw[start:stop:stop]})
		i = skipSpace(raw, stop)
		if i >= len(raw) {
			return nil, false
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case '}':
			return out, skipSpace(raw, i+1) == len(raw)
		default:
			return nil, false
		}
	}
	return nil, false
}

// memberName is plainString for a member name: the owned members' names are not allocated
// again.
func memberName(b []byte) (string, bool) {
	if len(b) >= 2 {
		for _, f := range tokenFields() {
			if string(b[1:len(b)-1]) == f.name && b[0] == '"' && b[len(b)-1] == '"' {
				return f.name, true
			}
		}
	}
	return plainString(b)
}

// skipSpace returns the index of the first byte of b at or after i that is not JSON white
// space.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just after the JSON string starting at b[i], or -1.
func stringEnd(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// valueEnd returns the index just after the valid JSON value starting at b[i], or -1.
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := stringEnd(b, j)
				if end < 0 {
					return -1
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	default: // a number, true, false or null
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		return j
	}
}

// splitObjectDecoder is splitObject by encoding/json's Decoder: the reference, and the path
// of anything splitValidObject does not take (it names what is wrong).
func splitObjectDecoder(raw []byte) ([]tokenMember, error) {
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
