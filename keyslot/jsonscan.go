package keyslot

import (
	"encoding/json"
	"fmt"
)

// A strict JSON scanner (RFC 8259, the grammar encoding/json accepts) for the metadata
// parser: it finds where a value ends without decoding it, so that parseObject can split an
// object into members whose values are slices of the input, with no reflection, no token
// interface values and no allocation per value. Strings are decoded (json.Unmarshal) only
// when they contain an escape; see unquote.

// maxScanDepth is encoding/json's nesting limit. The metadata and tokens are held to
// MaxJSONDepth by checkDepth before they are scanned; this bounds the recursion for any other
// caller.
const maxScanDepth = 10000

// scanError describes invalid JSON at byte offset off of the scanned text.
func scanError(b []byte, off int, context string) error {
	if off >= len(b) {
		return fmt.Errorf("unexpected end of JSON input")
	}
	return fmt.Errorf("invalid character %q %s (offset %d)", b[off], context, off)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// skipSpace returns the offset of the first non-whitespace byte of b at or after i.
func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanValue returns the offset just past the JSON value starting at b[i] (no leading
// whitespace).
func scanValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, scanError(b, i, "")
	}
	switch c := b[i]; {
	case c == '{':
		return scanObject(b, i, depth+1)
	case c == '[':
		return scanArray(b, i, depth+1, nil)
	case c == '"':
		end, _, err := scanString(b, i)
		return end, err
	case c == '-' || c >= '0' && c <= '9':
		return scanNumber(b, i)
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	}
	return i, scanError(b, i, "looking for beginning of value")
}

func scanLiteral(b []byte, i int, lit string) (int, error) {
	for j := range len(lit) {
		if i+j >= len(b) || b[i+j] != lit[j] {
			return i + j, scanError(b, i+j, "in literal "+lit)
		}
	}
	return i + len(lit), nil
}

// scanString returns the offset just past the string starting at b[i] == '"', and whether
// it holds an escape.
func scanString(b []byte, i int) (int, bool, error) {
	escaped := false
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, escaped, nil
		case c < 0x20:
			return j, false, scanError(b, j, "in string literal")
		case c == '\\':
			escaped = true
			j++
			if j >= len(b) {
				return j, false, scanError(b, j, "")
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				for k := 1; k <= 4; k++ {
					if j+k >= len(b) || !isHex(b[j+k]) {
						return j + k, false, scanError(b, j+k, "in \\u hexadecimal character escape")
					}
				}
				j += 4
			default:
				return j, false, scanError(b, j, "in string escape code")
			}
		}
	}
	return len(b), false, scanError(b, len(b), "")
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) (int, error) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && isDigit(b[i]):
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return i, scanError(b, i, "in numeric literal")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return i, scanError(b, i, "after decimal point in numeric literal")
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, scanError(b, i, "in exponent of numeric literal")
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i, nil
}

// scanObject scans the object starting at b[i] == '{' and returns the offset past its '}'.
// (parseObject splits an object into its members with the same steps.)
func scanObject(b []byte, i, depth int) (int, error) {
	if depth > maxScanDepth {
		return i, fmt.Errorf("exceeded max depth")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return i, scanError(b, i, "looking for beginning of object key string")
		}
		nameEnd, _, err := scanString(b, i)
		if err != nil {
			return nameEnd, err
		}
		j := skipSpace(b, nameEnd)
		if j >= len(b) || b[j] != ':' {
			return j, scanError(b, j, "after object key")
		}
		start := skipSpace(b, j+1)
		end, err := scanValue(b, start, depth)
		if err != nil {
			return end, err
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return i, scanError(b, i, "")
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i + 1, nil
		default:
			return i, scanError(b, i, "after object key:value pair")
		}
	}
}

// scanArray scans the array starting at b[i] == '[' and returns the offset past its ']'.
// With elem non-nil it is called with each raw element.
func scanArray(b []byte, i, depth int, elem func(value []byte) error) (int, error) {
	if depth > maxScanDepth {
		return i, fmt.Errorf("exceeded max depth")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		end, err := scanValue(b, i, depth)
		if err != nil {
			return end, err
		}
		if elem != nil {
			if err := elem(b[i:end]); err != nil {
				return end, err
			}
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return i, scanError(b, i, "")
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			return i + 1, nil
		default:
			return i, scanError(b, i, "after array element")
		}
	}
}

// arrayElems returns the raw elements of the JSON array raw (surrounding whitespace allowed),
// as json.Unmarshal into []json.RawMessage does, slices of raw.
func arrayElems(raw []byte) ([]json.RawMessage, error) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '[' {
		return nil, scanError(raw, i, "looking for beginning of array")
	}
	var elems []json.RawMessage
	end, err := scanArray(raw, i, 0, func(v []byte) error {
		elems = append(elems, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if end = skipSpace(raw, end); end != len(raw) {
		return nil, scanError(raw, end, "after top-level value")
	}
	return elems, nil
}

// unquote decodes the JSON string s (quotes included, already scanned): directly when it
// holds no escape (without a copy when it is one of knownNames), else through encoding/json,
// which also decodes \u escapes and surrogate pairs (a lone surrogate becomes U+FFFD).
// Invalid UTF-8 is not checked here.
func unquote(s []byte, escaped bool) (string, error) {
	if !escaped {
		if k, ok := knownNames[string(s[1:len(s)-1])]; ok {
			return k, nil
		}
		return string(s[1 : len(s)-1]), nil
	}
	var out string
	if err := json.Unmarshal(s, &out); err != nil {
		return "", err
	}
	return out, nil
}

// needsCompact reports whether the JSON value v has whitespace outside its strings, which
// json.Compact would remove; without any, json.Compact gives v back unchanged.
func needsCompact(v []byte) bool {
	inString, escaped := false, false
	for _, c := range v {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case isSpace(c):
			return true
		}
	}
	return false
}
