package kpapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMembersUnique checks the fast scan's decisions against checkMembersTokens, and which
// texts it leaves undecided.
func TestMembersUnique(t *testing.T) {
	for _, tc := range []struct {
		raw             string
		unique, decided bool
	}{
		{`{"plaintext":"AAAA","aad":["a","b"]}`, true, true},
		{`{"ciphertext":"AAAA"}`, true, true},
		{` { "a" : 1 , "b" : {"a":2}, "c":[{"a":1},{"a":2}] } `, true, true},
		{`{"plaintext":"A","Plaintext":"B"}`, false, true},
		{`{"a":{"x":1,"X":2}}`, false, true},
		{`{"a":[{"k":1,"b":{},"K":2}]}`, false, true},
		{`{"a":"\"a\":1","b":":"}`, true, true}, // quotes and colons inside values
		{`{"a":1}{"b":2}`, false, false},        // not one value
		{`{"a":1`, false, false},
		{`{"\u0061":1,"a":2}`, false, false},     // an escape in a name
		{"{\"k\":1,\"\u212a\":2}", false, false}, // the Kelvin sign
		{`[[[[[[[[[1]]]]]]]]]`, false, false},    // deeper than fastMaxDepth
		{`{"a0":0,"a1":1,"a2":2,"a3":3,"a4":4,"a5":5,"a6":6,"a7":7,"a8":8,"a9":9,"b0":0,"b1":1,"b2":2,"b3":3,"b4":4,"b5":5,"b6":6}`, false, false},
		{`"just a string"`, true, true},
		{`null`, true, true},
	} {
		unique, decided := membersUnique([]byte(tc.raw))
		assert.Equal(t, tc.decided, decided, tc.raw)
		if decided {
			assert.Equal(t, tc.unique, unique, tc.raw)
			assert.Equal(t, unique, checkMembersTokens([]byte(tc.raw)) == nil, tc.raw)
		}
		// checkMembers answers as the token scan does, decided fast or not.
		assert.Equal(t, checkMembersTokens([]byte(tc.raw)), checkMembers([]byte(tc.raw)), tc.raw)
	}
}

// TestMembersUniqueAllocs: the fast scan of a wrap body allocates nothing.
func TestMembersUniqueAllocs(t *testing.T) {
	raw := []byte(`{"plaintext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","aad":["volume-1"]}`)
	allocs := testing.AllocsPerRun(100, func() {
		if err := checkMembers(raw); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// FuzzMembersUnique: wherever the fast scan decides, it decides as checkMembersTokens does,
// and checkMembers always answers as checkMembersTokens.
func FuzzMembersUnique(f *testing.F) {
	for _, s := range []string{`{"plaintext":"AAAA","aad":["a"]}`, `{"a":1,"A":2}`, `{"a":{"b":[{"c":1,"C":2}]}}`,
		`{"a":"x\"y","b":"\\","c":"\u00e9"}`, "{\"k\":1,\"\u212a\":2}", `[{},{"a":1},[]]`, `{"a" :1,"b"	:2}`, `1`, `{`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		slow := checkMembersTokens(raw)
		if unique, decided := membersUnique(raw); decided && unique != (slow == nil) {
			t.Fatalf("fast scan: unique %v; token scan: %v", unique, slow)
		}
		if fast := checkMembers(raw); (fast == nil) != (slow == nil) || (fast != nil && fast.Error() != slow.Error()) {
			t.Fatalf("checkMembers %v, token scan %v", fast, slow)
		}
	})
}

// TestAppendActionAnswer: the answer appendJSON writes is byte for byte encoding/json's, and
// it leaves strings that need escaping to encoding/json.
func TestAppendActionAnswer(t *testing.T) {
	destroyed := true
	for _, tc := range []struct {
		a  actionAnswer
		ok bool
	}{
		{actionAnswer{Ciphertext: "Q1JLMQ+/ab==", KeyVersion: &KeyVersion{ID: "0e3f2c1a-5b6d-4e7f-8a9b-0c1d2e3f4a5b", CreationDate: "2026-12-04T04:00:00Z"}}, true},
		{actionAnswer{Plaintext: "AAAA", KeyVersion: &KeyVersion{ID: "v1"}}, true},
		{actionAnswer{Plaintext: "AAAA", KeyVersion: &KeyVersion{ID: "v1", CreationDate: "d"}, Ciphertext: "CCCC", RewrappedKeyVersion: &KeyVersion{ID: "v2", CreationDate: "e"}}, true},
		{actionAnswer{Ciphertext: "CCCC", KeyVersion: &KeyVersion{ID: "v2"}, RewrappedKeyVersion: &KeyVersion{ID: "v1"}}, true},
		{actionAnswer{}, true},
		{actionAnswer{Ciphertext: strings.Repeat("A", 10000), KeyVersion: &KeyVersion{ID: "v"}}, true},
		{actionAnswer{Ciphertext: "a<b"}, false},
		{actionAnswer{Ciphertext: "quote\""}, false},
		{actionAnswer{Plaintext: "é"}, false},
		{actionAnswer{KeyVersion: &KeyVersion{ID: "v\n"}}, false},
		{actionAnswer{KeyVersion: &KeyVersion{ID: "v", Destroyed: &destroyed}}, false},
	} {
		var want bytes.Buffer
		require.NoError(t, json.NewEncoder(&want).Encode(&tc.a))
		got, ok := tc.a.appendJSON(nil)
		assert.Equal(t, tc.ok, ok, "%+v", tc.a)
		if ok {
			assert.Equal(t, want.String(), string(got))
			assert.GreaterOrEqual(t, tc.a.sizeHint(), len(got), "the buffer is allocated once")
		}
		// writeAnswer writes encoding/json's bytes either way.
		rec := httptest.NewRecorder()
		writeAnswer(rec, 200, &tc.a)
		assert.Equal(t, want.String(), rec.Body.String())
		assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	}
}

// TestAuthorizeAllocs: checking a bearer token on a state directory's store, which every API
// request does, allocates only stat(2)'s C string of tenants.json's path: the stamp is read
// without os.Stat's allocations, the token hashed without converting it, and no timer is set
// for a store that answers from memory (before: 8 allocations).
func TestAuthorizeAllocs(t *testing.T) {
	tenants, _, _ := openFileTenants(t)
	inst, _ := tenants.Default()
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	tok, _, err := tenants.Exchange(apiKey)
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, err := tenants.Authorize(tok, inst); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.1f allocations", allocs)
	assert.LessOrEqual(t, allocs, 1.0)
}

// TestDecodeActionFast: the bodies the fast parse decides, and those it leaves to decodeJSON.
func TestDecodeActionFast(t *testing.T) {
	for _, tc := range []struct {
		raw     string
		decided bool
	}{
		{`{"plaintext":"AAAA"}`, true},
		{`{"ciphertext":"Q1JL+/=","aad":["a","b c"]}`, true},
		{` {"aad" : [ ] , "payload":null,"plaintext":"x"}`, true},
		{`{"aad":null,"ciphertext":"x"}`, true},
		{`{}`, true},
		{`{"Plaintext":"AAAA"}`, false},              // matched without regard to case: decodeJSON's
		{`{"plaintext":"A","plaintext":"B"}`, false}, // a duplicate: checkMembers words it
		{`{"plaintext":"A\u0041"}`, false},           // an escape
		{`{"plaintext":"é"}`, false},
		{`{"plaintext":1}`, false},
		{`{"aad":["a",null]}`, false},
		{`{"aad":["a",]}`, false},
		{`{"plaintext":"A",}`, false},
		{`{"plaintext":"A"} x`, false},
		{`{"iv":"x"}`, false},
		{`[1]`, false},
	} {
		var fast, general actionBody
		decided := decodeActionFast([]byte(tc.raw), &fast)
		assert.Equal(t, tc.decided, decided, tc.raw)
		if decided {
			require.NoError(t, decodeJSON([]byte(tc.raw), &general, false), tc.raw)
			assert.Equal(t, general, fast, tc.raw)
		}
	}
}

// TestDecodeActionAllocs: a wrap body is read and decoded in four allocations: the body
// read, the plaintext string and its pointer (decode, by encoding/json's decoder, makes 11;
// with checkMembers by tokens, as before, 34).
func TestDecodeActionAllocs(t *testing.T) {
	raw := []byte(`{"plaintext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`)
	rdr := bytes.NewReader(raw)
	r := httptest.NewRequest("POST", "/", nil)
	r.Body = io.NopCloser(rdr)
	allocs := testing.AllocsPerRun(100, func() {
		rdr.Reset(raw)
		var body actionBody
		if err := decodeAction(r, &body); err != nil || body.Plaintext == nil {
			t.Fatal(err)
		}
	})
	assert.LessOrEqual(t, allocs, 4.0)
}

// FuzzDecodeActionFast: wherever the fast parse decides, decodeJSON accepts the body and
// gives the same value; decodeAction always answers as decodeJSON.
func FuzzDecodeActionFast(f *testing.F) {
	for _, s := range []string{`{"plaintext":"AAAA"}`, `{"ciphertext":"x","aad":["a","b"]}`, `{"aad":[],"payload":null}`,
		`{"plaintext":"A","Plaintext":"B"}`, `{"aad":["a",null]}`, `{"plaintext":"\u0041"}`, `{"iv":"x"}`, `{}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var fast, general actionBody
		t0 := bytes.TrimSpace(raw)
		if len(t0) == 0 {
			return
		}
		gerr := decodeJSON(t0, &general, false)
		if decodeActionFast(t0, &fast) {
			if gerr != nil {
				t.Fatalf("fast parse decided a body decodeJSON refuses: %v", gerr)
			}
			if !reflect.DeepEqual(fast, general) {
				t.Fatalf("fast %+v, decodeJSON %+v", fast, general)
			}
		}
		var viaRequest actionBody
		r := httptest.NewRequest("POST", "/", bytes.NewReader(raw))
		err := decodeAction(r, &viaRequest)
		if string(t0) == "null" || string(t0) == "{}" {
			return // decode's shortcut, the same in both
		}
		if (err == nil) != (gerr == nil) || (err != nil && err.Error() != gerr.Error()) {
			t.Fatalf("decodeAction %v, decodeJSON %v", err, gerr)
		}
		if err == nil && !reflect.DeepEqual(viaRequest, general) {
			t.Fatalf("decodeAction %+v, decodeJSON %+v", viaRequest, general)
		}
	})
}

// TestReadAll: readAll reads what io.ReadAll reads whatever length the request declares, with
// one allocation when the declared length is right.
func TestReadAll(t *testing.T) {
	body := strings.Repeat("x", 100)
	for _, declared := range []int64{-1, 0, 1, 99, 100, 101, 5000, MaxBody + 1} {
		got, err := readAll(strings.NewReader(body), declared)
		require.NoError(t, err, declared)
		assert.Equal(t, body, string(got), declared)
	}
	_, err := readAll(iotest.ErrReader(io.ErrUnexpectedEOF), 10)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	rdr := strings.NewReader(body)
	allocs := testing.AllocsPerRun(100, func() {
		rdr.Reset(body)
		if _, err := readAll(rdr, int64(len(body))); err != nil {
			t.Fatal(err)
		}
	})
	assert.Equal(t, 1.0, allocs)
}

// TestWriteAnswerAllocs: an answer is written from one buffer of its size.
func TestWriteAnswerAllocs(t *testing.T) {
	a := actionAnswer{Plaintext: strings.Repeat("A", 44), KeyVersion: &KeyVersion{ID: "0e3f2c1a-5b6d-4e7f-8a9b-0c1d2e3f4a5b", CreationDate: "2026-12-04T04:00:00Z"},
		Ciphertext: strings.Repeat("C", 100), RewrappedKeyVersion: &KeyVersion{ID: "1e3f2c1a-5b6d-4e7f-8a9b-0c1d2e3f4a5b", CreationDate: "2026-12-04T05:00:00Z"}}
	b, ok := a.appendJSON(nil)
	require.True(t, ok)
	assert.GreaterOrEqual(t, a.sizeHint(), len(b))
	assert.Equal(t, 1.0, testing.AllocsPerRun(100, func() { a.appendJSON(make([]byte, 0, a.sizeHint())) }))
}
