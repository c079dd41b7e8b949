package volume

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseToken feeds arbitrary bytes to the token parser. It must never panic; every
// refusal must match ErrBadToken; a token that parses must encode (marshalChecked) to text
// that parses to the same key, version and ciphertext, and encoding that text again must not
// change it.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{
		`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"AA=="}`,
		`{"type":"crkvol-crk","keyslots":[],"key_id":"k","key_version":"v","ciphertext":"QUFBQQ==","volume_crn":"crn:v1:bluemix:public:is:us-south:a/crkvol:::volume:` + testUUID + `"}`,
		`{"type":"crkvol-crk","keyslots":["31"],"key_id":"k","key_version":"v","ciphertext":"AA==","wrapped_at":"2026-01-02T03:04:05Z","x-other":{"a":[1,2,null]}}`,
		`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"\"QUE=\""}`,
		`{"type":"crkvol-crk","type":"x"}`,
		`{}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		tok, err := parseToken(raw, testUUID)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("refusal does not match ErrBadToken: %v", err)
			}
			return
		}
		text, err := tok.marshalChecked(testUUID)
		if err != nil {
			t.Fatalf("a token that parsed does not encode: %v\n%q", err, raw)
		}
		back, err := parseToken(text, testUUID)
		if err != nil {
			t.Fatalf("encoded token does not parse: %v\n%s", err, text)
		}
		if back.KeyID != tok.KeyID || back.KeyVersion != tok.KeyVersion || back.Ciphertext != tok.Ciphertext {
			t.Fatalf("round trip changed the token:\n%q\n%s", raw, text)
		}
		again, err := back.marshal()
		if err != nil || !bytes.Equal(again, text) {
			t.Fatalf("encoding is not stable (%v):\n%s\n%s", err, text, again)
		}
	})
}

// FuzzParseSize: ParseSize never panics, accepts only positive sizes within its range, and
// agrees with ParseQuantity's whole number of bytes; every error is a syntax or a range error.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1", "4096", "1K", "1 MiB", "3g", "2TiB", "0", "-1", "9223372036854775807", "4611686018427387904b", " 12 kib ", "1.5G", "b", "",
		"1.0000001GiB", "10GB", "1PiB", "+0.5KiB", "1.", ".5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if !errors.Is(err, ErrSizeSyntax) && !errors.Is(err, ErrSizeRange) {
				t.Fatalf("ParseSize(%q): %v is neither a syntax nor a range error", s, err)
			}
			return
		}
		if n <= 0 || n > 1<<62 {
			t.Fatalf("ParseSize(%q) = %d, outside (0, 2^62]", s, n)
		}
		q, err := ParseQuantity(s)
		if err != nil {
			t.Fatalf("ParseQuantity(%q): %v, but ParseSize accepts it", s, err)
		}
		if b, err := q.Bytes(); err != nil || b != n {
			t.Fatalf("ParseQuantity(%q).Bytes() = %d, %v; ParseSize = %d", s, b, err, n)
		}
	})
}
