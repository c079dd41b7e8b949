package ident

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseUUID: a UUID that parses formats back to the same text in lower case; every refusal
// matches ErrInvalidUUID.
func FuzzParseUUID(f *testing.F) {
	for _, s := range []string{"5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10", "5B3AE5D6-6A4C-4B8E-9F0E-2F4C1D7A9B10", "{5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10}", "5b3ae5d66a4c4b8e9f0e2f4c1d7a9b10", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseUUID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidUUID) {
				t.Fatalf("refusal does not match ErrInvalidUUID: %v", err)
			}
			return
		}
		if got := FormatUUID(b); got != strings.ToLower(s) {
			t.Fatalf("ParseUUID(%q) formats back as %q", s, got)
		}
	})
}

// FuzzParseCRN: a CRN that parses prints back to the same text; every refusal matches
// ErrInvalidCRN.
func FuzzParseCRN(f *testing.F) {
	f.Add(KeyCRN(DefaultLocation, DefaultAccount, "inst", "5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10").String())
	f.Add(VolumeCRN("5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10").String())
	f.Add("crn:v1:::::::::")
	f.Add("crn:v1:a:b:c:d:e:f:g:h:i")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCRN(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCRN) {
				t.Fatalf("refusal does not match ErrInvalidCRN: %v", err)
			}
			return
		}
		if c.String() != s {
			t.Fatalf("ParseCRN(%q) prints back as %q", s, c.String())
		}
	})
}
