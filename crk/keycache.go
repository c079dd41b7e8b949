package crk

import (
	"bytes"
	"slices"
	"sync"
)

// keyCacheSize is the most decoded key records a keyCache keeps.
const keyCacheSize = 4096

// keyCache keeps the key records a store decoded last, each with the stored bytes it was
// decoded from: a read whose bytes are the same gets a copy of the record instead of decoding
// the JSON again (a wrap or an unwrap reads its key twice, and decoding was the largest CPU
// cost of a request). The bytes are compared in full, so a record changed by anyone (another
// transaction, another process on PostgreSQL, a master key rotation that re-seals the
// material) is decoded afresh. It holds what the store holds: key material only sealed under
// the master key. It is safe for concurrent use.
type keyCache struct {
	mu sync.Mutex
	m  map[string]cachedKey
}

type cachedKey struct {
	raw []byte
	rec *keyRecord // never handed out: callers get clones
}

// decode returns the record of key id stored as raw: a clone of the cached one when raw is
// what it was decoded from, else a new decoding (then cached). A nil cache only decodes.
func (c *keyCache) decode(id string, raw []byte) (*keyRecord, error) {
	if c == nil {
		return decodeKey(raw)
	}
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	if ok && bytes.Equal(e.raw, raw) {
		return e.rec.clone(), nil
	}
	r, err := decodeKey(raw)
	if err != nil || r.ID != id {
		return r, err // a record filed under another id is not cached
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]cachedKey)
	}
	if _, ok := c.m[id]; !ok && len(c.m) >= keyCacheSize {
		for k := range c.m { // evict one, any
			delete(c.m, k)
			break
		}
	}
	c.m[id] = cachedKey{raw: bytes.Clone(raw), rec: r.clone()}
	return r, nil
}

// clone returns a deep copy of r: nothing the copy refers to is shared with r.
func (r *keyRecord) clone() *keyRecord {
	c := *r
	if r.Policy != nil {
		p := *r.Policy
		c.Policy = &p
	}
	if r.DualAuth != nil {
		d := *r.DualAuth
		c.DualAuth = &d
	}
	c.Versions = slices.Clone(r.Versions)
	for i := range c.Versions {
		c.Versions[i].Material = bytes.Clone(r.Versions[i].Material)
	}
	c.Aliases = slices.Clone(r.Aliases)
	return &c
}
