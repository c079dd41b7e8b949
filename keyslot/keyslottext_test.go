package keyslot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// refKeyslotText is KeyslotText's definition, computed with encoding/json: the JSON text is
// unmarshalled into map[string]json.RawMessage, and so are its sections and each digest.
func refKeyslotText(text []byte, slot int) (KeyslotText, error) {
	var kt KeyslotText
	var top map[string]json.RawMessage
	if err := json.Unmarshal(text, &top); err != nil {
		return kt, err
	}
	section := func(name string) (map[string]json.RawMessage, error) {
		var s map[string]json.RawMessage
		err := json.Unmarshal(top[name], &s)
		return s, err
	}
	keyslots, err := section("keyslots")
	if err != nil {
		return kt, err
	}
	segments, err := section("segments")
	if err != nil {
		return kt, err
	}
	digests, err := section("digests")
	if err != nil {
		return kt, err
	}
	kt.Keyslot, kt.Segment = keyslots[strconv.Itoa(slot)], segments["0"]
	ids := make([]string, 0, len(digests))
	for id := range digests {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		var d map[string]json.RawMessage
		if err := json.Unmarshal(digests[id], &d); err != nil {
			return kt, err
		}
		var bound []string
		if err := json.Unmarshal(d["keyslots"], &bound); err != nil {
			return kt, err
		}
		if slices.Contains(bound, strconv.Itoa(slot)) {
			kt.Digests = append(kt.Digests, DigestText{ID: id, Text: digests[id]})
		}
	}
	if kt.Keyslot == nil || kt.Segment == nil || len(kt.Digests) == 0 {
		return kt, fmt.Errorf("keyslot %d: missing keyslot, segment or digest", slot)
	}
	return kt, nil
}

// checkKeyslotText compares keyslotText with refKeyslotText for every keyslot of m, parsed
// from text, and for ids that are not luks2 keyslots.
func checkKeyslotText(t testing.TB, text []byte, m *metadata) {
	t.Helper()
	for slot := -1; slot <= MaxKeyslots; slot++ {
		got, err := keyslotText(text, m, slot)
		ks := m.keyslots[slot]
		if ks == nil || ks.typ != keyslotLUKS2 {
			if !errors.Is(err, ErrKeyslotNotFound) {
				t.Fatalf("keyslot %d (none or not luks2): err %v, want ErrKeyslotNotFound", slot, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("keyslot %d: %v\n%s", slot, err, text)
		}
		want, err := refKeyslotText(text, slot)
		if err != nil {
			t.Fatalf("keyslot %d: encoding/json: %v\n%s", slot, err, text)
		}
		if !bytes.Equal(got.Keyslot, want.Keyslot) || !bytes.Equal(got.Segment, want.Segment) || len(got.Digests) != len(want.Digests) {
			t.Fatalf("keyslot %d:\n got %q %q %d digests\nwant %q %q %d digests", slot, got.Keyslot, got.Segment, len(got.Digests), want.Keyslot, want.Segment, len(want.Digests))
		}
		for i := range got.Digests {
			if got.Digests[i].ID != want.Digests[i].ID || !bytes.Equal(got.Digests[i].Text, want.Digests[i].Text) {
				t.Fatalf("keyslot %d digest %d:\n got %s %q\nwant %s %q", slot, i, got.Digests[i].ID, got.Digests[i].Text, want.Digests[i].ID, want.Digests[i].Text)
			}
		}
	}
}

// reorder rewrites the top-level object of text with its members in reverse order, with
// sep between members and around each colon.
func reorder(t *testing.T, text []byte, sep string) []byte {
	t.Helper()
	o, err := parseObject("metadata", text)
	require.NoError(t, err)
	var b bytes.Buffer
	b.WriteString("{" + sep)
	for i := len(o.members) - 1; i >= 0; i-- {
		m := o.members[i]
		fmt.Fprintf(&b, "%q%s:%s%s", m.name, sep, sep, m.value)
		if i > 0 {
			b.WriteString(sep + "," + sep)
		}
	}
	b.WriteString(sep + "}")
	return b.Bytes()
}

// TestKeyslotText checks KeyslotText against its encoding/json definition over varied
// metadata texts: compact, indented, reordered, with escapes, with several keyslots and
// digests, and the cryptsetup-made images.
func TestKeyslotText(t *testing.T) {
	t.Parallel()
	_, img, vk := newMemImage(t, "p")
	_, err := img.AddKeyslot(vk, []byte("q"), SlotOptions{ID: 1, KDF: testKDF})
	require.NoError(t, err)
	base := img.snapshot().text

	indent := func(prefix, in string) []byte {
		var b bytes.Buffer
		require.NoError(t, json.Indent(&b, base, prefix, in))
		return b.Bytes()
	}
	// Digest 1 binds keyslot 1 alone, to no segment (an unbound keyslot); digest 0 keeps
	// keyslot 0. The digests come in the text in descending order.
	o, err := parseObject("metadata", base)
	require.NoError(t, err)
	digests, ok := o.get("digests")
	require.True(t, ok)
	d0, err := parseObject("digests", digests)
	require.NoError(t, err)
	dig0, _ := d0.get("0")
	dig1 := bytes.Replace(bytes.Replace(dig0, []byte(`"keyslots":["0","1"]`), []byte(`"keyslots":["1"]`), 1), []byte(`"segments":["0"]`), []byte(`"segments":[]`), 1)
	dig0only := bytes.Replace(dig0, []byte(`"keyslots":["0","1"]`), []byte(`"keyslots":["0"]`), 1)
	require.NotEqual(t, dig0, dig1)
	twoDigests := bytes.Replace(base, []byte(`"digests":`+string(digests)), []byte(`"digests":{"1" : `+string(dig1)+` , "0":`+string(dig0only)+`}`), 1)
	require.NotEqual(t, base, twoDigests)

	escaped := []string{
		`"keyslots":{`, `"\u006beyslots":{`,
		`{"0":{"type":"luks2"`, `{"\u0030":{"type":"luks2"`,
		`"encryption":"aes-xts-plain64"`, `"encryption":"aes\u002dxts\/plain64"`,
		`"digests":{"0":`, `"digests":{"\u0030" :`,
		`"segments":{"0":`, `"segments":{"0"` + "\t\r\n:",
	}
	cases := map[string][]byte{
		"compact":               base,
		"indented":              indent("", "  "),
		"odd whitespace":        indent("\r", "\t \n"),
		"reordered":             reorder(t, base, ""),
		"reordered, whitespace": reorder(t, base, " \n"),
		"two digests":           twoDigests,
		"two digests, indented": reorder(t, twoDigests, "\t"),
		"escapes":               []byte(strings.NewReplacer(escaped...).Replace(string(base))),
		"extra members":         bytes.Replace(base, []byte(`"config":{`), []byte(`"x-other":{"keyslots":{"0":1},"digests":[]},"config":{`), 1),
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			m, err := parseMetadata(text, DefaultMetadataSize)
			require.NoError(t, err, "%s", text)
			checkKeyslotText(t, text, m)
		})
	}
	for i := 0; i < len(escaped); i += 2 {
		require.Contains(t, string(base), escaped[i], "an escape replacement matches nothing")
	}

	t.Run("image", func(t *testing.T) {
		kt, err := img.KeyslotText(1)
		require.NoError(t, err)
		require.Equal(t, img.SeqID(), kt.SeqID)
		want, err := refKeyslotText(base, 1)
		require.NoError(t, err)
		want.SeqID = kt.SeqID
		require.Equal(t, want, kt)
		for _, slot := range []int{-1, 2, 31, 32, 1 << 40} {
			_, err := img.KeyslotText(slot)
			require.ErrorIs(t, err, ErrKeyslotNotFound, "slot %d", slot)
		}
	})

	t.Run("cryptsetup", func(t *testing.T) {
		paths, err := filepath.Glob(filepath.Join(imagesDir, "*.img"))
		require.NoError(t, err)
		require.NotEmpty(t, paths)
		for _, p := range paths {
			raw, err := os.ReadFile(p)
			require.NoError(t, err)
			img, err := Open(&memDevice{buf: raw}, nil)
			require.NoError(t, err, p)
			// The text as stored in the primary copy, as the fingerprint reads it.
			text, err := jsonText(raw[binHeaderSize:img.MetadataSize()])
			require.NoError(t, err)
			st := img.snapshot()
			require.Equal(t, text, st.text)
			checkKeyslotText(t, text, st.meta)
			for _, ks := range img.Keyslots() {
				if ks.Type != keyslotLUKS2 {
					continue
				}
				got, err := img.KeyslotText(ks.ID)
				require.NoError(t, err)
				want, err := refKeyslotText(text, ks.ID)
				require.NoError(t, err)
				want.SeqID = img.SeqID()
				require.Equal(t, want, got, "%s keyslot %d", p, ks.ID)
			}
		}
	})
}

// TestKeyslotTextAllocs pins KeyslotText's allocations: the digest list and nothing else.
func TestKeyslotTextAllocs(t *testing.T) {
	_, img, _ := newMemImage(t, "p")
	n := testing.AllocsPerRun(20, func() {
		if _, err := img.KeyslotText(0); err != nil {
			t.Fatal(err)
		}
	})
	if n != 1 {
		t.Fatalf("KeyslotText allocates %v times per call, want 1", n)
	}
}
