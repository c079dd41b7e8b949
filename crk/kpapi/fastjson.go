package kpapi

import (
	"encoding/json"
	"net/http"
)

// The wrap and unwrap requests are the API's hottest path: their bodies are small objects of
// a few ASCII members, and their answers a few base64 and UUID strings. The functions here
// decide those common cases without encoding/json's reflection and token allocations, and
// hand anything else to the general code, whose results they must equal wherever they decide
// (FuzzMembersUnique, TestAppendActionAnswer).

// Limits of membersUnique's fast scan: deeper nesting, larger objects or longer texts are
// left to checkMembers' general path (the fast scan compares each member name with the
// object's earlier ones, so its work must stay small).
const (
	fastMaxDepth   = 8
	fastMaxMembers = 16
	fastMaxNames   = 64
)

// membersUnique decides, when it can cheaply, whether the JSON text raw is one valid JSON
// value in which no object has two members whose names are the same after case folding, the
// condition checkMembers enforces: decided is false when raw is not valid JSON, has a member
// name with an escape or a non-ASCII byte (whose folding needs Unicode's tables: the Kelvin
// sign K folds with k), nests deeper than fastMaxDepth, or has an object of more than
// fastMaxMembers members; checkMembers then decides (and words the error). For names of
// ASCII letters, digits and punctuation without escapes, Unicode simple case folding is
// ASCII case folding, so two names fold alike exactly when they are equal ignoring ASCII
// case.
func membersUnique(raw []byte) (unique, decided bool) {
	if !json.Valid(raw) {
		return false, false
	}
	var (
		marks [fastMaxDepth]int    // per open object or array: where its names start in names; -1 for an array
		names [fastMaxNames][]byte // the member names of the open objects, innermost last
		depth int
		n     int // names in use
	)
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '{', '[':
			if depth == fastMaxDepth {
				return false, false
			}
			marks[depth] = n
			if c == '[' {
				marks[depth] = -1
			}
			depth++
		case '}', ']':
			depth--
			if marks[depth] >= 0 {
				n = marks[depth]
			}
		case '"':
			// A string: find its end (raw is valid, so it has one), then whether a ':'
			// follows, which makes it a member name of the innermost (object) frame.
			start, plain := i+1, true
			j := start
			for ; raw[j] != '"'; j++ {
				if raw[j] == '\\' {
					plain = false
					j++ // the escaped byte; a \uXXXX's digits are not quotes either
				} else if raw[j] >= 0x80 {
					plain = false
				}
			}
			name := raw[start:j]
			i = j
			k := j + 1
			for k < len(raw) && (raw[k] == ' ' || raw[k] == '\t' || raw[k] == '\n' || raw[k] == '\r') {
				k++
			}
			if k == len(raw) || raw[k] != ':' {
				continue // a string value
			}
			if !plain {
				return false, false
			}
			mark := marks[depth-1]
			if n-mark == fastMaxMembers || n == fastMaxNames {
				return false, false
			}
			for _, seen := range names[mark:n] {
				if equalFoldASCII(seen, name) {
					return false, true
				}
			}
			names[n] = name
			n++
		}
	}
	return true, true
}

// equalFoldASCII reports whether a and b, both ASCII, are equal ignoring ASCII letter case.
func equalFoldASCII(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// appendJSON appends the answer as json.NewEncoder(w).Encode(a) writes it (members in field
// order, empty ones left out, a newline after the object) and reports true, or reports false
// when a string needs escaping (encoding/json then writes it): base64 texts, key version
// ids and RFC 3339 dates never do.
func (a *actionAnswer) appendJSON(b []byte) ([]byte, bool) {
	ok := true
	str := func(name, s string, comma bool) {
		if comma {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":"`...)
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				ok = false
				return
			}
		}
		b = append(b, s...)
		b = append(b, '"')
	}
	version := func(name string, v *KeyVersion, comma bool) {
		if comma {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":{`...)
		str("id", v.ID, false)
		if v.CreationDate != "" {
			str("creationDate", v.CreationDate, true)
		}
		if v.Destroyed != nil {
			ok = false // not part of an action's answer; left to encoding/json
		}
		b = append(b, '}')
	}
	b = append(b, '{')
	comma := false
	if a.Ciphertext != "" {
		str("ciphertext", a.Ciphertext, comma)
		comma = true
	}
	if a.KeyVersion != nil {
		version("keyVersion", a.KeyVersion, comma)
		comma = true
	}
	if a.Plaintext != "" {
		str("plaintext", a.Plaintext, comma)
		comma = true
	}
	if a.RewrappedKeyVersion != nil {
		version("rewrappedKeyVersion", a.RewrappedKeyVersion, comma)
	}
	b = append(b, '}', '\n')
	return b, ok
}

// sizeHint is the length of a's answer as appendJSON writes it, or a little more: the
// buffer is allocated once, at its size.
func (a *actionAnswer) sizeHint() int {
	n := len(`{"ciphertext":"","keyVersion":{},"plaintext":"","rewrappedKeyVersion":{}}`) + 1
	n += len(a.Ciphertext) + len(a.Plaintext)
	for _, v := range []*KeyVersion{a.KeyVersion, a.RewrappedKeyVersion} {
		if v != nil {
			n += len(`"id":"","creationDate":""`) + len(v.ID) + len(v.CreationDate) + 1
		}
	}
	return n
}

// writeAnswer writes a key action's answer as writeJSON would, without reflection when
// appendJSON can; the buffer, which holds a plaintext DEK for an unwrap, is cleared after.
func writeAnswer(w http.ResponseWriter, status int, a *actionAnswer) {
	b, ok := a.appendJSON(make([]byte, 0, a.sizeHint()))
	if !ok {
		clear(b)
		writeJSON(w, status, a)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
	clear(b)
}

// decodeAction reads a key action's body into body as decode does (the same value, the same
// errors), deciding the common body of a wrap, unwrap or rewrap (decodeActionFast) without
// the decoder's reflection.
func decodeAction(r *http.Request, body *actionBody) error {
	t, err := readBodyText(r)
	if err != nil || t == nil {
		return err
	}
	if decodeActionFast(t, body) {
		return nil
	}
	*body = actionBody{} // anything the fast parse set before it gave up
	return decodeJSON(t, body, false)
}

// decodeActionFast parses t into body and reports true when t is a JSON object whose members
// are only plaintext, ciphertext and payload (strings or null) and aad (an array of strings,
// or null), each at most once and named in lower case, every string of printable ASCII
// without escapes. It reports false for anything else, with body in an unspecified state:
// decodeJSON then decides, as for any other body. Where it decides, body is what decodeJSON
// gives (FuzzDecodeActionFast).
func decodeActionFast(t []byte, body *actionBody) bool {
	i := 0
	ws := func() {
		for i < len(t) && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r') {
			i++
		}
	}
	// str reads a string of printable ASCII without escapes at i.
	str := func() ([]byte, bool) {
		if i >= len(t) || t[i] != '"' {
			return nil, false
		}
		start := i + 1
		for j := start; j < len(t); j++ {
			switch c := t[j]; {
			case c == '"':
				i = j + 1
				return t[start:j], true
			case c < 0x20 || c >= 0x7f || c == '\\':
				return nil, false
			}
		}
		return nil, false
	}
	null := func() bool {
		if len(t)-i >= 4 && string(t[i:i+4]) == "null" {
			i += 4
			return true
		}
		return false
	}
	// optString reads a string or null into *p.
	optString := func(p **string) bool {
		if null() {
			return true
		}
		s, ok := str()
		if !ok {
			return false
		}
		v := string(s)
		*p = &v
		return true
	}
	aad := func() bool {
		if null() {
			return true
		}
		if i >= len(t) || t[i] != '[' {
			return false
		}
		i++
		list := aadList{}
		ws()
		if i < len(t) && t[i] == ']' {
			i++
			body.AAD = list
			return true
		}
		for {
			ws()
			s, ok := str()
			if !ok {
				return false
			}
			list = append(list, string(s))
			ws()
			if i >= len(t) {
				return false
			}
			if t[i] == ']' {
				i++
				body.AAD = list
				return true
			}
			if t[i] != ',' {
				return false
			}
			i++
		}
	}
	ws()
	if i >= len(t) || t[i] != '{' {
		return false
	}
	i++
	var seen [4]bool
	ws()
	if i < len(t) && t[i] == '}' {
		i++
		ws()
		return i == len(t)
	}
	for {
		ws()
		name, ok := str()
		if !ok {
			return false
		}
		ws()
		if i >= len(t) || t[i] != ':' {
			return false
		}
		i++
		ws()
		var member int
		switch string(name) {
		case "plaintext":
			member, ok = 0, optString(&body.Plaintext)
		case "ciphertext":
			member, ok = 1, optString(&body.Ciphertext)
		case "payload":
			member, ok = 2, optString(&body.Payload)
		case "aad":
			member, ok = 3, aad()
		default:
			return false
		}
		if !ok || seen[member] {
			return false
		}
		seen[member] = true
		ws()
		if i >= len(t) {
			return false
		}
		switch t[i] {
		case ',':
			i++
		case '}':
			i++
			ws()
			return i == len(t)
		default:
			return false
		}
	}
}
