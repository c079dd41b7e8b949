package keyslot

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
)

// clone returns a deep copy of m, sharing no map, slice or pointer with it: what parsing
// m's JSON text again gives, without the parse. An update changes the copy; m, which other
// readers of the image may hold, stays as it is.
func (m *metadata) clone() *metadata {
	c := &metadata{
		keyslots: make(map[int]*keyslotMeta, len(m.keyslots)),
		tokens:   make(map[int]json.RawMessage, len(m.tokens)),
		segments: make(map[int]*segmentMeta, len(m.segments)),
		digests:  make(map[int]*digestMeta, len(m.digests)),
		config:   m.config.clone(),
		extra:    cloneMembers(m.extra),
	}
	for id, ks := range m.keyslots {
		k := *ks
		k.kdf.Salt = bytes.Clone(ks.kdf.Salt)
		k.extra = cloneMembers(ks.extra)
		k.raw = cloneRaw(ks.raw)
		c.keyslots[id] = &k
	}
	for id, t := range m.tokens {
		c.tokens[id] = cloneRaw(t)
	}
	for id, s := range m.segments {
		sc := *s
		sc.extra = cloneMembers(s.extra)
		c.segments[id] = &sc
	}
	for id, d := range m.digests {
		dc := *d
		dc.keyslots = slices.Clone(d.keyslots)
		dc.segments = slices.Clone(d.segments)
		dc.salt = bytes.Clone(d.salt)
		dc.digest = bytes.Clone(d.digest)
		dc.extra = cloneMembers(d.extra)
		c.digests[id] = &dc
	}
	return c
}

// cloneTokens returns a copy of m for a change of its tokens only: a new tokens map, whose
// values it shares with m (a change replaces a token, never edits its bytes), and every
// other part of m shared. Neither m nor the copy may then be changed but for the copy's
// tokens map; every other update starts from a clone, which shares nothing.
func (m *metadata) cloneTokens() *metadata {
	c := *m
	c.tokens = make(map[int]json.RawMessage, len(m.tokens))
	maps.Copy(c.tokens, m.tokens)
	return &c
}

func (c configMeta) clone() configMeta {
	c.flags = slices.Clone(c.flags)
	c.mandatory = slices.Clone(c.mandatory)
	c.requirements = cloneRaw(c.requirements)
	c.extra = cloneMembers(c.extra)
	return c
}

func cloneRaw(r json.RawMessage) json.RawMessage {
	if r == nil {
		return nil
	}
	return bytes.Clone(r)
}

func cloneMembers(ms []member) []member {
	if ms == nil {
		return nil
	}
	out := slices.Clone(ms)
	for i := range out {
		out[i].value = cloneRaw(out[i].value)
	}
	return out
}
