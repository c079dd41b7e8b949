package kms_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// serverStore is a store of the kpapi server the tests of the remote client run against.
type serverStore struct {
	name string
	// open opens a Tenants with opts on a store of t's own (the state directory under dir,
	// or a fresh instance of the database the binary's tests share) and returns it, closed
	// when t ends, with the instance the test works on and that instance's key service.
	open func(t testing.TB, dir string, opts crk.Options) (*kpapi.Tenants, string, *crk.Service)
}

// serverStores: a state directory, as `kms serve --state`, and PostgreSQL, as `kms serve
// --store postgres://…`.
var serverStores = []serverStore{
	{"dir", func(t testing.TB, dir string, opts crk.Options) (*kpapi.Tenants, string, *crk.Service) {
		tenants, err := kpapi.OpenTenants(filepath.Join(dir, "state"), opts)
		require.NoError(t, err)
		t.Cleanup(func() { tenants.Close() })
		inst, svc := tenants.Default()
		require.NotNil(t, svc)
		return tenants, inst, svc
	}},
	{"postgres", func(t testing.TB, _ string, opts crk.Options) (*kpapi.Tenants, string, *crk.Service) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		tenants, err := kpapi.OpenTenantsDatabase(ctx, sharedDatabase(t), opts)
		require.NoError(t, err)
		t.Cleanup(func() { tenants.Close() })
		inst, err := tenants.CreateInstance(t.Name())
		require.NoError(t, err)
		svc, err := tenants.Service(inst)
		require.NoError(t, err)
		return tenants, inst, svc
	}},
}

// forEachStore runs test once per store of [serverStores], as parallel subtests named
// after them.
//
// The PostgreSQL subtests run in the long run (CRKVOL_LONG_TESTS=1, as in CI), to keep a
// plain go test ./... within its time; TestRemoteDatabaseOutage runs on PostgreSQL in every
// run.
func forEachStore(t *testing.T, test func(t *testing.T, st serverStore)) {
	for _, st := range serverStores {
		t.Run(st.name, func(t *testing.T) {
			if st.name == "postgres" && !tooltest.Long() {
				t.Skip("the PostgreSQL variant of the API tests runs with CRKVOL_LONG_TESTS=1 (CI)")
			}
			t.Parallel()
			test(t, st)
		})
	}
}

// sharedDatabase returns the URL of the database the tests of the binary share, each on
// instances of its own.
func sharedDatabase(t testing.TB) string {
	return pgtest.Start(t).SharedDatabase(t, "kms_tests")
}
