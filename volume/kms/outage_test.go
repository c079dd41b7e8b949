package kms_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/pgdb"
	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// TestRemoteDatabaseOutage: while the server's database is down, the remote client's calls
// fail with an error that is crk.ErrUnavailable and not a refusal (the server answered 503),
// with a token checked in the database and with an API key to exchange; once the database
// is back, the same clients and server work again, none restarted.
func TestRemoteDatabaseOutage(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("stops a PostgreSQL cluster of its own: runs with CRKVOL_LONG_TESTS=1 (CI); crk/kpapi's TestDatabaseOutage covers an outage in every run")
	}
	c := pgtest.New(t) // a cluster of the test's own, since it stops it
	dbURL := c.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The tenants' transactions give up quickly: by default they try for 10 s. Every
	// request with an issued token is checked in the database (any replica may have issued
	// it), so the outage shows at once.
	db, err := pgdb.Open(ctx, dbURL, pgdb.Options{RetryFor: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	services, err := crk.OpenDatabase(ctx, dbURL, nil)
	require.NoError(t, err)
	t.Cleanup(func() { services.Close() })
	tenants, err := kpapi.OpenTenantsPostgres(ctx, db, func(id string) (*crk.Service, error) {
		return services.Open(crk.Options{MasterKey: bytes.Repeat([]byte{4}, 32), Instance: id})
	})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	srv := httptest.NewServer(kpapi.NewServer(tenants))
	t.Cleanup(srv.Close)
	inst, svc := tenants.Default()
	require.NotNil(t, svc)
	k, err := svc.CreateRootKey(ctx, "outage")
	require.NoError(t, err)
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	tok, _, err := tenants.Exchange(apiKey)
	require.NoError(t, err)
	r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, Token: tok})
	require.NoError(t, err)
	ct, err := r.Wrap(ctx, k.ID, bytes.Repeat([]byte{1}, 32), []string{"vol"})
	require.NoError(t, err)

	// A client that exchanges the API key meets the outage at the token endpoint. Its
	// Timeout leaves no room for the retries of the exchange (a quarter of it, and the first
	// wait is a second), which would meet the same outage.
	fresh, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey, Timeout: 2 * time.Second})
	require.NoError(t, err)

	c.Stop()
	_, err = r.Unwrap(ctx, k.ID, ct.Ciphertext, []string{"vol"})
	require.Error(t, err)
	assert.ErrorIs(t, err, crk.ErrUnavailable)
	assert.NotErrorIs(t, err, volume.ErrKeyRefused, "an outage is no refusal")
	assert.Contains(t, err.Error(), "503")
	_, err = fresh.Unwrap(ctx, k.ID, ct.Ciphertext, []string{"vol"})
	require.Error(t, err)
	assert.ErrorIs(t, err, crk.ErrUnavailable, "the token endpoint's 503")
	assert.NotErrorIs(t, err, volume.ErrKeyRefused, "an outage is no refusal of the API key")
	assert.NotContains(t, err.Error(), "refused", "an outage is no refusal of the API key")

	c.StartAgain(t)
	for _, client := range []*kms.Remote{r, fresh} {
		got, err := client.Unwrap(ctx, k.ID, ct.Ciphertext, []string{"vol"})
		require.NoError(t, err)
		assert.Equal(t, bytes.Repeat([]byte{1}, 32), got.Plaintext)
	}
}
