package kms_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/internal/tooltest"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// batchModes are the key services the batch tests run on: in process, the remote client
// against crkvol's server, and against servers without the batch routes (as Key Protect),
// which answer them 404 or 405. oneCommit tells the modes that make one commit per call.
var batchModes = []struct {
	name      string
	oneCommit bool
	noRoute   int // the status the server answers the batch routes with; 0: served
}{
	{"embedded", true, 0},
	{"remote", true, 0},
	{"keyprotect-404", false, http.StatusNotFound},
	{"keyprotect-405", false, http.StatusMethodNotAllowed},
}

// batchEnv is a key service for the batch tests and the crk service behind it.
type batchEnv struct {
	svc *crk.Service
	ks  volume.KeyService
	// tried counts the requests that reached the batch routes' paths.
	tried *atomic.Int32
}

// forEachBatchEnv runs test on every store of serverStores and every mode of batchModes,
// on PostgreSQL in the long run (CRKVOL_LONG_TESTS=1, as in CI): this package's plain run
// starts no PostgreSQL cluster, and crk's and crk/kpapi's batch tests check the one commit
// on PostgreSQL in every run.
func forEachBatchEnv(t *testing.T, test func(t *testing.T, oneCommit bool, e batchEnv)) {
	for _, st := range serverStores {
		for _, mode := range batchModes {
			t.Run(st.name+"/"+mode.name, func(t *testing.T) {
				if st.name == "postgres" && !tooltest.Long() {
					t.Skip("the PostgreSQL variant of the batch tests runs with CRKVOL_LONG_TESTS=1 (CI)")
				}
				t.Parallel()
				opts := crk.Options{Clock: crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)), MasterKey: bytes.Repeat([]byte{4}, 32)}
				tenants, inst, svc := st.open(t, t.TempDir(), opts)
				e := batchEnv{svc: svc, ks: kms.NewLocal(svc), tried: new(atomic.Int32)}
				if mode.name != "embedded" {
					api := kpapi.NewServer(tenants)
					srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if strings.HasPrefix(r.URL.Path, "/api/crkvol/v1/keys/") {
							e.tried.Add(1)
							if mode.noRoute != 0 {
								// As another service might answer: an error envelope whose
								// reason even reads as a refusal of the key, without
								// kpapi.BatchHeader.
								w.Header().Set("Content-Type", "application/json")
								w.WriteHeader(mode.noRoute)
								fmt.Fprintf(w, `{"metadata":{"collectionType":"application/vnd.ibm.kms.error+json","collectionTotal":1},`+
									`"resources":[{"errorMsg":%q,"reasons":[{"code":"KEY_NOT_FOUND_ERR","message":"no route","status":%d}]}]}`,
									http.StatusText(mode.noRoute), mode.noRoute)
								return
							}
						}
						api.ServeHTTP(w, r)
					}))
					t.Cleanup(srv.Close)
					apiKey, err := tenants.CreateAPIKey(inst)
					require.NoError(t, err)
					e.ks, err = kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
					require.NoError(t, err)
				}
				test(t, mode.oneCommit, e)
			})
		}
	}
}

// countEvents returns how many audit events of action the service holds.
func countEvents(t *testing.T, svc *crk.Service, action string) int {
	t.Helper()
	evs, err := svc.Events(context.Background(), crk.EventFilter{Action: action})
	require.NoError(t, err)
	return len(evs)
}

// refusedAll checks that a batch call was refused as a whole with want, or (a service that
// answers item by item) that every item was.
func refusedAll(t *testing.T, err error, errs []error, n int, want error) {
	t.Helper()
	if err != nil {
		assert.ErrorIs(t, err, want)
		assert.ErrorIs(t, err, volume.ErrKeyRefused)
		return
	}
	require.Len(t, errs, n)
	for i, e := range errs {
		assert.ErrorIs(t, e, want, "item %d", i)
		assert.ErrorIs(t, e, volume.ErrKeyRefused, "item %d", i)
	}
}

// TestRewrapBatch: good items are rewrapped to the latest version beside items refused one
// by one (another key's ciphertext, a wrong AAD), with errors.Is finding crk's sentinel and
// volume.ErrKeyRefused on every side; each item is one audit event, and the in-process
// service makes one commit for the call; a disabled key refuses every item.
func TestRewrapBatch(t *testing.T) {
	forEachBatchEnv(t, func(t *testing.T, oneCommit bool, e batchEnv) {
		ctx, svc, ks := context.Background(), e.svc, e.ks
		k, err := svc.CreateRootKey(ctx, "batch")
		require.NoError(t, err)
		other, err := svc.CreateRootKey(ctx, "other")
		require.NoError(t, err)
		aad := func(i int) []string { return []string{"5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b1" + string(rune('0'+i))} }
		var items []volume.RewrapItem
		for i := range 3 {
			w, err := ks.Wrap(ctx, k.ID, []byte("passphrase of volume "+string(rune('0'+i))), aad(i))
			require.NoError(t, err)
			items = append(items, volume.RewrapItem{Ciphertext: w.Ciphertext, AAD: aad(i)})
		}
		wo, err := ks.Wrap(ctx, other.ID, []byte("another key's"), aad(3))
		require.NoError(t, err)
		items = append(items,
			volume.RewrapItem{Ciphertext: wo.Ciphertext, AAD: aad(3)},
			volume.RewrapItem{Ciphertext: items[0].Ciphertext, AAD: aad(4)})
		r2, err := svc.RotateKey(ctx, k.ID, nil)
		require.NoError(t, err)

		events := countEvents(t, svc, crk.ActionRewrap)
		commits := svc.StoreStats().Commits
		out, errs, err := ks.RewrapBatch(ctx, k.ID, items)
		require.NoError(t, err)
		if oneCommit {
			assert.Equal(t, uint64(1), svc.StoreStats().Commits-commits, "one commit for the call")
		}
		tried := e.tried.Load()
		assert.Equal(t, events+len(items), countEvents(t, svc, crk.ActionRewrap), "one event per item")
		require.Len(t, out, len(items))
		require.Len(t, errs, len(items))
		for i := range 3 {
			require.NoError(t, errs[i], "item %d", i)
			assert.Equal(t, r2.KeyVersion.ID, out[i].VersionID)
			u, err := ks.Unwrap(ctx, k.ID, out[i].Ciphertext, aad(i))
			require.NoError(t, err)
			assert.Equal(t, "passphrase of volume "+string(rune('0'+i)), string(u.Plaintext))
		}
		for i := 3; i < len(items); i++ {
			assert.ErrorIs(t, errs[i], crk.ErrAuth, "item %d", i)
			assert.ErrorIs(t, errs[i], volume.ErrKeyRefused, "item %d", i)
		}

		_, err = svc.DisableKey(ctx, k.ID)
		require.NoError(t, err)
		events = countEvents(t, svc, crk.ActionRewrap)
		_, errs, err = ks.RewrapBatch(ctx, k.ID, items[:3])
		refusedAll(t, err, errs, 3, crk.ErrKeySuspended)
		if oneCommit {
			assert.Equal(t, events+1, countEvents(t, svc, crk.ActionRewrap), "one event for the batch refused as a whole")
		} else {
			assert.Equal(t, events+3, countEvents(t, svc, crk.ActionRewrap), "the single calls: one event each")
		}

		if !oneCommit {
			assert.Equal(t, int32(1), tried, "the batch route tried once")
			assert.Equal(t, tried, e.tried.Load(), "and its absence remembered")
		}

		out, errs, err = ks.RewrapBatch(ctx, k.ID, nil)
		assert.NoError(t, err)
		assert.Empty(t, out)
		assert.Empty(t, errs)
	})
}

// TestUpdateRegistrations: registrations move forward, never back, beside an update of a
// registration that does not exist (refused alone); one event per update; the in-process
// service makes one commit; a destroyed key refuses every update.
func TestUpdateRegistrations(t *testing.T) {
	forEachBatchEnv(t, func(t *testing.T, oneCommit bool, e batchEnv) {
		ctx, svc, ks := context.Background(), e.svc, e.ks
		k, err := svc.CreateRootKey(ctx, "regs")
		require.NoError(t, err)
		crn := func(i int) string {
			return "crn:v1:local:public:is:local:a/crkvol::volume:5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b1" + string(rune('0'+i))
		}
		v1 := k.KeyVersion.ID
		for i := range 3 {
			require.NoError(t, ks.Register(ctx, k.ID, crn(i), v1, false))
		}
		r2, err := svc.RotateKey(ctx, k.ID, nil)
		require.NoError(t, err)
		v2 := r2.KeyVersion.ID
		require.NoError(t, ks.UpdateRegistration(ctx, k.ID, crn(2), v2))
		updates := []volume.RegistrationUpdate{
			{CRN: crn(0), VersionID: v2}, {CRN: crn(1), VersionID: v2},
			{CRN: crn(2), VersionID: v1}, // on v2 already: not moved back
			{CRN: crn(7), VersionID: v2}, // no such registration
		}
		events := countEvents(t, svc, crk.ActionRegUpdate)
		commits := svc.StoreStats().Commits
		errs, err := ks.UpdateRegistrations(ctx, k.ID, updates)
		require.NoError(t, err)
		if oneCommit {
			assert.Equal(t, uint64(1), svc.StoreStats().Commits-commits, "one commit for the call")
		}
		assert.Equal(t, events+len(updates), countEvents(t, svc, crk.ActionRegUpdate), "one event per update")
		require.Len(t, errs, len(updates))
		for i := range 3 {
			assert.NoError(t, errs[i], "update %d", i)
		}
		assert.ErrorIs(t, errs[3], crk.ErrRegistrationNotFound)
		assert.ErrorIs(t, errs[3], volume.ErrKeyRefused)
		regs, _, err := ks.Registrations(ctx, k.ID)
		require.NoError(t, err)
		for _, r := range regs {
			assert.Equal(t, v2, r.VersionID, r.CRN)
		}

		_, err = svc.DeleteKey(ctx, k.ID, crk.DeleteOptions{Force: true})
		require.NoError(t, err)
		tried := e.tried.Load()
		errs, err = ks.UpdateRegistrations(ctx, k.ID, updates[:2])
		refusedAll(t, err, errs, 2, crk.ErrKeyDestroyed)
		if !oneCommit {
			assert.Equal(t, int32(1), tried, "the batch route tried once")
			assert.Equal(t, tried, e.tried.Load(), "and its absence remembered")
		}
	})
}

// TestBatchChunks: more items than one batch call takes are sent in calls of
// kpapi.MaxBatchItems, one commit each, in process and over the API; the results keep the
// items' order.
func TestBatchChunks(t *testing.T) {
	forEachBatchEnv(t, func(t *testing.T, oneCommit bool, e batchEnv) {
		if !oneCommit {
			t.Skip("single calls: no chunks")
		}
		ctx := context.Background()
		k, err := e.svc.CreateRootKey(ctx, "chunks")
		require.NoError(t, err)
		const n = kpapi.MaxBatchItems + 1
		items := make([]volume.RewrapItem, n)
		updates := make([]volume.RegistrationUpdate, n)
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10"
		require.NoError(t, e.ks.Register(ctx, k.ID, crn, k.KeyVersion.ID, false))
		for i := range n {
			items[i] = volume.RewrapItem{AAD: []string{fmt.Sprint(i % 2)}}
			updates[i] = volume.RegistrationUpdate{CRN: crn, VersionID: k.KeyVersion.ID}
		}
		wraps := map[string][]byte{}
		for _, a := range []string{"0", "1"} {
			w, err := e.ks.Wrap(ctx, k.ID, []byte("passphrase "+a), []string{a})
			require.NoError(t, err)
			wraps[a] = w.Ciphertext
		}
		for i := range items {
			items[i].Ciphertext = wraps[items[i].AAD[0]]
		}
		items[n-1].AAD = []string{"wrong"}
		tried, commits := e.tried.Load(), e.svc.StoreStats().Commits
		out, errs, err := e.ks.RewrapBatch(ctx, k.ID, items)
		require.NoError(t, err)
		assert.Equal(t, uint64(2), e.svc.StoreStats().Commits-commits)
		for i := range n - 1 {
			require.NoError(t, errs[i], "item %d", i)
			require.NotEmpty(t, out[i].Ciphertext)
		}
		assert.ErrorIs(t, errs[n-1], crk.ErrAuth)
		u, err := e.ks.Unwrap(ctx, k.ID, out[n-2].Ciphertext, items[n-2].AAD)
		require.NoError(t, err)
		assert.Equal(t, "passphrase "+items[n-2].AAD[0], string(u.Plaintext))
		commits = e.svc.StoreStats().Commits
		errs, err = e.ks.UpdateRegistrations(ctx, k.ID, updates)
		require.NoError(t, err)
		assert.Equal(t, uint64(2), e.svc.StoreStats().Commits-commits)
		for i := range errs {
			require.NoError(t, errs[i], "update %d", i)
		}
		if _, remote := e.ks.(*kms.Remote); remote {
			assert.Equal(t, int32(4), e.tried.Load()-tried, "two requests per call")
		}
	})
}

// TestBatchAbsenceExpires: after a 404 without kpapi.BatchHeader the client makes single
// calls without asking again, but only for a while (batchRetryAfter): then it asks again, and
// uses the batch route of a service that has it now (an upgrade, or a proxy's 404 while a
// replica restarted).
func TestBatchAbsenceExpires(t *testing.T) {
	t.Parallel()
	st := serverStores[0]
	opts := crk.Options{Clock: crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)), MasterKey: bytes.Repeat([]byte{4}, 32)}
	tenants, inst, svc := st.open(t, t.TempDir(), opts)
	api := kpapi.NewServer(tenants)
	var tried atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/crkvol/v1/keys/") && tried.Add(1) == 1 {
			http.NotFound(w, r) // the first time only, without kpapi.BatchHeader
			return
		}
		api.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	apiKey, err := tenants.CreateAPIKey(inst)
	require.NoError(t, err)
	remote, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
	require.NoError(t, err)

	ctx := context.Background()
	k, err := svc.CreateRootKey(ctx, "batch")
	require.NoError(t, err)
	aad := []string{"5b3ae5d6-6a4c-4b8e-9f0e-2f4c1d7a9b10"}
	w, err := remote.Wrap(ctx, k.ID, []byte("passphrase"), aad)
	require.NoError(t, err)
	items := []volume.RewrapItem{{Ciphertext: w.Ciphertext, AAD: aad}, {Ciphertext: w.Ciphertext, AAD: aad}}
	for range 2 {
		_, errs, err := remote.RewrapBatch(ctx, k.ID, items)
		require.NoError(t, err)
		assert.Equal(t, []error{nil, nil}, errs, "single calls")
	}
	assert.Equal(t, int32(1), tried.Load(), "asked once, then remembered")

	kms.ExpireBatchAbsence(remote)
	commits := svc.StoreStats().Commits
	_, errs, err := remote.RewrapBatch(ctx, k.ID, items)
	require.NoError(t, err)
	assert.Equal(t, []error{nil, nil}, errs)
	assert.Equal(t, int32(2), tried.Load(), "asked again")
	assert.Equal(t, uint64(1), svc.StoreStats().Commits-commits, "and used the batch route: one commit")
}
