package console_test

import (
	"bytes"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"

	"crkvol/crk"
	"crkvol/crk/console"
	"crkvol/crk/kpapi"
)

// ExampleNew serves the console beside the Key Protect API, as kms serve does.
func ExampleNew() {
	dir, err := os.MkdirTemp("", "console-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tenants, err := kpapi.OpenTenants(dir, crk.Options{MasterKey: bytes.Repeat([]byte{1}, 32)})
	if err != nil {
		log.Fatal(err)
	}
	defer tenants.Close()
	ui, err := console.New(tenants, console.Options{})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, ui)
	mux.Handle("/", kpapi.NewServer(tenants))

	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/i/some-instance/keys", nil))
	fmt.Println(rec.Code, rec.Header().Get("Location"))
	// Output: 303 /ui/signin
}
