package volume

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testUUID = "5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10"

func TestTokenParsing(t *testing.T) {
	for _, bad := range []string{
		`nope`,
		`{"type":"other","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"AA=="}`,
		`{"type":"crkvol-crk","keyslots":["0"],"key_version":"v","ciphertext":"AA=="}`,
		`{"type":"crkvol-crk","keyslots":["0","1"],"key_id":"k","key_version":"v","ciphertext":"AA=="}`,
		`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"!!"}`,
	} {
		_, err := parseToken([]byte(bad), testUUID)
		assert.ErrorIs(t, err, ErrBadToken, bad)
	}
	tok, err := parseToken([]byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"AAEC"}`), testUUID)
	require.NoError(t, err)
	ct, err := tok.ciphertext()
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 1, 2}, ct)
}

// TestTokenRefusesBadMembers: a token whose members crkvol owns are malformed is refused with
// ErrBadToken, and the error names the member at fault.
func TestTokenRefusesBadMembers(t *testing.T) {
	const rest = `"key_id":"k","key_version":"v","ciphertext":"AAEC"`
	crn := CRN(testUUID)
	cases := []struct {
		name, token, member string
	}{
		{"volume_crn of another volume", `{"type":"crkvol-crk","keyslots":["0"],` + rest + `,"volume_crn":"` + CRN("0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11") + `"}`, "volume_crn"},
		{"volume_crn empty", `{"type":"crkvol-crk","keyslots":["0"],` + rest + `,"volume_crn":""}`, "volume_crn"},
		{"volume_crn not a string", `{"type":"crkvol-crk","keyslots":["0"],` + rest + `,"volume_crn":7}`, "volume_crn"},
		{"keyslot id with a leading zero", `{"type":"crkvol-crk","keyslots":["01"],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"keyslot id 32", `{"type":"crkvol-crk","keyslots":["32"],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"negative keyslot id", `{"type":"crkvol-crk","keyslots":["-1"],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"keyslot id with a sign", `{"type":"crkvol-crk","keyslots":["+1"],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"keyslot id not decimal", `{"type":"crkvol-crk","keyslots":["a"],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"keyslot id with a space", `{"type":"crkvol-crk","keyslots":[" 1"],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"keyslot id a number", `{"type":"crkvol-crk","keyslots":[1],` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"keyslots not an array", `{"type":"crkvol-crk","keyslots":"0",` + rest + `,"volume_crn":"` + crn + `"}`, "keyslots"},
		{"duplicate member", `{"type":"crkvol-crk","keyslots":["0"],` + rest + `,"key_id":"k2","volume_crn":"` + crn + `"}`, "key_id"},
		{"type", `{"type":"crkvol-other","keyslots":["0"],` + rest + `}`, "type"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseToken([]byte(c.token), testUUID)
			require.ErrorIs(t, err, ErrBadToken)
			assert.Contains(t, err.Error(), c.member)
		})
	}
}

// TestTokenToleratesBadWrappedAt: a wrapped_at that is not an RFC 3339 time (a hand edit,
// another tool) does not make the token unreadable, since opening does not need it: it reads
// as a zero WrappedAt, is written back byte for byte while WrappedAt stays zero, and is
// replaced once a rewrap sets WrappedAt.
func TestTokenToleratesBadWrappedAt(t *testing.T) {
	const rest = `"key_id":"k","key_crn":"c","key_version":"v","ciphertext":"AAEC"`
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, c := range []struct{ name, value string }{
		{"not a time", `"yesterday"`},
		{"a date only", `"2026-01-02"`},
		{"a number", `1767322800`},
		{"null", `null`},
		{"an object", `{"at":"noon"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw := `{"type":"crkvol-crk","keyslots":["0"],` + rest + `,"wrapped_at":` + c.value + `,"volume_crn":"` + CRN(testUUID) + `"}`
			tok, err := parseToken([]byte(raw), testUUID)
			require.NoError(t, err)
			assert.True(t, tok.WrappedAt.IsZero())
			out, err := tok.marshal()
			require.NoError(t, err)
			assert.Equal(t, raw, string(out), "written back as read")

			tok.WrappedAt = now
			out, err = tok.marshal()
			require.NoError(t, err)
			again, err := parseToken(out, testUUID)
			require.NoError(t, err)
			assert.Equal(t, now, again.WrappedAt, "a rewrap replaces it")
		})
	}
}

// TestTokenKeepsUnknownMembers: marshalling a parsed token changes only the members crkvol
// owns: every other member keeps its place and its bytes, wherever it sits.
func TestTokenKeepsUnknownMembers(t *testing.T) {
	crn := CRN(testUUID)
	const extra = `{"by":"ops","n":[1,-2,18446744073709551615],"s":"é/\"x\"","o":{}}`
	cases := []struct {
		name, token string
		want        []string // member names, in order, after marshal
	}{
		{"first", `{"x-first":` + extra + `,"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_crn":"c","key_version":"v1","ciphertext":"AAEC","wrapped_at":"2026-01-02T03:04:05Z","volume_crn":"` + crn + `"}`,
			[]string{"x-first", "type", "keyslots", "key_id", "key_crn", "key_version", "ciphertext", "wrapped_at", "volume_crn"}},
		{"between", `{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","x-mid":` + extra + `,"key_crn":"c","key_version":"v1","ciphertext":"AAEC","wrapped_at":"2026-01-02T03:04:05Z","volume_crn":"` + crn + `"}`,
			[]string{"type", "keyslots", "key_id", "x-mid", "key_crn", "key_version", "ciphertext", "wrapped_at", "volume_crn"}},
		{"last, and two of them", `{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_crn":"c","key_version":"v1","ciphertext":"AAEC","wrapped_at":"2026-01-02T03:04:05Z","volume_crn":"` + crn + `","x-a":` + extra + `,"x-b":null}`,
			[]string{"type", "keyslots", "key_id", "key_crn", "key_version", "ciphertext", "wrapped_at", "volume_crn", "x-a", "x-b"}},
		{"old token without volume_crn gains it at the end", `{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v1","ciphertext":"AAEC","x-old":` + extra + `}`,
			[]string{"type", "keyslots", "key_id", "key_version", "ciphertext", "x-old", "key_crn", "wrapped_at", "volume_crn"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := parseToken([]byte(c.token), testUUID)
			require.NoError(t, err)
			before, err := splitObject([]byte(c.token))
			require.NoError(t, err)
			tok.Ciphertext, tok.KeyVersion = "BAUG", "v2"
			out, err := tok.marshal()
			require.NoError(t, err)
			after, err := splitObject(out)
			require.NoError(t, err, "%s", out)
			names := make([]string, len(after))
			got := map[string]string{}
			for i, m := range after {
				names[i] = m.name
				got[m.name] = string(m.value)
			}
			assert.Equal(t, c.want, names)
			for _, m := range before {
				if m.name[:2] == "x-" {
					assert.Equal(t, string(m.value), got[m.name], "member %s byte for byte", m.name)
				}
			}
			assert.Equal(t, `"BAUG"`, got["ciphertext"])
			assert.Equal(t, `"v2"`, got["key_version"])
			assert.Equal(t, `"`+crn+`"`, got["volume_crn"])
			again, err := parseToken(out, testUUID)
			require.NoError(t, err)
			assert.Equal(t, "v2", again.KeyVersion)
		})
	}
}

// TestNewTokenMemberOrder: a token made by crkvol has its members in the documented order.
func TestNewTokenMemberOrder(t *testing.T) {
	tok := &token{Keyslots: []string{"0"}, KeyID: "k", KeyCRN: "c", KeyVersion: "v", Ciphertext: "AAEC", VolumeCRN: CRN(testUUID)}
	out, err := tok.marshal()
	require.NoError(t, err)
	ms, err := splitObject(out)
	require.NoError(t, err)
	var names []string
	for _, m := range ms {
		names = append(names, m.name)
	}
	assert.Equal(t, ownedTokenMembers(), names)
	_, err = parseToken(out, testUUID)
	require.NoError(t, err)
}

// TestMarshalCheckedRefusesUnreadableToken: a token that would not read back as this
// volume's (empty ciphertext or version, another volume's CRN, bad base64) is never encoded
// for writing, while a sound one is.
func TestMarshalCheckedRefusesUnreadableToken(t *testing.T) {
	good := func() *token {
		return &token{Keyslots: []string{"0"}, KeyID: "k", KeyCRN: "c", KeyVersion: "v", Ciphertext: "AAEC", VolumeCRN: CRN(testUUID)}
	}
	cases := []struct {
		name   string
		change func(t *token)
	}{
		{"empty ciphertext", func(t *token) { t.Ciphertext = "" }},
		{"empty key version", func(t *token) { t.KeyVersion = "" }},
		{"ciphertext not base64", func(t *token) { t.Ciphertext = "!!" }},
		{"another volume's CRN", func(t *token) { t.VolumeCRN = CRN("0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11") }},
		{"keyslot id out of range", func(t *token) { t.Keyslots = []string{"32"} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := good()
			c.change(tok)
			_, err := tok.marshalChecked(testUUID)
			require.ErrorIs(t, err, ErrBadToken)
		})
	}
	out, err := good().marshalChecked(testUUID)
	require.NoError(t, err)
	_, err = parseToken(out, testUUID)
	require.NoError(t, err)
}

// TestTokenCiphertextForms: the ciphertext member is the Key Protect ciphertext string (base64
// of the binary ciphertext, as crkvol has always written it in local mode); the form written
// by crkvol in --kms-url mode before, base64 of that string, reads as the same ciphertext.
func TestTokenCiphertextForms(t *testing.T) {
	cases := []struct {
		name, member string
		want         []byte
	}{
		{"key protect string", "AAEC", []byte{0, 1, 2}},
		{"old remote form", "QUFFQw==", []byte{0, 1, 2}},
		{"key protect string of text", "eyJpdiI6IngifQ==", []byte(`{"iv":"x"}`)},
		{"old remote form of text", "ZXlKcGRpSTZJbmdpZlE9PQ==", []byte(`{"iv":"x"}`)},
		{"binary whose bytes are not base64 text", "Q1JLMf8A", []byte("CRK1\xff\x00")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := parseToken([]byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"`+c.member+`"}`), testUUID)
			require.NoError(t, err)
			ct, err := tok.ciphertext()
			require.NoError(t, err)
			assert.Equal(t, c.want, ct)
		})
	}
}

// TestCiphertextMember: a binary ciphertext is written as its Key Protect ciphertext string,
// and one that would read back as another ciphertext (base64 text handed over where binary is
// expected) is refused.
func TestCiphertextMember(t *testing.T) {
	cases := []struct {
		name string
		ct   []byte
		want string
		err  error
	}{
		{"binary", []byte{0, 1, 2}, "AAEC", nil},
		{"binary with base64 characters only in part", []byte("CRK1\xff\x00"), "Q1JLMf8A", nil},
		{"base64 text", []byte("AAEC"), "", ErrBadToken},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ciphertextMember(c.ct)
			if c.err != nil {
				require.ErrorIs(t, err, c.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
			tok := &token{Ciphertext: got}
			back, err := tok.ciphertext()
			require.NoError(t, err)
			assert.Equal(t, c.ct, back, "reads back")
		})
	}
}

// TestTokenCodecAllocs pins the allocations of reading a typical token and writing it back
// checked (what a rewrap does per volume): the direct paths must stay in use.
func TestTokenCodecAllocs(t *testing.T) {
	if raceDetector {
		t.Skip("allocation counts mean nothing under the race detector")
	}
	raw := []byte(`{"type":"crkvol-crk","keyslots":["0"],"key_id":"0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e","key_crn":"crn:v1:bluemix:public:kms:us-south:a/crkvol:e22d4b40-9568-40d8-bc05-0bd1c11d30cf:key:0b9e3c7a-52f1-4d0e-9a55-6f1f2f8a1c3e",` +
		`"key_version":"5a6b7c8d-1e2f-4a3b-8c9d-0e1f2a3b4c5d","ciphertext":"` + strings.Repeat("QUJD", 40) + `","wrapped_at":"2026-01-02T03:04:05Z","volume_crn":"` + CRN(testUUID) + `","data_size":1048576}`)
	var parse, write float64
	parse = testing.AllocsPerRun(20, func() {
		if _, err := parseToken(raw, testUUID); err != nil {
			t.Fatal(err)
		}
	})
	tok, err := parseToken(raw, testUUID)
	require.NoError(t, err)
	write = testing.AllocsPerRun(20, func() {
		if _, err := tok.marshalChecked(testUUID); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("parse %v allocations, checked write %v", parse, write)
	assert.LessOrEqual(t, parse, 12.0)
	assert.LessOrEqual(t, write, 14.0)
}
