package kpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/pgtest"
)

// benchClients is how many clients BenchmarkServerWrapUnwrap32 runs at once.
const benchClients = 32

// BenchmarkServerWrapUnwrap32 measures wrap+unwrap pairs per second through the official
// client with 32 concurrent clients, each with its own keep-alive connection pool, its own
// bearer token (from an API key, so every request is authorised by the tenant store) and its
// own root key, against three setups in one run:
//
//   - bolt: one server on a state directory (bbolt, fsync on every commit, as kms serve runs);
//   - postgres-1: one server on a PostgreSQL database;
//   - postgres-3: three servers (three OpenTenantsDatabase on one database, each with its own
//     connection pool), the clients spread round-robin over them.
//
// The PostgreSQL server is internal/pgtest's: on a unix socket, with fsync and
// synchronous_commit off, so its figures are an upper bound of what a durable server gives.
func BenchmarkServerWrapUnwrap32(b *testing.B) {
	for _, setup := range []struct {
		name    string
		servers func(b *testing.B) ([]*Tenants, string)
	}{
		{"bolt", func(b *testing.B) ([]*Tenants, string) {
			tenants, err := OpenTenants(b.TempDir(), crk.Options{MasterKey: testMasterKey()})
			require.NoError(b, err)
			b.Cleanup(func() { tenants.Close() })
			return []*Tenants{tenants}, ""
		}},
		{"postgres-1", func(b *testing.B) ([]*Tenants, string) { return benchReplicas(b, 1) }},
		{"postgres-3", func(b *testing.B) ([]*Tenants, string) { return benchReplicas(b, 3) }},
	} {
		b.Run(setup.name, func(b *testing.B) {
			servers, url := setup.servers(b)
			benchWrapUnwrap(b, servers, url)
		})
	}
}

// commits returns the transactions committed in the database at url so far, as PostgreSQL's
// statistics count them.
func commits(b *testing.B, url string) int64 {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(b, err)
	defer conn.Close(ctx)
	var n int64
	require.NoError(b, conn.QueryRow(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`).Scan(&n))
	return n
}

// benchReplicas opens n Tenants on one fresh PostgreSQL database, as n kms serve replicas do.
func benchReplicas(b *testing.B, n int) ([]*Tenants, string) {
	url := pgtest.Start(b).NewDatabase(b)

	all := make([]*Tenants, n)
	for i := range all {
		tenants, err := OpenTenantsDatabase(context.Background(), url, crk.Options{MasterKey: testMasterKey()})
		require.NoError(b, err)
		b.Cleanup(func() { tenants.Close() })
		all[i] = tenants
	}
	return all, url
}

// benchWrapUnwrap serves each Tenants over loopback HTTP and runs b.N wrap+unwrap pairs
// shared among benchClients goroutines, client i talking to server i mod len(servers). It
// reports the commits of the servers' stores per pair ("commits/op", crk.StoreStats: with
// the group commit, far fewer than the pair's two audited operations) and, with the URL of
// the servers' PostgreSQL database, the transactions committed per pair ("tx/op", from
// PostgreSQL's statistics, the token and key reads included).
func benchWrapUnwrap(b *testing.B, servers []*Tenants, dbURL string) {
	ctx := context.Background()
	urls := make([]string, len(servers))
	for i, tenants := range servers {
		srv := httptest.NewServer(NewServer(tenants))
		b.Cleanup(srv.Close)
		urls[i] = srv.URL
	}
	inst, _ := servers[0].Default()
	apiKey, err := servers[0].CreateAPIKey(inst)
	require.NoError(b, err)
	clients := make([]*kp.Client, benchClients)
	keys := make([]string, benchClients)
	for i := range clients {
		tenants := servers[i%len(servers)]
		token, _, err := tenants.Exchange(apiKey)
		require.NoError(b, err)
		transport := kp.DefaultTransport().(*http.Transport).Clone()
		transport.DisableKeepAlives = false
		transport.MaxIdleConnsPerHost = 4 // the client's default pools no idle connection
		c, err := kp.New(kp.ClientConfig{BaseURL: urls[i%len(urls)], Authorization: "Bearer " + token, InstanceID: inst, Verbose: kp.VerboseNone}, transport)
		require.NoError(b, err)
		k, err := c.CreateRootKey(ctx, fmt.Sprintf("bench-%d", i), nil)
		require.NoError(b, err)
		clients[i], keys[i] = c, k.ID
		b.Cleanup(transport.CloseIdleConnections)
	}
	dek := []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)))
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	var before int64
	if dbURL != "" {
		before = commits(b, dbURL)
	}
	storeCommits := func() (n uint64) {
		for _, tenants := range servers {
			_, svc := tenants.Default()
			n += svc.StoreStats().Commits
		}
		return n
	}
	commitsBefore := storeCommits()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				ct, err := clients[i].Wrap(ctx, keys[i], dek, nil)
				if err == nil {
					_, err = clients[i].Unwrap(ctx, keys[i], ct, nil)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("client %d: %w", i, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "wrap+unwrap/s")
	// The services' own count: their events' group commits, shared by concurrent callers.
	b.ReportMetric(float64(storeCommits()-commitsBefore)/float64(b.N), "commits/op")
	if dbURL != "" {
		// Backends flush their statistics within about a second of going idle.
		time.Sleep(1500 * time.Millisecond)
		b.ReportMetric(float64(commits(b, dbURL)-before)/float64(b.N), "tx/op")
	}
}
