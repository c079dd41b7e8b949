package ident

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParseUUID(t *testing.T) {
	want := [16]byte{0x01, 0x23, 0xab, 0xcd, 0x89, 0xab, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}
	tests := []struct {
		name, in  string
		ok        bool
		canonical string
	}{
		{"lower", "0123abcd-89ab-4def-8123-456789abcdef", true, "0123abcd-89ab-4def-8123-456789abcdef"},
		{"upper, as cryptsetup --uuid accepts", "0123ABCD-89AB-4DEF-8123-456789ABCDEF", true, "0123abcd-89ab-4def-8123-456789abcdef"},
		{"mixed", "0123AbCd-89ab-4DEF-8123-456789abcdef", true, "0123abcd-89ab-4def-8123-456789abcdef"},
		{"empty", "", false, ""},
		{"no hyphens", "0123abcd89ab4def8123456789abcdef", false, ""},
		{"braces", "{0123abcd-89ab-4def-8123-456789abcdef}", false, ""},
		{"urn", "urn:uuid:0123abcd-89ab-4def-8123-456789abcdef", false, ""},
		{"hyphen moved", "0123abc-d89ab-4def-8123-456789abcdef", false, ""},
		{"non-hex", "0123abcg-89ab-4def-8123-456789abcdef", false, ""},
		{"non-hex after hyphen", "0123abcd-x9ab-4def-8123-456789abcdef", false, ""},
		{"too long", "0123abcd-89ab-4def-8123-456789abcdef0", false, ""},
		{"not a uuid", "NOT-A-UUID", false, ""},
		{"multibyte", "0123abcd-89ab-4def-8123-456789abcdé", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ParseUUID(tc.in)
			c, cerr := CanonicalUUID(tc.in)
			if !tc.ok {
				if !errors.Is(err, ErrInvalidUUID) || !errors.Is(cerr, ErrInvalidUUID) {
					t.Fatalf("ParseUUID(%q) = %v, CanonicalUUID: %v; want ErrInvalidUUID", tc.in, err, cerr)
				}
				return
			}
			if err != nil || cerr != nil {
				t.Fatalf("ParseUUID(%q): %v, %v", tc.in, err, cerr)
			}
			if b != want {
				t.Errorf("ParseUUID(%q) = %x, want %x", tc.in, b, want)
			}
			if c != tc.canonical || FormatUUID(b) != tc.canonical {
				t.Errorf("canonical form %q / %q, want %q", c, FormatUUID(b), tc.canonical)
			}
		})
	}
}

func TestNewUUID(t *testing.T) {
	tests := []struct {
		name string
		rand []byte
		want string
	}{
		{"zeros", make([]byte, 16), "00000000-0000-4000-8000-000000000000"},
		{"ones", bytes.Repeat([]byte{0xff}, 16), "ffffffff-ffff-4fff-bfff-ffffffffffff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NewUUID(bytes.NewReader(tc.rand))
			if err != nil || got != tc.want {
				t.Fatalf("NewUUID = %q, %v; want %q", got, err, tc.want)
			}
			if _, err := ParseUUID(got); err != nil {
				t.Fatalf("a new UUID does not parse: %v", err)
			}
		})
	}
	if _, err := NewUUID(bytes.NewReader(make([]byte, 15))); err == nil {
		t.Fatal("NewUUID with 15 random bytes succeeded")
	}
}

func TestCRN(t *testing.T) {
	long := "crn:v1:local:public:is:local:a/crkvol::volume:" + strings.Repeat("x", MaxCRNLen)
	tests := []struct {
		name, in string
		want     CRN // zero: invalid
	}{
		{"key", "crn:v1:local:public:kms:local:a/crkvol:0123abcd-89ab-4def-8123-456789abcdef:key:k1",
			KeyCRN(DefaultLocation, DefaultAccount, "0123abcd-89ab-4def-8123-456789abcdef", "k1")},
		{"volume", "crn:v1:local:public:is:local:a/crkvol::volume:0123abcd-89ab-4def-8123-456789abcdef",
			VolumeCRN("0123abcd-89ab-4def-8123-456789abcdef")},
		{"image", "crn:v1:local:public:is:local:a/crkvol::image:0123abcd-89ab-4def-8123-456789abcdef",
			ImageCRN("0123abcd-89ab-4def-8123-456789abcdef")},
		{"ibm cloud", "crn:v1:bluemix:public:kms:us-south:a/acct:inst:key:0f3c1e7a",
			CRN{CName: "bluemix", CType: "public", Service: "kms", Location: "us-south", Scope: "a/acct", Instance: "inst", ResourceType: "key", Resource: "0f3c1e7a"}},
		{"not a crn", "volume-1", CRN{}},
		{"v2", "crn:v2:local:public:is:local:a/crkvol::volume:x", CRN{}},
		{"nine segments", "crn:v1:local:public:is:local:a/crkvol:volume:x", CRN{}},
		{"eleven segments", "crn:v1:local:public:is:local:a/crkvol::volume:x:y", CRN{}},
		{"no service", "crn:v1:local:public::local:a/crkvol::volume:x", CRN{}},
		{"newline", "crn:v1:local:public:is:local:a/crkvol::volume:x\n", CRN{}},
		{"nul", "crn:v1:local:public:is:local:a/crkvol::volume:x\x00", CRN{}},
		{"too long", long, CRN{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCRN(tc.in)
			if tc.want == (CRN{}) {
				if !errors.Is(err, ErrInvalidCRN) {
					t.Fatalf("ParseCRN(%q) = %+v, %v; want ErrInvalidCRN", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseCRN(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

// TestIsImageCRN: only CRNs of resource type "image" are image CRNs.
func TestIsImageCRN(t *testing.T) {
	cases := []struct {
		crn  string
		want bool
	}{
		{ImageCRN("0f8c3c2e-8e0a-4b1e-9a57-3c1d2e4f5a6b").String(), true},
		{VolumeCRN("0f8c3c2e-8e0a-4b1e-9a57-3c1d2e4f5a6b").String(), false},
		{"crn:v1:bluemix:public:is:us-south:a/x::image", false},
		{"image", false},
		{"", false},
	}
	for _, tc := range cases {
		if got := IsImageCRN(tc.crn); got != tc.want {
			t.Errorf("IsImageCRN(%q) = %v, want %v", tc.crn, got, tc.want)
		}
	}
}
