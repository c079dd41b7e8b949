package kpapi

import (
	"errors"
	"net/http"
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
