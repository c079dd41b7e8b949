package keyslot

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// Limits of the LUKS2 format (cryptsetup lib/luks2/luks2.h).
const (
	MaxKeyslots = 32 // keyslot ids 0-31
	MaxTokens   = 32 // token ids 0-31
	maxSegments = 32
	maxDigests  = 8

	// MaxJSONDepth is the deepest nesting of objects and arrays LUKS2 JSON metadata may
	// have, the top-level object being level 1: json-c's JSON_TOKENER_DEFAULT_DEPTH, the
	// limit of the json_tokener_new that cryptsetup 2.6.1 reads metadata with (luksDump
	// opens 32 levels and refuses 33). Deeper metadata is refused before it is decoded.
	MaxJSONDepth = 32

	afStripes       = 4000      // cryptsetup always splits into 4000 stripes
	maxKeyslotsSize = 128 << 20 // config.keyslots_size upper bound
	maxKeySize      = 512       // bytes; LUKS2 key_size upper bound
)

// Keyslot types.
const (
	keyslotLUKS2     = "luks2"
	keyslotReencrypt = "reencrypt"
)

// area is where a keyslot's encrypted, AF-split key material lives.
type area struct {
	offset, size uint64
	encryption   string
	keySize      int
}

// keyslotMeta is one entry of the "keyslots" object.
type keyslotMeta struct {
	typ         string
	keySize     int
	afHash      string
	area        area
	kdf         KDF
	priority    Priority
	hasPriority bool
	extra       []member
	raw         json.RawMessage // whole object, kept for "reencrypt" keyslots only
}

// segmentMeta is one entry of the "segments" object.
type segmentMeta struct {
	typ        string
	offset     uint64
	size       uint64 // 0 with dynamic
	dynamic    bool
	ivTweak    uint64
	encryption string
	sectorSize int
	extra      []member
}

// digestMeta is one entry of the "digests" object.
type digestMeta struct {
	typ        string
	keyslots   []int
	segments   []int
	hash       string
	iterations int
	salt       []byte
	digest     []byte
	extra      []member
}

// configMeta is the "config" object.
type configMeta struct {
	jsonSize     uint64
	keyslotsSize uint64
	flags        []string
	hasFlags     bool
	mandatory    []string // requirements.mandatory
	requirements json.RawMessage
	extra        []member
}

// metadata is the LUKS2 JSON metadata.
type metadata struct {
	keyslots map[int]*keyslotMeta
	tokens   map[int]json.RawMessage // compact JSON objects, as given
	segments map[int]*segmentMeta
	digests  map[int]*digestMeta
	config   configMeta
	extra    []member
}

// parseMetadata decodes and validates the JSON text of a header whose hdr_size is hdrSize.
func parseMetadata(text []byte, hdrSize uint64) (*metadata, error) {
	return parseMetadataIn(text, hdrSize, nil)
}

// parseMetadataIn is parseMetadata with its parseArena borrowed from bufs (when not nil)
// and given back when it returns: nothing it returns points into the arena.
func parseMetadataIn(text []byte, hdrSize uint64, bufs *Buffers) (*metadata, error) {
	if err := checkDepth("metadata", text, MaxJSONDepth); err != nil {
		return nil, err
	}
	arena := bufs.arena()
	defer bufs.putArena(arena)
	top, err := parseObjectAt(arena, nil, "", "metadata", text)
	if err != nil {
		return nil, err
	}
	m := &metadata{
		keyslots: make(map[int]*keyslotMeta),
		tokens:   make(map[int]json.RawMessage),
		segments: make(map[int]*segmentMeta),
		digests:  make(map[int]*digestMeta),
		extra:    top.rest("keyslots", "tokens", "segments", "digests", "config"),
	}
	if err := eachEntry(top, "keyslots", MaxKeyslots, func(id int, o *object) error {
		ks, err := parseKeyslot(o)
		m.keyslots[id] = ks
		return err
	}); err != nil {
		return nil, err
	}
	// The keyslots each token names, for validate: what tokenKeyslots would read again
	// from the token's stored form, which has the same members.
	var tokenSlots [MaxTokens][]int
	if err := eachEntry(top, "tokens", MaxTokens, func(id int, o *object) error {
		raw, slots, err := validateToken(o)
		m.tokens[id], tokenSlots[id] = raw, slots
		return err
	}); err != nil {
		return nil, err
	}
	// Segment ids are checked before any segment's type: a gap (cryptsetup's "gap in
	// backup segments") makes the header invalid whatever the types, and is reported as
	// such rather than as an unsupported segment type.
	// The segments are parsed as objects once; their types and fields are read after the
	// id check, in document order.
	type segEntry struct {
		id int
		o  *object
	}
	var segBuf [maxSegments]segEntry
	var idBuf [maxSegments]int
	segs, segIDs := segBuf[:0], idBuf[:0]
	if err := eachEntry(top, "segments", maxSegments, func(id int, o *object) error {
		segs, segIDs = append(segs, segEntry{id, o}), append(segIDs, id)
		return nil
	}); err != nil {
		return nil, err
	}
	slices.Sort(segIDs)
	for i, id := range segIDs {
		if id != i {
			return nil, fmt.Errorf("%w: segment ids are not contiguous from 0 (missing %d)", ErrInvalidMetadata, i)
		}
	}
	for _, e := range segs {
		s, err := parseSegment(e.o)
		m.segments[e.id] = s
		if err != nil {
			return nil, err
		}
	}
	if err := eachEntry(top, "digests", maxDigests, func(id int, o *object) error {
		d, err := parseDigest(o)
		m.digests[id] = d
		return err
	}); err != nil {
		return nil, err
	}
	cfg, err := top.obj("config")
	if err != nil {
		return nil, err
	}
	if m.config, err = parseConfig(cfg); err != nil {
		return nil, err
	}
	if err := m.validate(hdrSize, &tokenSlots); err != nil {
		return nil, err
	}
	return m, nil
}

// eachEntry calls fn for each member of the object top.name, whose names must be ids.
func eachEntry(top *object, name string, limit int, fn func(id int, o *object) error) error {
	section, err := top.obj(name)
	if err != nil {
		return err
	}
	for _, mem := range section.members {
		id, err := parseID(mem.name, limit)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, name, err)
		}
		o, err := parseObjectAt(top.arena, nil, name, mem.name, mem.value)
		if err != nil {
			return err
		}
		if err := fn(id, o); err != nil {
			return err
		}
	}
	return nil
}

func parseKeyslot(o *object) (*keyslotMeta, error) {
	typ, err := o.str("type")
	if err != nil {
		return nil, err
	}
	ks := &keyslotMeta{typ: typ}
	switch typ {
	case keyslotLUKS2:
	case keyslotReencrypt:
		// Online reencryption state; never used to unlock. Kept as it is.
		var buf bytes.Buffer
		if err := json.Compact(&buf, marshalObject(o)); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidMetadata, o.path(), err)
		}
		ks.raw = buf.Bytes()
		return ks, nil
	default:
		return nil, fmt.Errorf("%w: %s: keyslot type %q", ErrUnsupported, o.path(), truncate(typ))
	}
	n, err := o.integer("key_size", 1, maxKeySize)
	if err != nil {
		return nil, err
	}
	ks.keySize = int(n)

	af, err := o.obj("af")
	if err != nil {
		return nil, err
	}
	if t, err := af.str("type"); err != nil {
		return nil, err
	} else if t != "luks1" {
		return nil, fmt.Errorf("%w: %s: AF type %q", ErrUnsupported, af.path(), truncate(t))
	}
	if _, err := af.integer("stripes", afStripes, afStripes); err != nil {
		return nil, err
	}
	if ks.afHash, err = af.str("hash"); err != nil {
		return nil, err
	}
	if _, err := hashByName(ks.afHash); err != nil {
		return nil, fmt.Errorf("%s: %w", af.path(), err)
	}

	ar, err := o.obj("area")
	if err != nil {
		return nil, err
	}
	if t, err := ar.str("type"); err != nil {
		return nil, err
	} else if t != "raw" {
		return nil, fmt.Errorf("%w: %s: area type %q", ErrUnsupported, ar.path(), truncate(t))
	}
	if ks.area.offset, err = ar.u64("offset"); err != nil {
		return nil, err
	}
	if ks.area.size, err = ar.u64("size"); err != nil {
		return nil, err
	}
	if ks.area.encryption, err = ar.nonEmptyStr("encryption"); err != nil {
		return nil, err
	}
	if n, err = ar.integer("key_size", 1, maxKeySize); err != nil {
		return nil, err
	}
	ks.area.keySize = int(n)

	kdf, err := o.obj("kdf")
	if err != nil {
		return nil, err
	}
	if ks.kdf, err = parseKDF(kdf); err != nil {
		return nil, err
	}
	if v, ok := o.get("priority"); ok {
		p, err := o.parseInteger("priority", v, 0, 2)
		if err != nil {
			return nil, err
		}
		ks.priority, ks.hasPriority = priorityFromDisk(p), true
	} else {
		ks.priority = PriorityNormal
	}
	ks.extra = o.rest("type", "key_size", "af", "area", "kdf", "priority")
	return ks, nil
}

// marshalObject re-serialises a parsed object's members. It cannot fail: the members were
// parsed from valid JSON and are written back as they were read.
func marshalObject(o *object) []byte {
	var w writer
	w.open('{')
	w.members(o.members)
	w.close('}')
	return w.b
}

func parseSegment(o *object) (*segmentMeta, error) {
	typ, err := o.str("type")
	if err != nil {
		return nil, err
	}
	if typ != "crypt" {
		return nil, fmt.Errorf("%w: %s: segment type %q", ErrUnsupported, o.path(), truncate(typ))
	}
	s := &segmentMeta{typ: typ}
	if s.offset, err = o.u64("offset"); err != nil {
		return nil, err
	}
	size, err := o.str("size")
	if err != nil {
		return nil, err
	}
	if size == "dynamic" {
		s.dynamic = true
	} else if s.size, err = parseU64(size, func(f string, a ...any) error { return o.errorf("size", f, a...) }); err != nil {
		return nil, err
	}
	if s.ivTweak, err = o.u64("iv_tweak"); err != nil {
		return nil, err
	}
	if s.encryption, err = o.nonEmptyStr("encryption"); err != nil {
		return nil, err
	}
	// flags is optional; cryptsetup requires an array of strings (hdr_validate_segments).
	// It is kept among the extra members.
	if o.has("flags") {
		if _, err := o.strings("flags", 64); err != nil {
			return nil, err
		}
	}
	n, err := o.integer("sector_size", 512, 4096)
	if err != nil {
		return nil, err
	}
	if n&(n-1) != 0 {
		return nil, o.errorf("sector_size", "%d is not a power of two", n)
	}
	s.sectorSize = int(n)
	if s.offset%512 != 0 {
		return nil, o.errorf("offset", "%d is not a multiple of 512", s.offset)
	}
	if !s.dynamic && (s.size == 0 || s.size%512 != 0 || s.size%uint64(s.sectorSize) != 0) {
		return nil, o.errorf("size", "%d is not a nonzero multiple of the %d-byte sector size", s.size, s.sectorSize)
	}
	s.extra = o.rest("type", "offset", "size", "iv_tweak", "encryption", "sector_size")
	return s, nil
}

func parseDigest(o *object) (*digestMeta, error) {
	typ, err := o.str("type")
	if err != nil {
		return nil, err
	}
	if typ != "pbkdf2" {
		return nil, fmt.Errorf("%w: %s: digest type %q", ErrUnsupported, o.path(), truncate(typ))
	}
	d := &digestMeta{typ: typ}
	if d.keyslots, err = o.ids("keyslots", MaxKeyslots); err != nil {
		return nil, err
	}
	if d.segments, err = o.ids("segments", maxSegments); err != nil {
		return nil, err
	}
	if d.hash, err = o.str("hash"); err != nil {
		return nil, err
	}
	h, err := hashByName(d.hash)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.path(), err)
	}
	n, err := o.integer("iterations", 1, MaxPBKDF2Iterations)
	if err != nil {
		return nil, fmt.Errorf("%w (%w)", err, ErrKDFLimits)
	}
	d.iterations = int(n)
	// cryptsetup's PBKDF2_digest_verify: a 32-byte salt, and a digest of 20 bytes or the
	// hash's full output; a shorter digest would let wrong keys through.
	if d.salt, err = o.b64("salt", saltSize, saltSize); err != nil {
		return nil, err
	}
	if d.digest, err = o.b64("digest", 20, h.Size()); err != nil {
		return nil, err
	}
	if len(d.digest) != 20 && len(d.digest) != h.Size() {
		return nil, o.errorf("digest", "%d bytes, want 20 or %d", len(d.digest), h.Size())
	}
	d.extra = o.rest("type", "keyslots", "segments", "hash", "iterations", "salt", "digest")
	return d, nil
}

func parseConfig(o *object) (configMeta, error) {
	var c configMeta
	var err error
	if c.jsonSize, err = o.u64("json_size"); err != nil {
		return c, err
	}
	if c.keyslotsSize, err = o.u64("keyslots_size"); err != nil {
		return c, err
	}
	if o.has("flags") {
		if c.flags, err = o.strings("flags", 64); err != nil {
			return c, err
		}
		c.hasFlags = true
	}
	if v, ok := o.get("requirements"); ok {
		req, err := parseObjectAt(nil, o, "", "requirements", v)
		if err != nil {
			return c, err
		}
		if req.has("mandatory") {
			if c.mandatory, err = req.strings("mandatory", 64); err != nil {
				return c, err
			}
		}
		c.requirements = marshalObject(req)
	}
	c.extra = o.rest("json_size", "keyslots_size", "flags", "requirements")
	return c, nil
}

// validateToken checks the members LUKS2 requires of a token and returns it compacted, and
// the keyslots it names. Parsed in a metadata parse (o.arena not nil), a token whose text
// already is that compact form is returned as that text, a slice of what was parsed,
// instead of a copy.
func validateToken(o *object) (json.RawMessage, []int, error) {
	typ, err := o.str("type")
	if err != nil {
		return nil, nil, err
	}
	if typ == "" {
		return nil, nil, o.errorf("type", "empty token type")
	}
	slots, err := o.ids("keyslots", MaxKeyslots)
	if err != nil {
		return nil, nil, err
	}
	a := o.arena
	if a == nil {
		return marshalObject(o), slots, nil
	}
	w := writer{b: a.scratch[:0]}
	w.open('{')
	w.members(o.members)
	w.close('}')
	a.scratch = w.b[:0]
	if bytes.Equal(w.b, o.raw) {
		return o.raw[:len(o.raw):len(o.raw)], slots, nil
	}
	return bytes.Clone(w.b), slots, nil
}

// tokenKeyslots returns the keyslots a (validated) token names.
func tokenKeyslots(raw json.RawMessage) []int {
	o, err := parseObject("token", raw)
	if err != nil {
		return nil
	}
	ids, _ := o.ids("keyslots", MaxKeyslots)
	return ids
}

// validate checks the rules that tie the metadata objects to each other and to the binary
// header (cryptsetup's hdr_validate_* in lib/luks2/luks2_json_metadata.c). tokenSlots, when
// not nil, holds the keyslots each token names (else they are read from the tokens).
func (m *metadata) validate(hdrSize uint64, tokenSlots *[MaxTokens][]int) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidMetadata, fmt.Sprintf(format, args...))
	}
	c := &m.config
	var idBuf [MaxKeyslots]int
	if c.jsonSize != hdrSize-binHeaderSize {
		return bad("config.json_size %d does not match the header size %d (want %d)", c.jsonSize, hdrSize, hdrSize-binHeaderSize)
	}
	if c.keyslotsSize%4096 != 0 || c.keyslotsSize > maxKeyslotsSize {
		return bad("config.keyslots_size %d is not a multiple of 4096 up to %d", c.keyslotsSize, maxKeyslotsSize)
	}
	areaStart, areaEnd := 2*hdrSize, 2*hdrSize+c.keyslotsSize

	// Segments: ids 0..n-1 without gaps.
	if len(m.segments) == 0 {
		return bad("no segments")
	}
	for id := range len(m.segments) {
		if m.segments[id] == nil {
			return bad("segment ids are not contiguous from 0 (missing %d)", id)
		}
	}
	dataStart := m.segments[0].offset

	// Segments start after the keyslots area. The header is always in the image here
	// (detached headers are not supported), so a segment before the end of the keyslots
	// area would overwrite the header or keyslots with the first data write. cryptsetup's
	// validate_keyslots_size refuses keyslots_size running past the first segment; offset
	// 0 means a detached header to cryptsetup, which such an image cannot have.
	for _, id := range sortedKeysInto(idBuf[:0], m.segments) {
		off := m.segments[id].offset
		switch {
		case off >= areaEnd:
		case off == 0:
			return bad("segment %d at offset 0 means a detached header, which is not supported (with the header in the image, the first data write would destroy it)", id)
		case off >= areaStart:
			return bad("segment %d at offset %d starts before the end of the keyslots area at %d: config.keyslots_size %d runs past the data segment", id, off, areaEnd, c.keyslotsSize)
		default:
			return bad("segment %d at offset %d starts before the end of the keyslots area at %d", id, off, areaEnd)
		}
	}

	// Keyslot areas: inside the keyslots area, sector aligned, large enough, disjoint.
	type span struct {
		id         int
		start, end uint64
	}
	var spans []span
	for _, id := range sortedKeysInto(idBuf[:0], m.keyslots) {
		ks := m.keyslots[id]
		if ks.typ != keyslotLUKS2 {
			continue
		}
		a := ks.area
		if a.offset%512 != 0 || a.size%512 != 0 {
			return bad("keyslot %d: area offset %d or size %d not sector-aligned", id, a.offset, a.size)
		}
		if a.offset < areaStart || a.size > areaEnd || a.offset > areaEnd-a.size {
			return bad("keyslot %d: area [%d, +%d) outside the keyslots area [%d, %d)", id, a.offset, a.size, areaStart, areaEnd)
		}
		if dataStart != 0 && a.offset+a.size > dataStart {
			return bad("keyslot %d: area [%d, +%d) overlaps the data segment at %d", id, a.offset, a.size, dataStart)
		}
		if need := afSize(ks.keySize); a.size < need {
			return bad("keyslot %d: area size %d is smaller than the %d bytes of split key material", id, a.size, need)
		}
		spans = append(spans, span{id, a.offset, a.offset + a.size})
	}
	slices.SortFunc(spans, func(x, y span) int { return compareU64(x.start, y.start) })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return bad("keyslots %d and %d: areas overlap", spans[i-1].id, spans[i].id)
		}
	}

	// Digests: references exist; every keyslot in exactly one digest; every segment
	// covered.
	inDigest := make(map[int]int)
	segCovered := make(map[int]bool)
	for _, did := range sortedKeysInto(idBuf[:0], m.digests) {
		d := m.digests[did]
		for _, k := range d.keyslots {
			ks, ok := m.keyslots[k]
			if !ok {
				return bad("digest %d names keyslot %d, which does not exist", did, k)
			}
			if ks.typ != keyslotLUKS2 {
				continue
			}
			if prev, dup := inDigest[k]; dup {
				return bad("keyslot %d is in digests %d and %d", k, prev, did)
			}
			inDigest[k] = did
		}
		for _, s := range d.segments {
			if _, ok := m.segments[s]; !ok {
				return bad("digest %d names segment %d, which does not exist", did, s)
			}
			segCovered[s] = true
		}
	}
	for _, id := range sortedKeysInto(idBuf[:0], m.keyslots) {
		if _, ok := inDigest[id]; !ok && m.keyslots[id].typ == keyslotLUKS2 {
			return bad("keyslot %d is not in any digest", id)
		}
	}
	for _, id := range sortedKeysInto(idBuf[:0], m.segments) {
		if !segCovered[id] {
			return bad("segment %d is not in any digest", id)
		}
	}

	// Tokens name existing keyslots.
	for _, tid := range sortedKeysInto(idBuf[:0], m.tokens) {
		slots := []int(nil)
		if tokenSlots != nil && tid >= 0 && tid < MaxTokens {
			slots = tokenSlots[tid]
		} else {
			slots = tokenKeyslots(m.tokens[tid])
		}
		for _, k := range slots {
			if _, ok := m.keyslots[k]; !ok {
				return bad("token %d names keyslot %d, which does not exist", tid, k)
			}
		}
	}
	return nil
}

// marshal encodes the metadata as compact JSON in cryptsetup's member order.
func (m *metadata) marshal() []byte { return m.marshalSized(0) }

// marshalSized is marshal into a buffer of capacity size, the expected length.
func (m *metadata) marshalSized(size int) []byte {
	w := writer{b: make([]byte, 0, size)}
	var idBuf [MaxKeyslots]int
	w.open('{')

	w.keyObj("keyslots")
	for _, id := range sortedKeysInto(idBuf[:0], m.keyslots) {
		ks := m.keyslots[id]
		if ks.raw != nil {
			w.raw(strconv.Itoa(id), ks.raw)
			continue
		}
		w.keyObj(strconv.Itoa(id))
		w.str("type", ks.typ)
		w.int("key_size", int64(ks.keySize))
		w.keyObj("af")
		w.str("type", "luks1")
		w.int("stripes", afStripes)
		w.str("hash", ks.afHash)
		w.close('}')
		w.keyObj("area")
		w.str("type", "raw")
		w.u64("offset", ks.area.offset)
		w.u64("size", ks.area.size)
		w.str("encryption", ks.area.encryption)
		w.int("key_size", int64(ks.area.keySize))
		w.close('}')
		w.keyObj("kdf")
		ks.kdf.write(&w)
		w.close('}')
		if ks.hasPriority {
			n, _ := ks.priority.disk()
			w.int("priority", n)
		}
		w.members(ks.extra)
		w.close('}')
	}
	w.close('}')

	w.keyObj("tokens")
	for _, id := range sortedKeysInto(idBuf[:0], m.tokens) {
		w.raw(strconv.Itoa(id), m.tokens[id])
	}
	w.close('}')

	w.keyObj("segments")
	for _, id := range sortedKeysInto(idBuf[:0], m.segments) {
		s := m.segments[id]
		w.keyObj(strconv.Itoa(id))
		w.str("type", s.typ)
		w.u64("offset", s.offset)
		if s.dynamic {
			w.str("size", "dynamic")
		} else {
			w.u64("size", s.size)
		}
		w.u64("iv_tweak", s.ivTweak)
		w.str("encryption", s.encryption)
		w.int("sector_size", int64(s.sectorSize))
		w.members(s.extra)
		w.close('}')
	}
	w.close('}')

	w.keyObj("digests")
	for _, id := range sortedKeysInto(idBuf[:0], m.digests) {
		d := m.digests[id]
		w.keyObj(strconv.Itoa(id))
		w.str("type", d.typ)
		w.idArray("keyslots", d.keyslots)
		w.idArray("segments", d.segments)
		w.str("hash", d.hash)
		w.int("iterations", int64(d.iterations))
		w.b64("salt", d.salt)
		w.b64("digest", d.digest)
		w.members(d.extra)
		w.close('}')
	}
	w.close('}')

	w.keyObj("config")
	w.u64("json_size", m.config.jsonSize)
	w.u64("keyslots_size", m.config.keyslotsSize)
	if m.config.hasFlags {
		w.strArray("flags", m.config.flags)
	}
	if m.config.requirements != nil {
		w.raw("requirements", m.config.requirements)
	}
	w.members(m.config.extra)
	w.close('}')

	w.members(m.extra)
	w.close('}')
	return w.b
}

func sortedKeys[V any](m map[int]V) []int {
	return sortedKeysInto(make([]int, 0, len(m)), m)
}

// sortedKeysInto is sortedKeys appending to keys (the caller's buffer, usually on its
// stack).
func sortedKeysInto[V any](keys []int, m map[int]V) []int {
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
