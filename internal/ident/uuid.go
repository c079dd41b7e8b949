package ident

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// ErrInvalidUUID is wrapped by every error of [ParseUUID] and [CanonicalUUID].
var ErrInvalidUUID = errors.New("not a UUID in canonical 8-4-4-4-12 form")

// NewUUID returns a random (version 4, RFC 9562 variant) UUID in lower case, reading 16 bytes
// from rand.
func NewUUID(rand io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", fmt.Errorf("reading random UUID: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return FormatUUID(b), nil
}

// FormatUUID writes b in the canonical form, lower case.
func FormatUUID(b [16]byte) string {
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:36], b[10:16])
	return string(out[:])
}

// ParseUUID reads a UUID in the canonical 8-4-4-4-12 form, with hex digits of either case.
// Other forms (braces, "urn:uuid:", no hyphens) are refused. Any version and variant is
// accepted.
func ParseUUID(s string) ([16]byte, error) {
	var b [16]byte
	if len(s) != 36 {
		return b, fmt.Errorf("%w: %d characters, want 36", ErrInvalidUUID, len(s))
	}
	j := 0
	for i := 0; i < 36; i += 2 {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return b, fmt.Errorf("%w: no hyphen at position %d", ErrInvalidUUID, i)
			}
			i++
		}
		hi, ok1 := fromHex(s[i])
		lo, ok2 := fromHex(s[i+1])
		if !ok1 || !ok2 {
			return b, fmt.Errorf("%w: not a hex digit at position %d", ErrInvalidUUID, i)
		}
		b[j] = hi<<4 | lo
		j++
	}
	return b, nil
}

// CanonicalUUID returns s, which [ParseUUID] must accept, in lower case.
func CanonicalUUID(s string) (string, error) {
	b, err := ParseUUID(s)
	if err != nil {
		return "", err
	}
	return FormatUUID(b), nil
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
