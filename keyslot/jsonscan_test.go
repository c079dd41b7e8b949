package keyslot

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parseObjectDecoder is parseObject as it was written on encoding/json's Decoder: the
// reference the scanner-based parseObject is checked against.
func parseObjectDecoder(raw []byte) ([]member, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' || !utf8.Valid(raw) {
		return nil, ErrInvalidMetadata
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var out []member
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := tok.(string)
		if !ok || seen[name] {
			return nil, ErrInvalidMetadata
		}
		seen[name] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, member{name, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if dec.More() || int(dec.InputOffset()) != len(raw) {
		return nil, ErrInvalidMetadata
	}
	return out, nil
}

// checkScanAgainstEncodingJSON compares, for one input, the scanner-based helpers with
// encoding/json: parseObject's members and refusals, arrayElems, string decoding,
// needsCompact, and the validity of any value.
func checkScanAgainstEncodingJSON(t *testing.T, in []byte) {
	t.Helper()
	want, werr := parseObjectDecoder(in)
	o, err := parseObject("x", in)
	if (werr == nil) != (err == nil) {
		t.Fatalf("parseObject(%q): error %v, encoding/json %v", in, err, werr)
	}
	if err == nil {
		require.Equal(t, len(want), len(o.members), "%q", in)
		for i := range want {
			require.Equal(t, want[i].name, o.members[i].name, "%q", in)
			require.Equal(t, string(want[i].value), string(o.members[i].value), "%q", in)
		}
	} else {
		assert.ErrorIs(t, err, ErrInvalidMetadata)
	}

	trimmed := bytes.TrimSpace(in)
	valid := json.Valid(trimmed)
	if end, err := scanValue(trimmed, 0, 0); (err == nil && end == len(trimmed)) != valid {
		t.Fatalf("scanValue(%q): end %d of %d, error %v; json.Valid %v", trimmed, end, len(trimmed), err, valid)
	}
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var wantElems []json.RawMessage
		werr := json.Unmarshal(trimmed, &wantElems)
		elems, err := arrayElems(trimmed)
		if (werr == nil) != (err == nil) {
			t.Fatalf("arrayElems(%q): error %v, encoding/json %v", trimmed, err, werr)
		}
		require.Equal(t, len(wantElems), len(elems), "%q", trimmed)
		for i := range elems {
			require.Equal(t, string(wantElems[i]), string(elems[i]), "%q", trimmed)
		}
	}
	if len(trimmed) > 0 && trimmed[0] == '"' && utf8.Valid(trimmed) {
		var ws string
		werr := json.Unmarshal(trimmed, &ws)
		end, escaped, err := scanString(trimmed, 0)
		if err == nil && end != len(trimmed) {
			err = scanError(trimmed, end, "after top-level value")
		}
		var s string
		if err == nil {
			s, err = unquote(trimmed, escaped)
		}
		if (werr == nil) != (err == nil) {
			t.Fatalf("string %q: error %v, encoding/json %v", trimmed, err, werr)
		}
		require.Equal(t, ws, s, "%q", trimmed)
	}
	if valid {
		var buf bytes.Buffer
		require.NoError(t, json.Compact(&buf, trimmed))
		if !needsCompact(trimmed) {
			require.Equal(t, string(trimmed), buf.String(), "needsCompact false, but json.Compact changes %q", trimmed)
		}
	}
}

var scanSeeds = []string{
	`{}`, ` { } `, `{"a":1}`, `{"a" : 1 , "b":[1, 2,{"c":null}]}`, `{"a":1,}`, `{"a":1 "b":2}`,
	`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"\ud800":1,"\ufffd":2}`, `{"a\"b":"c\\d\/e\b\f\n\r\t"}`,
	`{"a":"\u12"}`, `{"a":"\x"}`, "{\"a\":\"\x01\"}", `{"a":-0,"b":-0.5e+10,"c":1E3,"d":01}`,
	`{"a":-}`, `{"a":1.}`, `{"a":1e}`, `{"a":.5}`, `{"a":tru}`, `{"a":true,"b":false,"c":null}`,
	`{"a":nul}`, `{"a":[}`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":{"b":{}}}x`, `{"a":1}}`, `{"a"}`,
	`{"a":}`, `{1:2}`, `{"a":1}{"b":2}`, `[1,"2",[3],{"4":5}]`, `[ ]`, `[1 2]`, `"a\u00e9b"`,
	`"plain"`, `"tab	in"`, `"\uD83D\uDE00"`, `{"a":"é ü 𝄞"}`, "{\"a\":1\n,\t\"b\" :\r2}", `{"a":[1, "x y", {"k" : "v"}]}`,
	`{"keyslots":{"0":{"type":"luks2","key_size":64}},"tokens":{}}`, `{"a":1e400}`, `{"a":"` + strings.Repeat("x", 100) + `"}`,
	`{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
}

// TestScanMatchesEncodingJSON runs the comparison over hand-picked valid and invalid JSON.
func TestScanMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, s := range scanSeeds {
		checkScanAgainstEncodingJSON(t, []byte(s))
	}
}

// FuzzScanJSON compares the scanner-based parsing with encoding/json on arbitrary input.
func FuzzScanJSON(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkScanAgainstEncodingJSON(t, in)
	})
}
