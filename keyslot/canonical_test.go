package keyslot

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// canonicalRef is canonical as it was before it wrote into one buffer with paths put
// together only for errors (commit bc2167a), kept to check that the output and every error
// are unchanged.
func canonicalRef(path string, raw json.RawMessage, depth int) ([]byte, error) {
	if depth > 64 {
		return nil, fmt.Errorf("%w: %s: nested more than 64 levels", ErrInvalidMetadata, path)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: %s: empty value", ErrInvalidMetadata, path)
	}
	switch c := raw[0]; {
	case c == '{':
		o, err := parseObject(path, raw)
		if err != nil {
			return nil, err
		}
		var w writer
		w.open('{')
		for _, m := range o.members {
			v, err := canonicalRef(path+"."+m.name, m.value, depth+1)
			if err != nil {
				return nil, err
			}
			w.key(m.name)
			w.b = append(w.b, v...)
		}
		w.close('}')
		return w.b, nil
	case c == '[':
		elems, err := arrayElems(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, path, err)
		}
		var w writer
		w.open('[')
		for i, e := range elems {
			v, err := canonicalRef(fmt.Sprintf("%s[%d]", path, i), e, depth+1)
			if err != nil {
				return nil, err
			}
			w.sep()
			w.b = append(w.b, v...)
		}
		w.close(']')
		return w.b, nil
	case c == '"':
		end, escaped, err := scanString(raw, 0)
		if err == nil && end != len(raw) {
			err = scanError(raw, end, "after top-level value")
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, path, err)
		}
		str, err := unquote(raw, escaped)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, path, err)
		}
		if !utf8.ValidString(str) || strings.ContainsRune(str, utf8.RuneError) {
			return nil, fmt.Errorf("%w: %s: invalid UTF-8", ErrInvalidMetadata, path)
		}
		return appendString(nil, str), nil
	case c == '-' || c >= '0' && c <= '9':
		text := string(raw)
		if _, err := strconv.ParseInt(text, 10, 64); err != nil {
			if _, err := strconv.ParseUint(text, 10, 64); err != nil {
				return nil, fmt.Errorf("%w: %s: number %.30s must be an integer within 64 bits", ErrInvalidMetadata, path, text)
			}
		}
		if text == "-0" {
			return []byte("0"), nil
		}
		return []byte(text), nil
	case bytes.Equal(raw, []byte("true")), bytes.Equal(raw, []byte("false")), bytes.Equal(raw, []byte("null")):
		return raw, nil
	}
	return nil, fmt.Errorf("%w: %s: invalid JSON value", ErrInvalidMetadata, path)
}

// checkCanonical compares canonical with canonicalRef on in: the same bytes, or the same
// error message.
func checkCanonical(t *testing.T, in []byte) {
	t.Helper()
	got, err := canonical("token", in, 0)
	want, werr := canonicalRef("token", in, 0)
	if fmt.Sprint(err) != fmt.Sprint(werr) || !bytes.Equal(got, want) {
		t.Fatalf("canonical(%q):\n got %q, %v\nwant %q, %v", in, got, err, want, werr)
	}
}

var canonicalSeeds = []string{
	`{"type":"crkvol-crk","keyslots":["0"],"key_id":"k","ciphertext":"AAAA"}`,
	` {"a" : [1, -0, 18446744073709551615, -9223372036854775808, 123456789012345678901], "b":{"c":[true,false,null,{}]}} `,
	`{"a":-0}`, `{"a":[-0]}`, `{"a":1.5}`, `{"a":1e3}`, `{"a":"\u00e9\/\"\\\n\u0001"}`, `{"a":"\ud800"}`,
	"{\"a\":\"\xff\"}", "{\"a\":[\"x\",\"\xfe\"]}", `{"a":"` + "\uFFFD" + `"}`, `{"a":[1,2,}`, `{"a":[1.5,2,}`,
	`{"a":{"b":1,"b":2}}`, `{"a":{"b":[{"c":1.5}]}}`, `{"a":[[[[1.5]]]]}`, `{"a":{"b":{"c":{"d":"\x"}}}}`,
	`[1,2]`, `"x"`, `12`, `true`, `nul`, ``, ` `, `{"a":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `}`,
	`{"a":` + strings.Repeat(`{"b":`, 66) + `1` + strings.Repeat("}", 66) + `}`,
}

// TestCanonicalUnchanged runs checkCanonical over tokens, numbers, escapes, bad UTF-8 and
// errors at every depth.
func TestCanonicalUnchanged(t *testing.T) {
	t.Parallel()
	for _, s := range append(canonicalSeeds, scanSeeds...) {
		checkCanonical(t, []byte(s))
	}
}

// FuzzCanonical runs checkCanonical on arbitrary input.
func FuzzCanonical(f *testing.F) {
	for _, s := range append(canonicalSeeds, scanSeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkCanonical(t, in)
	})
}
