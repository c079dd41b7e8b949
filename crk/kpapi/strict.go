package kpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
)

// checkMembers refuses a JSON text in which an object has the same member twice. encoding/json
// keeps the last of duplicate members and matches member names to struct fields without regard
// to letter case, so {"plaintext":A,"Plaintext":B} would silently wrap B; names are therefore
// compared after Unicode simple case folding, as the decoder compares them. The text must
// already be known to be one JSON value; a syntax error is reported as such.
func checkMembers(raw []byte) error {
	if unique, decided := membersUnique(raw); decided && unique {
		return nil // the common case, decided without the decoder's tokens (fastjson.go)
	}
	return checkMembersTokens(raw)
}

// checkMembersTokens is checkMembers by the JSON decoder's tokens: it decides every text and
// words every error.
func checkMembersTokens(raw []byte) error {
	type frame struct {
		object bool
		seen   map[string]bool // folded member names of an object
		name   string          // the member being read (objects)
		index  int             // the element being read (arrays)
		key    bool            // the next token of an object is a member name
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var stack []*frame
	path := func() string {
		var b strings.Builder
		for i, f := range stack[:len(stack)-1] {
			if f.object {
				if i > 0 {
					b.WriteByte('.')
				}
				b.WriteString(short(f.name))
			} else {
				b.WriteString("[" + strconv.Itoa(f.index) + "]")
			}
		}
		return b.String()
	}
	// value marks that a complete value was read inside the innermost frame.
	value := func() {
		if len(stack) == 0 {
			return
		}
		if f := stack[len(stack)-1]; f.object {
			f.key = true
		} else {
			f.index++
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return badRequest("BAD_BODY_ERR", "invalid JSON body: "+err.Error(), "")
		}
		if len(stack) > 0 {
			if f := stack[len(stack)-1]; f.object && f.key {
				if name, ok := tok.(string); ok {
					folded := foldName(name)
					if f.seen[folded] {
						msg := fmt.Sprintf("invalid JSON body: duplicate member %q", short(name))
						if p := path(); p != "" {
							msg += " in " + p
						}
						return badRequest("BAD_BODY_ERR", msg, name)
					}
					f.seen[folded], f.name, f.key = true, name, false
					continue
				}
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, seen: map[string]bool{}, key: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			value()
		default:
			value()
		}
	}
}

// short cuts a member name from the request to at most 64 bytes for an error message.
func short(s string) string {
	if len(s) <= 64 {
		return s
	}
	return strings.ToValidUTF8(s[:64], "") + "..."
}

// foldName maps a member name to one representative of its case-folding class, so that two
// names the JSON decoder would match to the same field map to the same string (K, k and the
// Kelvin sign K alike).
func foldName(s string) string {
	var b strings.Builder
	for _, r := range s {
		lo := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < lo {
				lo = f
			}
		}
		b.WriteRune(lo)
	}
	return b.String()
}

// aadList is the aad member of a key action: an array of strings. A null element is refused
// rather than decoded as "" (which would make ["a",null] and ["a",""] the same AAD); a null
// or absent member means no AAD.
type aadList []string

// UnmarshalJSON implements json.Unmarshaler.
func (a *aadList) UnmarshalJSON(b []byte) error {
	if string(bytes.TrimSpace(b)) == "null" {
		*a = nil
		return nil
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(b, &elems); err != nil {
		return badRequest("BAD_BODY_ERR", "the field \"aad\" must be an array of strings", "aad")
	}
	out := make(aadList, 0, len(elems))
	for i, e := range elems {
		if string(bytes.TrimSpace(e)) == "null" {
			return badRequest("INVALID_FIELD_ERR", fmt.Sprintf("the field \"aad\" must be an array of strings: aad[%d] is null", i), "aad")
		}
		var s string
		if err := json.Unmarshal(e, &s); err != nil {
			return badRequest("BAD_BODY_ERR", fmt.Sprintf("the field \"aad\" must be an array of strings: aad[%d] is not a string", i), "aad")
		}
		out = append(out, s)
	}
	*a = out
	return nil
}
