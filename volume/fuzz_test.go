package volume

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
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

// refMarshal is token.marshal as it was before its direct encodings: every member through
// json.Marshal. marshal must give the same bytes.
func refMarshal(t *token) ([]byte, error) {
	out := *t
	out.typ = TokenType
	if out.Keyslots == nil {
		out.Keyslots = []string{}
	}
	var b bytes.Buffer
	b.WriteByte('{')
	write := func(name string, v []byte) {
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		n, _ := json.Marshal(name)
		b.Write(n)
		b.WriteByte(':')
		b.Write(v)
	}
	seen := map[string]bool{}
	for _, m := range t.members {
		seen[m.name] = true
		v := []byte(m.value)
		if i, owned := tokenFieldIndex(m.name); owned {
			f := tokenFields()[i]
			if f.absent != nil && f.absent(&out) {
				continue
			}
			var err error
			if v, err = json.Marshal(f.field(&out)); err != nil {
				return nil, err
			}
		}
		write(m.name, v)
	}
	for _, f := range tokenFields() {
		if seen[f.name] || (f.absent != nil && f.absent(&out)) {
			continue
		}
		v, err := json.Marshal(f.field(&out))
		if err != nil {
			return nil, err
		}
		write(f.name, v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// FuzzTokenCodec: splitObject (which walks valid text itself) gives exactly the members, or
// the refusal, of encoding/json's Decoder (splitObjectDecoder); a token's owned members decode
// as json.Unmarshal decodes them; marshal writes exactly what json.Marshal of each member
// (refMarshal) writes.
func FuzzTokenCodec(f *testing.F) {
	for _, s := range []string{
		`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"AA=="}`,
		` { "type" : "crkvol-crk" , "keyslots" : [ "0" , "1" ] , "key_id":"k\u00e9","key_version":"v\"","ciphertext":"AA==" } `,
		`{"type":"crkvol-crk","keyslots":["31"],"key_id":"<k>&","key_version":"v","ciphertext":"AA==","wrapped_at":"2026-01-02T03:04:05.5+02:00","x-other":{"a":[1,2,null,"]}"]},"data_size":123}`,
		`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","key_version":"v","ciphertext":"AA==","wrapped_at":"<soon>","wipe":{"done":1}}`,
		`{"type":"crkvol-crk","keyslots":null,"key_id":null,"key_version":"v","ciphertext":"AA==","data_size":-1e3}`,
		`{"a":1,"a":2}`, `{"\u0061":1,"a":2}`, `{"a\\":[],"b":{}}`, `{}`, ` {} x`, `[]`, `"x"`, `{"a":1,}`, `{"a" 1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := splitObject(raw)
		want, wantErr := splitObjectDecoder(raw)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("splitObject error %v, Decoder's %v\n%q", err, wantErr, raw)
		}
		if err == nil {
			if len(got) != len(want) {
				t.Fatalf("%d members, Decoder %d\n%q", len(got), len(want), raw)
			}
			for i := range got {
				if got[i].name != want[i].name || !bytes.Equal(got[i].value, want[i].value) {
					t.Fatalf("member %d: %q %q, Decoder %q %q", i, got[i].name, got[i].value, want[i].name, want[i].value)
				}
				for _, fl := range tokenFields() {
					var a, b token
					errA := decodeMember(got[i].value, fl.field(&a))
					errB := json.Unmarshal(got[i].value, fl.field(&b))
					if (errA == nil) != (errB == nil) || !reflect.DeepEqual(a, b) {
						t.Fatalf("member %s decoded as %s: %+v (%v), json.Unmarshal %+v (%v)", got[i].value, fl.name, a, errA, b, errB)
					}
				}
			}
		}
		tok, err := parseToken(raw, testUUID)
		if err != nil {
			return
		}
		for _, tk := range []*token{tok, {Keyslots: tok.Keyslots, KeyID: tok.KeyID, KeyVersion: tok.KeyVersion, Ciphertext: tok.Ciphertext, WrappedAt: tok.WrappedAt, DataSize: tok.DataSize}} {
			out, err := tk.marshal()
			ref, refErr := refMarshal(tk)
			if (err == nil) != (refErr == nil) || !bytes.Equal(out, ref) {
				t.Fatalf("marshal:\n%s (%v)\nreference:\n%s (%v)", out, err, ref, refErr)
			}
		}
	})
}
