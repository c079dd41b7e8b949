package keyslot

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// member is one name/value pair of a JSON object, kept in document order so that members this
// package does not interpret are written back where and as they were.
type member struct {
	name  string
	value json.RawMessage
}

// object is a decoded JSON object with typed, strict accessors. Its path names it in error
// messages ("keyslots.1.kdf"); it is only put together for one.
type object struct {
	parent  *object // the object this one is member name of, if any
	base    string  // without a parent: the path this one is member name of, if any
	name    string  // the last part of the path (all of it without parent and base)
	members []member
	arena   *parseArena // where objects parsed from this one's members are made, if any
	raw     []byte      // the object's text, without the whitespace around it
}

// objectAlone is an object parsed on its own, with its members' first backing array: most
// objects have at most 8.
type objectAlone struct {
	object
	small [8]member
}

// parseArena holds the objects, and their members, of one metadata parse: its dozen or so
// objects then take one allocation instead of one each. Nothing outside the parse points
// into it (object.rest copies the members it returns); what does not fit is allocated as
// before.
type parseArena struct {
	objs       [16]object
	mems       [64]member
	nobj, nmem int
	scratch    []byte // validateToken's buffer, kept across parses
}

// path names the object in error messages.
func (o *object) path() string {
	switch {
	case o.parent != nil:
		return o.parent.path() + "." + o.name
	case o.base != "":
		return o.base + "." + o.name
	}
	return o.name
}

// checkDepth refuses JSON text whose objects and arrays nest more than limit levels. It is
// one pass over the bytes, run before any decoding, so a deeply nested document costs no
// more than its length.
func checkDepth(path string, text []byte, limit int) error {
	depth := 0
	inString, escaped := false, false
	for _, c := range text {
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
		case c == '{' || c == '[':
			depth++
			if depth > limit {
				return fmt.Errorf("%w: %s: nested more than %d levels", ErrInvalidMetadata, path, limit)
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return nil
}

// parseObject decodes raw as one JSON object. Duplicate member names are refused. Member
// values are slices of raw, without the whitespace around them.
func parseObject(path string, raw []byte) (*object, error) {
	return parseObjectAt(nil, nil, "", path, raw)
}

// parseObjectAt is parseObject for the object at path parent's path (or base, without a
// parent) "." name; with neither, name is the path. It and the objects parsed from its
// members are made in arena, or in parent's arena, when there is one.
func parseObjectAt(arena *parseArena, parent *object, base, name string, raw []byte) (*object, error) {
	if arena == nil && parent != nil {
		arena = parent.arena
	}
	var o *object
	if arena != nil && arena.nobj < len(arena.objs) {
		o = &arena.objs[arena.nobj]
		arena.nobj++
		*o = object{parent: parent, base: base, name: name, arena: arena}
		o.members = arena.mems[arena.nmem:arena.nmem:len(arena.mems)]
	} else {
		a := &objectAlone{object: object{parent: parent, base: base, name: name, arena: arena}}
		o = &a.object
		o.members = a.small[:0]
	}
	raw = bytes.TrimSpace(raw)
	o.raw = raw
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("%w: %s: not a JSON object", ErrInvalidMetadata, o.path())
	}
	// A member of an object parsed here (parent, or base for eachEntry's) was checked with
	// it: its value is a slice of valid UTF-8 between ASCII bytes, so valid UTF-8 too.
	if parent == nil && base == "" && !utf8.Valid(raw) {
		return nil, fmt.Errorf("%w: %s: invalid UTF-8", ErrInvalidMetadata, o.path())
	}
	bad := func(err error) (*object, error) {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, o.path(), err)
	}
	i := skipSpace(raw, 1)
	if i < len(raw) && raw[i] == '}' {
		i++
	} else {
		for {
			if i >= len(raw) || raw[i] != '"' {
				return bad(scanError(raw, i, "looking for beginning of object key string"))
			}
			nameEnd, escaped, err := scanString(raw, i)
			if err != nil {
				return bad(err)
			}
			mname, err := memberName(raw[i:nameEnd], escaped)
			if err != nil {
				return bad(err)
			}
			j := skipSpace(raw, nameEnd)
			if j >= len(raw) || raw[j] != ':' {
				return bad(scanError(raw, j, "after object key"))
			}
			start := skipSpace(raw, j+1)
			end, err := scanValue(raw, start, 1)
			if err != nil {
				return bad(err)
			}
			for _, m := range o.members {
				if m.name == mname {
					return nil, fmt.Errorf("%w: %s: duplicate member %q", ErrInvalidMetadata, o.path(), mname)
				}
			}
			o.members = append(o.members, member{mname, raw[start:end]})
			i = skipSpace(raw, end)
			if i >= len(raw) {
				return bad(scanError(raw, i, ""))
			}
			if raw[i] == '}' {
				i++
				break
			}
			if raw[i] != ',' {
				return bad(scanError(raw, i, "after object key:value pair"))
			}
			i = skipSpace(raw, i+1)
		}
	}
	if i != len(raw) {
		return nil, fmt.Errorf("%w: %s: data after the object", ErrInvalidMetadata, o.path())
	}
	if a := o.arena; a != nil && len(o.members) > 0 && a.nmem < len(a.mems) && &a.mems[a.nmem] == &o.members[0] {
		a.nmem += len(o.members) // the members stayed in the arena: keep them
	}
	return o, nil
}

// memberName decodes a member name (a scanned JSON string, quotes included). The names
// LUKS2 defines come from knownNames, without a copy.
func memberName(raw []byte, escaped bool) (string, error) {
	if !escaped {
		if s, ok := knownNames[string(raw[1:len(raw)-1])]; ok {
			return s, nil
		}
	}
	return unquote(raw, escaped)
}

// knownNames holds the member names of LUKS2 metadata and crkvol's tokens, the object ids
// "0" to "31", and the common string values of LUKS2 metadata (types, hashes, ciphers), so
// that parsing them allocates nothing. It is never changed after package initialisation.
var knownNames = func() map[string]string {
	m := make(map[string]string)
	for _, s := range []string{
		"keyslots", "tokens", "segments", "digests", "config", "type", "key_size", "af",
		"stripes", "hash", "area", "offset", "size", "encryption", "kdf", "salt",
		"iterations", "time", "memory", "cpus", "priority", "iv_tweak", "sector_size", "flags",
		"digest", "json_size", "keyslots_size", "requirements", "mandatory",
		// crkvol-crk tokens (volume/token.go).
		"key_id", "key_crn", "key_version", "ciphertext", "wrapped_at", "volume_crn", "wipe",
		"data_size",
		// Values.
		"luks2", "luks1", "reencrypt", "raw", "crypt", "dynamic", "pbkdf2", "argon2i",
		"argon2id", "sha1", "sha256", "sha512", "aes-xts-plain64", "crkvol-crk",
	} {
		m[s] = s
	}
	for i := range 32 {
		s := strconv.Itoa(i)
		m[s] = s
	}
	return m
}()

func (o *object) errorf(name, format string, args ...any) error {
	return fmt.Errorf("%w: %s.%s: %s", ErrInvalidMetadata, o.path(), name, fmt.Sprintf(format, args...))
}

// get returns the raw value of a member.
func (o *object) get(name string) (json.RawMessage, bool) {
	for _, m := range o.members {
		if m.name == name {
			return m.value, true
		}
	}
	return nil, false
}

func (o *object) has(name string) bool {
	_, ok := o.get(name)
	return ok
}

func (o *object) required(name string) (json.RawMessage, error) {
	v, ok := o.get(name)
	if !ok {
		return nil, fmt.Errorf("%w: %s: missing member %q", ErrInvalidMetadata, o.path(), name)
	}
	return v, nil
}

// str returns a required string member.
func (o *object) str(name string) (string, error) {
	v, err := o.required(name)
	if err != nil {
		return "", err
	}
	if len(v) == 0 || v[0] != '"' {
		return "", o.errorf(name, "want a string")
	}
	end, escaped, err := scanString(v, 0)
	if err == nil && end != len(v) {
		err = scanError(v, end, "after top-level value")
	}
	if err != nil {
		return "", o.errorf(name, "%v", err)
	}
	s, err := unquote(v, escaped)
	if err != nil {
		return "", o.errorf(name, "%v", err)
	}
	return s, nil
}

// nonEmptyStr returns a required string member that must not be empty (cryptsetup's
// json_contains_string).
func (o *object) nonEmptyStr(name string) (string, error) {
	s, err := o.str(name)
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", o.errorf(name, "empty string")
	}
	return s, nil
}

// integer returns a required member that must be a plain JSON integer in [lo, hi].
func (o *object) integer(name string, lo, hi int64) (int64, error) {
	v, err := o.required(name)
	if err != nil {
		return 0, err
	}
	return o.parseInteger(name, v, lo, hi)
}

func (o *object) parseInteger(name string, v json.RawMessage, lo, hi int64) (int64, error) {
	if len(v) == 0 || !(v[0] == '-' || v[0] >= '0' && v[0] <= '9') {
		return 0, o.errorf(name, "want a JSON integer")
	}
	n, ok := smallInt(v)
	if !ok {
		var err error
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, o.errorf(name, "want a JSON integer, got %.20s", v)
		}
	}
	if n < lo || n > hi {
		return 0, o.errorf(name, "%d out of range [%d, %d]", n, lo, hi)
	}
	return n, nil
}

// smallInt parses v when it is -?[0-9]{1,18}, which strconv.ParseInt accepts, giving the same
// number, and which cannot overflow; ok is false for anything else.
func smallInt(v []byte) (n int64, ok bool) {
	d := v
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) == 0 || len(d) > 18 {
		return 0, false
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if len(d) < len(v) {
		n = -n
	}
	return n, true
}

// plainString returns the contents of v when v is exactly one JSON string with no escape,
// quote or control character inside: then str gives them back as they are. ok is false for
// anything else.
func plainString(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, false
	}
	d := v[1 : len(v)-1]
	for _, c := range d {
		if c < 0x20 || c == '"' || c == '\\' {
			return nil, false
		}
	}
	return d, true
}

// u64 returns a required member holding a uint64 as a decimal string, LUKS2's encoding of
// offsets and sizes.
func (o *object) u64(name string) (uint64, error) {
	if v, ok := o.get(name); ok {
		// Fast path: a plain string of 1 to 19 digits, which parseU64 accepts (it fits in
		// 64 bits), read without a copy. Anything else takes the full path and its errors.
		if d, ok := plainString(v); ok && len(d) > 0 && len(d) <= 19 {
			var n uint64
			for _, c := range d {
				if c < '0' || c > '9' {
					ok = false
					break
				}
				n = n*10 + uint64(c-'0')
			}
			if ok {
				return n, nil
			}
		}
	}
	s, err := o.str(name)
	if err != nil {
		return 0, err
	}
	return parseU64(s, func(format string, args ...any) error { return o.errorf(name, format, args...) })
}

func parseU64(s string, errf func(string, ...any) error) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, errf("want a decimal number string, got %q", truncate(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errf("want a decimal number string, got %q", truncate(s))
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errf("%q does not fit in 64 bits", truncate(s))
	}
	return n, nil
}

// obj returns a required member that is an object.
func (o *object) obj(name string) (*object, error) {
	v, err := o.required(name)
	if err != nil {
		return nil, err
	}
	return parseObjectAt(nil, o, "", name, v)
}

// strings returns a required member that is an array of strings.
func (o *object) strings(name string, maxLen int) ([]string, error) {
	v, err := o.required(name)
	if err != nil {
		return nil, err
	}
	if len(v) == 0 || v[0] != '[' {
		return nil, o.errorf(name, "want an array of strings")
	}
	// Elements are checked one by one: a null element is not a string.
	elems, err := arrayElems(v)
	if err != nil {
		return nil, o.errorf(name, "want an array of strings")
	}
	if len(elems) > maxLen {
		return nil, o.errorf(name, "%d entries, at most %d allowed", len(elems), maxLen)
	}
	out := make([]string, 0, len(elems))
	for _, e := range elems {
		if len(e) == 0 || e[0] != '"' {
			return nil, o.errorf(name, "want an array of strings")
		}
		end, escaped, err := scanString(e, 0)
		if err != nil || end != len(e) {
			return nil, o.errorf(name, "want an array of strings")
		}
		s, err := unquote(e, escaped)
		if err != nil {
			return nil, o.errorf(name, "want an array of strings")
		}
		out = append(out, s)
	}
	return out, nil
}

// ids returns a required array of object id strings, each in [0, max).
func (o *object) ids(name string, limit int) ([]int, error) {
	if v, ok := o.get(name); ok {
		if out, ok := plainIDs(v, limit); ok {
			return out, nil
		}
	}
	ss, err := o.strings(name, limit)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(ss))
	seen := make(map[int]bool, len(ss))
	for _, s := range ss {
		id, err := parseID(s, limit)
		if err != nil {
			return nil, o.errorf(name, "%v", err)
		}
		if seen[id] {
			return nil, o.errorf(name, "id %d listed twice", id)
		}
		seen[id] = true
		out = append(out, id)
	}
	return out, nil
}

// plainIDs is ids for an array of at most limit (up to 64) plain strings (plainString), each
// an id parseID accepts, none listed twice: the same ids, without a copy of each string. ok
// is false for anything else, which ids then takes through its full path and errors.
func plainIDs(v []byte, limit int) ([]int, bool) {
	if len(v) == 0 || v[0] != '[' || limit > 64 {
		return nil, false
	}
	var buf [64]int
	var seen uint64
	n := 0
	end, err := scanArray(v, 0, 0, func(e []byte) error {
		d, ok := plainString(e)
		if !ok || len(d) == 0 || len(d) > 3 || len(d) > 1 && d[0] == '0' || n >= limit {
			return errNotPlain
		}
		id := 0
		for _, c := range d {
			if c < '0' || c > '9' {
				return errNotPlain
			}
			id = id*10 + int(c-'0')
		}
		if id >= limit || seen&(1<<id) != 0 {
			return errNotPlain
		}
		seen |= 1 << id
		buf[n] = id
		n++
		return nil
	})
	if err != nil || skipSpace(v, end) != len(v) {
		return nil, false
	}
	out := make([]int, n)
	copy(out, buf[:n])
	return out, true
}

// errNotPlain stops plainIDs' scan; never returned.
var errNotPlain = errors.New("keyslot: not a plain id array")

// strictBase64 is standard base64 refusing non-zero padding bits; never changed.
var strictBase64 = base64.StdEncoding.Strict()

// b64 returns a required standard-base64 member decoding to between lo and hi bytes.
func (o *object) b64(name string, lo, hi int) ([]byte, error) {
	if v, ok := o.get(name); ok {
		// Fast path: a plain string decoding without error to lo to hi bytes, decoded
		// without a copy of the string, as DecodeString would (into a buffer of DecodedLen).
		if d, ok := plainString(v); ok && base64.StdEncoding.DecodedLen(len(d)) <= hi+3 {
			b := make([]byte, base64.StdEncoding.DecodedLen(len(d)))
			if n, err := strictBase64.Decode(b, d); err == nil && n >= lo && n <= hi {
				return b[:n], nil
			}
		}
	}
	s, err := o.str(name)
	if err != nil {
		return nil, err
	}
	if base64.StdEncoding.DecodedLen(len(s)) > hi+3 {
		return nil, o.errorf(name, "base64 value too long (%d characters)", len(s))
	}
	b, err := strictBase64.DecodeString(s)
	if err != nil {
		return nil, o.errorf(name, "invalid base64: %v", err)
	}
	if len(b) < lo || len(b) > hi {
		return nil, o.errorf(name, "decodes to %d bytes, want %d to %d", len(b), lo, hi)
	}
	return b, nil
}

// rest returns the members not named in known, in document order.
func (o *object) rest(known ...string) []member {
	var out []member
outer:
	for _, m := range o.members {
		for _, k := range known {
			if m.name == k {
				continue outer
			}
		}
		out = append(out, m)
	}
	return out
}

// parseID parses a LUKS2 object id: a decimal string in [0, limit).
func parseID(s string, limit int) (int, error) {
	if s == "" || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("invalid id %q", truncate(s))
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("invalid id %q", truncate(s))
		}
		n = n*10 + int(s[i]-'0')
	}
	if n >= limit {
		return 0, fmt.Errorf("id %d out of range [0, %d)", n, limit)
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// writer builds compact JSON in a fixed member order, as cryptsetup writes it: no spaces, no
// escaping of '/', and non-ASCII UTF-8 kept as is.
type writer struct {
	b     []byte
	depth int    // objects and arrays open
	first uint64 // bit i: the open level i (from 0, the outermost) has no member written yet
	deep  []bool // the same for levels from 64 on
}

func (w *writer) open(c byte) {
	w.b = append(w.b, c)
	if w.depth < 64 {
		w.first |= 1 << w.depth
	} else {
		w.deep = append(w.deep, true)
	}
	w.depth++
}

func (w *writer) close(c byte) {
	w.b = append(w.b, c)
	w.depth--
	if w.depth >= 64 {
		w.deep = w.deep[:len(w.deep)-1]
	}
}

func (w *writer) sep() {
	if w.depth == 0 {
		return
	}
	l := w.depth - 1
	if l >= 64 {
		if !w.deep[l-64] {
			w.b = append(w.b, ',')
		}
		w.deep[l-64] = false
		return
	}
	if w.first&(1<<l) == 0 {
		w.b = append(w.b, ',')
	}
	w.first &^= 1 << l
}

func (w *writer) key(name string) {
	w.sep()
	w.b = appendString(w.b, name)
	w.b = append(w.b, ':')
}

func (w *writer) keyObj(name string) { w.key(name); w.open('{') }
func (w *writer) keyArr(name string) { w.key(name); w.open('[') }

func (w *writer) str(name, v string) { w.key(name); w.b = appendString(w.b, v) }

func (w *writer) u64(name string, v uint64) {
	w.key(name)
	w.b = append(w.b, '"')
	w.b = strconv.AppendUint(w.b, v, 10)
	w.b = append(w.b, '"')
}

func (w *writer) int(name string, v int64) { w.key(name); w.b = strconv.AppendInt(w.b, v, 10) }

// b64 writes v in standard base64, whose characters need no escape in a JSON string.
func (w *writer) b64(name string, v []byte) {
	w.key(name)
	w.b = append(w.b, '"')
	w.b = base64.StdEncoding.AppendEncode(w.b, v)
	w.b = append(w.b, '"')
}

func (w *writer) raw(name string, v json.RawMessage) {
	w.key(name)
	if !needsCompact(v) {
		// What json.Compact would give back: the value as it is.
		w.b = append(w.b, v...)
		return
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, v); err != nil {
		// Values reach the writer only after parsing; keep them as they are.
		w.b = append(w.b, v...)
		return
	}
	w.b = append(w.b, buf.Bytes()...)
}

func (w *writer) members(ms []member) {
	for _, m := range ms {
		w.raw(m.name, m.value)
	}
}

// idArray writes an array of id strings.
func (w *writer) idArray(name string, ids []int) {
	w.keyArr(name)
	for _, id := range ids {
		w.sep()
		w.b = append(w.b, '"')
		w.b = strconv.AppendInt(w.b, int64(id), 10)
		w.b = append(w.b, '"')
	}
	w.close(']')
}

// strArray writes an array of strings.
func (w *writer) strArray(name string, ss []string) {
	w.keyArr(name)
	for _, s := range ss {
		w.sep()
		w.b = appendString(w.b, s)
	}
	w.close(']')
}

// canonical re-encodes a JSON value the way cryptsetup's json-c writes it back, so that a
// token stored here comes out of `cryptsetup token export` byte for byte: compact, member
// order kept, string escapes decoded and re-encoded minimally ('/' and non-ASCII as is).
// Numbers must be integers that json-c keeps exactly (within int64, or up to 2^64-1);
// fractions and exponents are refused because json-c rewrites them.
func canonical(path string, raw json.RawMessage, depth int) ([]byte, error) {
	var w writer
	if err := canonicalTo(&w, &canonPath{name: path}, raw, depth); err != nil {
		return nil, err
	}
	return w.b, nil
}

// canonPath names a value in canonical's errors; it is only put together for one.
type canonPath struct {
	parent *canonPath // nil at the root, whose path is name
	name   string     // a member's name (when not elem)
	index  int        // an array element's index (when elem)
	elem   bool
}

func (p *canonPath) String() string {
	switch {
	case p.parent == nil:
		return p.name
	case p.elem:
		return fmt.Sprintf("%s[%d]", p.parent.String(), p.index)
	}
	return p.parent.String() + "." + p.name
}

// canonicalTo appends canonical's result for raw, at path p, to w. On error, what it
// appended is to be dropped.
func canonicalTo(w *writer, p *canonPath, raw json.RawMessage, depth int) error {
	if depth > 64 {
		return fmt.Errorf("%w: %s: nested more than 64 levels", ErrInvalidMetadata, p)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return fmt.Errorf("%w: %s: empty value", ErrInvalidMetadata, p)
	}
	switch c := raw[0]; {
	case c == '{':
		o, err := parseObject("", raw)
		if err != nil {
			// The same parse again, for the error with the path in it.
			_, err = parseObject(p.String(), raw)
			return err
		}
		w.open('{')
		for _, m := range o.members {
			w.key(m.name)
			if err := canonicalTo(w, &canonPath{parent: p, name: m.name}, m.value, depth+1); err != nil {
				return err
			}
		}
		w.close('}')
		return nil
	case c == '[':
		// The whole array is checked before any element (as arrayElems does).
		end, err := scanArray(raw, 0, 0, nil)
		if err == nil {
			if end = skipSpace(raw, end); end != len(raw) {
				err = scanError(raw, end, "after top-level value")
			}
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, p, err)
		}
		w.open('[')
		i := 0
		_, err = scanArray(raw, 0, 0, func(e []byte) error {
			w.sep()
			err := canonicalTo(w, &canonPath{parent: p, index: i, elem: true}, e, depth+1)
			i++
			return err
		})
		if err != nil {
			return err
		}
		w.close(']')
		return nil
	case c == '"':
		end, escaped, err := scanString(raw, 0)
		if err == nil && end != len(raw) {
			err = scanError(raw, end, "after top-level value")
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, p, err)
		}
		if !escaped {
			// As below, without a copy: the string is the bytes between the quotes.
			s := raw[1 : len(raw)-1]
			if !utf8.Valid(s) || bytes.ContainsRune(s, utf8.RuneError) {
				return fmt.Errorf("%w: %s: invalid UTF-8", ErrInvalidMetadata, p)
			}
			w.b = appendString(w.b, s)
			return nil
		}
		str, err := unquote(raw, escaped)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, p, err)
		}
		if !utf8.ValidString(str) || strings.ContainsRune(str, utf8.RuneError) {
			return fmt.Errorf("%w: %s: invalid UTF-8", ErrInvalidMetadata, p)
		}
		w.b = appendString(w.b, str)
		return nil
	case c == '-' || c >= '0' && c <= '9':
		if _, ok := smallInt(raw); !ok {
			// smallInt's numbers (-?[0-9]{1,18}) all pass ParseInt.
			text := string(raw)
			if _, err := strconv.ParseInt(text, 10, 64); err != nil {
				if _, err := strconv.ParseUint(text, 10, 64); err != nil {
					return fmt.Errorf("%w: %s: number %.30s must be an integer within 64 bits", ErrInvalidMetadata, p, text)
				}
			}
		}
		if string(raw) == "-0" {
			w.b = append(w.b, '0')
			return nil
		}
		w.b = append(w.b, raw...)
		return nil
	case bytes.Equal(raw, []byte("true")), bytes.Equal(raw, []byte("false")), bytes.Equal(raw, []byte("null")):
		w.b = append(w.b, raw...)
		return nil
	}
	return fmt.Errorf("%w: %s: invalid JSON value", ErrInvalidMetadata, p)
}

// appendString appends s as a JSON string: quotes, backslashes and control characters are
// escaped, everything else (including '/' and non-ASCII) is written as is.
func appendString[S ~string | ~[]byte](b []byte, s S) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
