package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"crkvol/crk"
	"crkvol/crk/console"
	"crkvol/crk/kpapi"
)

// TestServeHandler: kms serve answers /ui/ with the console (its CSP on every response) and
// everything else with the API; without the console /ui/ is the API's.
func TestServeHandler(t *testing.T) {
	tenants, err := kpapi.OpenTenants(t.TempDir(), crk.Options{MasterKey: bytes.Repeat([]byte{5}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	defer tenants.Close()
	log := slog.New(slog.DiscardHandler)
	api := kpapi.NewServer(tenants, kpapi.WithLogger(log))
	tests := []struct {
		name   string
		ui     bool
		path   string
		status int
		csp    bool
		body   string
	}{
		{"sign-in page", true, "/ui/signin", http.StatusOK, true, "API key"},
		{"console root", true, "/ui/", http.StatusSeeOther, true, ""},
		{"console asset", true, "/ui/static/console.js", http.StatusOK, true, "Escape"},
		{"API beside the console", true, "/api/v2/keys", http.StatusBadRequest, false, `Bluemix-Instance`},
		{"no console", false, "/ui/signin", http.StatusNotFound, false, ""},
		{"API alone", false, "/api/v2/keys", http.StatusBadRequest, false, `Bluemix-Instance`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := serveHandler(tenants, api, tc.ui, console.Options{Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, body)
			}
			if got := rec.Header().Get("Content-Security-Policy") != ""; got != tc.csp {
				t.Errorf("CSP present %v, want %v", got, tc.csp)
			}
			if !strings.Contains(string(body), tc.body) {
				t.Errorf("body lacks %q: %s", tc.body, body)
			}
		})
	}
}
