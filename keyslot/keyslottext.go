package keyslot

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// KeyslotText is the JSON text, byte for byte as stored in the header copy the Image was
// read from, of what opening one LUKS2 keyslot depends on. Each slice is exactly what
// encoding/json gives as a json.RawMessage for that member when the copy's JSON text is
// unmarshalled into map[string]json.RawMessage (and the section into another such map): the
// value's bytes from its first to its last, without the whitespace around it.
type KeyslotText struct {
	// SeqID is the sequence number of the header copy the text is from: [Image.SeqID] at
	// the time of the call.
	SeqID uint64
	// Keyslot is the keyslot's object.
	Keyslot []byte
	// Segment is segment "0"'s object.
	Segment []byte
	// Digests lists every digest whose "keyslots" lists the keyslot, ascending by id
	// (string order).
	Digests []DigestText
}

// DigestText is one digest object of a KeyslotText, with its id.
type DigestText struct {
	ID   string
	Text []byte
}

// KeyslotText returns the text of keyslot slot in the metadata the Image holds: that of the
// header copy it was last opened, reloaded or updated from (the copy in use: the primary
// when both are good and current), whose sequence number is the result's SeqID. It fails
// with an error wrapping [ErrKeyslotNotFound] when the image has no luks2 keyslot slot, and
// with one wrapping [ErrInvalidMetadata] when it has no segment 0 or no digest bound to the
// keyslot. The slices alias the Image's retained text and must not be modified; they stay
// valid after later updates.
func (img *Image) KeyslotText(slot int) (KeyslotText, error) {
	st := img.snapshot()
	kt, err := keyslotText(st.text, st.meta, slot)
	kt.SeqID = st.bin.seqID
	return kt, err
}

// keyslotText finds keyslot slot's text in text, the JSON text m was parsed from. The
// digests bound to the keyslot are taken from m; their objects, the keyslot's and the
// segment's, from text.
func keyslotText(text []byte, m *metadata, slot int) (KeyslotText, error) {
	var kt KeyslotText
	if ks := m.keyslots[slot]; slot < 0 || slot >= MaxKeyslots || ks == nil || ks.typ != keyslotLUKS2 {
		return kt, fmt.Errorf("%w: no luks2 keyslot %d", ErrKeyslotNotFound, slot)
	}
	if m.segments[0] == nil {
		return kt, fmt.Errorf("%w: no segment 0", ErrInvalidMetadata)
	}
	bound := 0
	for _, d := range m.digests {
		if slices.Contains(d.keyslots, slot) {
			bound++
		}
	}
	if bound == 0 {
		return kt, fmt.Errorf("%w: no digest is bound to keyslot %d", ErrInvalidMetadata, slot)
	}
	kt.Digests = make([]DigestText, 0, bound)
	slotName := strconv.Itoa(slot)
	top := members(text)
	for top.next() {
		var section memberIter
		switch {
		case top.nameIs("keyslots"):
			section = members(top.value)
			for section.next() {
				if section.nameIs(slotName) {
					kt.Keyslot = section.value
				}
			}
		case top.nameIs("segments"):
			section = members(top.value)
			for section.next() {
				if section.nameIs("0") {
					kt.Segment = section.value
				}
			}
		case top.nameIs("digests"):
			section = members(top.value)
			for section.next() {
				id, err := memberName(section.name, section.escaped)
				if err != nil {
					continue
				}
				n, err := parseID(id, maxDigests)
				if d := m.digests[n]; err == nil && d != nil && slices.Contains(d.keyslots, slot) {
					kt.Digests = append(kt.Digests, DigestText{ID: id, Text: section.value})
				}
			}
		default:
			continue
		}
		if section.err != nil {
			return KeyslotText{}, fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, top.name, section.err)
		}
	}
	switch {
	case top.err != nil:
		return KeyslotText{}, fmt.Errorf("%w: %v", ErrInvalidMetadata, top.err)
	case kt.Keyslot == nil:
		return KeyslotText{}, fmt.Errorf("%w: keyslot %d is not in the metadata text", ErrInvalidMetadata, slot)
	case kt.Segment == nil:
		return KeyslotText{}, fmt.Errorf("%w: segment 0 is not in the metadata text", ErrInvalidMetadata)
	case len(kt.Digests) != bound:
		return KeyslotText{}, fmt.Errorf("%w: %d digests bound to keyslot %d, %d in the metadata text", ErrInvalidMetadata, bound, slot, len(kt.Digests))
	}
	slices.SortFunc(kt.Digests, func(a, b DigestText) int { return strings.Compare(a.ID, b.ID) })
	return kt, nil
}

// memberIter walks the members of one JSON object without decoding them: after each next
// that returns true, name is the member's name as in the text (quotes included, escaped
// telling whether it holds an escape) and value its value, without the whitespace around
// it. A scan error stops the walk and is kept in err.
type memberIter struct {
	b       []byte
	i       int
	started bool
	name    []byte
	escaped bool
	value   []byte
	err     error
}

// members returns an iterator over the members of the JSON object obj (surrounding
// whitespace allowed).
func members(obj []byte) memberIter { return memberIter{b: obj} }

// next advances to the next member; false at the end of the object or on an error.
func (it *memberIter) next() bool {
	b := it.b
	if it.err != nil || it.i < 0 {
		return false
	}
	i := it.i
	if !it.started {
		it.started = true
		i = skipSpace(b, 0)
		if i >= len(b) || b[i] != '{' {
			return it.fail(scanError(b, i, "looking for beginning of object"))
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			it.i = -1
			return false
		}
	} else {
		i = skipSpace(b, i)
		if i >= len(b) {
			return it.fail(scanError(b, i, ""))
		}
		switch b[i] {
		case '}':
			it.i = -1
			return false
		case ',':
			i = skipSpace(b, i+1)
		default:
			return it.fail(scanError(b, i, "after object key:value pair"))
		}
	}
	if i >= len(b) || b[i] != '"' {
		return it.fail(scanError(b, i, "looking for beginning of object key string"))
	}
	nameEnd, escaped, err := scanString(b, i)
	if err != nil {
		return it.fail(err)
	}
	j := skipSpace(b, nameEnd)
	if j >= len(b) || b[j] != ':' {
		return it.fail(scanError(b, j, "after object key"))
	}
	start := skipSpace(b, j+1)
	end, err := scanValue(b, start, 1)
	if err != nil {
		return it.fail(err)
	}
	it.name, it.escaped, it.value, it.i = b[i:nameEnd], escaped, b[start:end:end], end
	return true
}

func (it *memberIter) fail(err error) bool {
	it.err = err
	return false
}

// nameIs reports whether the current member's decoded name is s.
func (it *memberIter) nameIs(s string) bool {
	if !it.escaped {
		return string(it.name[1:len(it.name)-1]) == s
	}
	n, err := unquote(it.name, true)
	return err == nil && n == s
}
