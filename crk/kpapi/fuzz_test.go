package kpapi

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unicode"
	"unicode/utf8"

	"crkvol/crk"
)

// FuzzParseError reads arbitrary error bodies. It must never panic; the message and code it
// keeps are valid UTF-8 without control or format characters and within their cap; and a
// sentinel is only ever one of crk's refusals or failures whose status matches the response's.
func FuzzParseError(f *testing.F) {
	f.Add(http.StatusNotFound, []byte(`{"metadata":{"collectionType":"application/vnd.ibm.kms.error+json","collectionTotal":1},"resources":[{"errorMsg":"Not Found","reasons":[{"code":"KEY_NOT_FOUND_ERR","message":"Key does not exist","status":404,"moreInfo":"x","target":{"type":"field","name":"id"}}]}]}`))
	f.Add(http.StatusConflict, []byte(`{"resources":[{"errorMsg":"Conflict","reasons":[{"code":"KEY_ACTION_INVALID_STATE_ERR","message":"\u001b[31mred\u202e","crkvolError":"key_suspended"}]}]}`))
	f.Add(http.StatusServiceUnavailable, []byte(`{"resources":[{"reasons":[{"crkvolError":"key_destroyed"}]}]}`))
	f.Add(http.StatusTeapot, []byte(`not json`))
	f.Add(0, []byte(nil))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		e := ParseError(status, body)
		for _, s := range []string{e.Message, e.Code} {
			if !utf8.ValidString(s) {
				t.Fatalf("invalid UTF-8 kept: %q", s)
			}
			if len(s) > maxMessage+len("...") {
				t.Fatalf("text of %d bytes kept, cap %d", len(s), maxMessage)
			}
			for _, r := range s {
				if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
					t.Fatalf("unescaped %U kept in %q", r, s)
				}
			}
		}
		if e.Sentinel == nil {
			return
		}
		for _, row := range crk.Errors() {
			if errors.Is(e.Sentinel, row.Err) && row.Status == status {
				return
			}
		}
		t.Fatalf("sentinel %v for status %d matches no row of crk.Errors with that status", e.Sentinel, status)
	})
}

// FuzzTenantsFile reads arbitrary tenants.json files, of the format before keys had several
// instances and after. It must never panic; a file it accepts lists every API key with at
// least one instance, the first of which is the key's Instance, and the keys the server
// checks tokens and sessions against have the same instances.
func FuzzTenantsFile(f *testing.F) {
	f.Add([]byte(`{"default":"d","instances":[{"id":"a","name":"team-a","created":"2026-01-01T00:00:00Z"}],"apiKeys":[{"hash":"00ff","instance":"a","created":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"default":"d","apiKeys":[{"hash":"00ff","instance":"a","instances":["a","d"],"created":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"apiKeys":[{"hash":"","instances":[]},{"instances":null},{"instance":"x","instances":["y"]}]}`))
	f.Add([]byte(`{"apiKeys":[{"instances":"a"}]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "tenants.json"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := openFileStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := newTenants(s, nil).ListAPIKeys()
		if err != nil {
			return
		}
		entries, err := s.apiKeys(context.Background())
		if err != nil {
			t.Fatalf("listed, then not read: %v", err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, k := range keys {
			if len(k.Instances) == 0 || k.Instance != k.Instances[0] {
				t.Fatalf("key %d listed with instance %q of %q", i, k.Instance, k.Instances)
			}
			checked, ok, err := s.keyInstancesLocked(entries[i].Hash)
			if err != nil || !ok {
				t.Fatalf("key %d not found for checks: %v", i, err)
			}
			if entries[i].Hash != "" && !slices.Equal(checked, k.Instances) && !duplicateHash(entries, i) {
				t.Fatalf("key %d checked against %q, listed with %q", i, checked, k.Instances)
			}
		}
	})
}

// duplicateHash reports whether another entry than i has entry i's hash (a file made by
// hand; the last one wins for checks).
func duplicateHash(entries []apiKeyEntry, i int) bool {
	for j, e := range entries {
		if j != i && e.Hash == entries[i].Hash {
			return true
		}
	}
	return false
}
