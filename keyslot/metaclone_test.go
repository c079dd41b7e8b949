package keyslot

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// assertNoSharing fails when a and b (values of one type) share a map, a pointer target or a
// slice's backing array anywhere within them.
func assertNoSharing(t *testing.T, path string, a, b reflect.Value) {
	t.Helper()
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return
		}
		assert.NotEqual(t, a.Pointer(), b.Pointer(), "%s: shared pointer", path)
		assertNoSharing(t, path, a.Elem(), b.Elem())
	case reflect.Map:
		if a.IsNil() || b.IsNil() {
			return
		}
		assert.NotEqual(t, a.Pointer(), b.Pointer(), "%s: shared map", path)
		for _, k := range a.MapKeys() {
			assertNoSharing(t, path+"["+k.String()+"]", a.MapIndex(k), b.MapIndex(k))
		}
	case reflect.Slice:
		if a.Cap() > 0 && b.Cap() > 0 {
			assert.NotEqual(t, a.Pointer(), b.Pointer(), "%s: shared slice", path)
		}
		for i := range min(a.Len(), b.Len()) {
			assertNoSharing(t, path, a.Index(i), b.Index(i))
		}
	case reflect.Struct:
		for i := range a.NumField() {
			assertNoSharing(t, path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))
		}
	}
}

// TestMetadataClone: the copy an update changes equals a fresh parse of the text, field for
// field (nil and empty alike), and shares no memory with the original, for metadata with
// every kind of member: keyslots of both KDF families and an unknown member, a reencrypt
// keyslot, tokens, segment flags, digest lists, config flags and requirements, extra
// top-level members.
func TestMetadataClone(t *testing.T) {
	t.Parallel()
	_, img, _ := newMemImage(t, "p")
	_, err := img.AddToken(AnyToken, []byte(`{"type":"crkvol-crk","keyslots":["0"],"x":{"y":[1,"z"]}}`))
	require.NoError(t, err)
	st := img.snapshot()
	texts := [][]byte{st.text}
	// What a plain image lacks.
	rich := []byte(`{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"argon2id","time":4,"memory":1048576,"cpus":4,"salt":"` + b64zeros(32) + `"},"priority":2,"future":{"a":[1]}},"1":{"type":"reencrypt","key_size":1,"mode":"reencrypt","direction":"forward","area":{"type":"none","offset":"290816","size":"4096"}},"2":{"type":"luks2","key_size":32,"af":{"type":"luks1","stripes":4000,"hash":"sha512"},"area":{"type":"raw","offset":"294912","size":"131072","encryption":"aes-xts-plain64","key_size":32},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"` + b64zeros(32) + `"}}},"tokens":{"0":{"type":"t","keyslots":["0","2"],"v":"w"}},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096,"flags":["a","b"]}},"digests":{"0":{"type":"pbkdf2","keyslots":["0","2"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"` + b64zeros(32) + `","digest":"` + b64zeros(32) + `","note":null}},"config":{"json_size":"12288","keyslots_size":"16744448","flags":["allow-discards"],"requirements":{"mandatory":["online-reencrypt-v2"],"other":1},"x":"y"},"top":[true]}`)
	texts = append(texts, rich)
	for i, text := range texts {
		m, err := parseMetadata(text, DefaultMetadataSize)
		require.NoError(t, err, "text %d", i)
		c := m.clone()
		again, err := parseMetadata(text, DefaultMetadataSize)
		require.NoError(t, err)
		assert.Equal(t, again, c, "text %d: the clone is not what a parse gives", i)
		assert.Equal(t, m.marshal(), c.marshal(), "text %d", i)
		assertNoSharing(t, "metadata", reflect.ValueOf(m), reflect.ValueOf(c))
	}
}

func b64zeros(n int) string {
	var w writer
	w.b64("", make([]byte, n))
	s := string(w.b)
	return s[4 : len(s)-1] // drop `"":"` and the closing quote
}

// TestTokenUpdatesLeaveEarlierMetadata: token updates start from cloneTokens, which shares
// all but the tokens map with the metadata read; the metadata a reader got before any
// number of token and other updates still marshals as it did.
func TestTokenUpdatesLeaveEarlierMetadata(t *testing.T) {
	t.Parallel()
	_, img, vk := newMemImage(t, "p")
	id, err := img.AddToken(AnyToken, []byte(`{"type":"x","keyslots":["0"],"n":1}`))
	require.NoError(t, err)
	var metas []*metadata
	var texts [][]byte
	keep := func() {
		m := img.snapshot().meta
		metas, texts = append(metas, m), append(texts, m.marshal())
	}
	keep()
	require.NoError(t, img.ReplaceToken(id, []byte(`{"type":"x","keyslots":["0"],"n":2}`)))
	keep()
	_, err = img.AddKeyslot(vk, []byte("q"), SlotOptions{ID: AnyKeyslot, KDF: testKDF})
	require.NoError(t, err)
	keep()
	require.NoError(t, img.ReplaceToken(id, []byte(`{"type":"x","keyslots":["0","1"],"n":3}`)))
	keep()
	require.NoError(t, img.RemoveKeyslot(0))
	keep()
	require.NoError(t, img.RemoveToken(id))
	keep()
	for i, m := range metas {
		assert.Equal(t, string(texts[i]), string(m.marshal()), "metadata %d changed by a later update", i)
	}
	assert.Len(t, metas[len(metas)-1].tokens, 0)
	assert.Len(t, metas[0].tokens, 1)
}
