package kms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// evilVersion is a key version id that would set a terminal's title.
const evilVersion = "v\x1b]0;x\x07"

// TestRemoteRefusesMalformedIDs: a key id or key version id from the service that is not a
// well-formed UUID, or a key CRN that is not a CRN, is an error matching
// volume.ErrIncompleteAnswer (a failure, not a refusal) in every answer whose ids crkvol
// stores or prints: wrap, unwrap, rewrap and key metadata. The text is not in the error.
func TestRemoteRefusesMalformedIDs(t *testing.T) {
	const good = "0f9e4a55-1c1e-4f5e-8d1a-6b2f0b9e8a11"
	const crn = "crn:v1:local:public:kms:local:a/crkvol:inst:key:" + good
	version := func(id string) map[string]string { return map[string]string{"id": id} }
	key := func(id, v, crn string) map[string]any {
		return map[string]any{"resources": []map[string]any{{"id": id, "crn": crn, "keyVersion": version(v)}}}
	}
	type answer struct {
		call string
		body any
	}
	cases := []answer{{"keycrn", key(good, good, "crn:v1:\x1b]0;x\x07")}}
	for _, bad := range []string{evilVersion, "k1", "{" + good + "}", good + "\n", "urn:uuid:" + good} {
		cases = append(cases, []answer{
			{"wrap", map[string]any{"ciphertext": "Y3Q=", "keyVersion": version(bad)}},
			{"unwrap", map[string]any{"plaintext": "c2VjcmV0", "keyVersion": version(bad)}},
			{"unwrap", map[string]any{"plaintext": "c2VjcmV0", "keyVersion": version(good), "ciphertext": "Y3Q=", "rewrappedKeyVersion": version(bad)}},
			{"rewrap", map[string]any{"ciphertext": "Y3Q=", "keyVersion": version(good), "rewrappedKeyVersion": version(bad)}},
			{"keycrn", key(bad, good, crn)},
			{"keycrn", key(good, bad, crn)},
			{"metadata", key(bad, good, crn)},
			{"metadata", key(good, bad, crn)},
			{"registrations", key(good, bad, crn)},
		}...)
	}
	for _, tc := range cases {
		body, err := json.Marshal(tc.body)
		require.NoError(t, err)
		t.Run(tc.call+" "+string(body), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			}))
			defer srv.Close()
			r, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: "inst", Token: "t"})
			require.NoError(t, err)
			ctx := t.Context()
			var got any
			switch tc.call {
			case "wrap":
				got, err = r.Wrap(ctx, "k", []byte("secret"), []string{"vol"})
			case "unwrap":
				var u volume.Unwrapped
				u, err = r.Unwrap(ctx, "k", []byte("Y3Q="), []string{"vol"})
				assert.Empty(t, u.Plaintext)
				got = u
			case "rewrap":
				got, err = r.Rewrap(ctx, "k", []byte("Y3Q="), []string{"vol"})
			case "keycrn":
				got, err = r.KeyCRN(ctx, "k")
			case "metadata":
				got, err = r.KeyMetadata(ctx, "k")
			case "registrations":
				_, got, err = r.Registrations(ctx, "k")
			}
			require.ErrorIs(t, err, volume.ErrIncompleteAnswer, "%+v", got)
			assert.NotErrorIs(t, err, volume.ErrKeyRefused)
			assert.NotContains(t, err.Error(), "\x1b")
		})
	}
}

// TestRemoteMalformedVersionNeverStored: a key service whose wrap or rewrap answer names the
// version "v\x1b]0;x\x07" is refused before any token is written: creating a volume fails and
// leaves no volume, and a sync leaves the token on its old, valid version.
func TestRemoteMalformedVersionNeverStored(t *testing.T) {
	for _, action := range []string{"wrap", "rewrap"} {
		t.Run(action, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			clock := crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
			tenants, err := kpapi.OpenTenants(filepath.Join(dir, "state"), crk.Options{Clock: clock, MasterKey: bytes.Repeat([]byte{4}, 32)})
			require.NoError(t, err)
			defer tenants.Close()
			inst, svc := tenants.Default()
			api := kpapi.NewServer(tenants)
			var mu sync.Mutex
			evil := false
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				// The single call, or (rewrap) crkvol's batch call, whose items are each a
				// single call's answer.
				single := strings.HasSuffix(r.URL.Path, "/actions/"+action)
				batch := action == "rewrap" && strings.HasPrefix(r.URL.Path, "/api/crkvol/") && strings.HasSuffix(r.URL.Path, "/rewrap")
				on := evil && (single || batch)
				mu.Unlock()
				if !on {
					api.ServeHTTP(w, r)
					return
				}
				rec := httptest.NewRecorder()
				api.ServeHTTP(rec, r)
				var res map[string]any
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &res))
				answers := []any{res}
				if batch {
					answers, _ = res["items"].([]any)
				}
				for _, a := range answers {
					item, _ := a.(map[string]any)
					for _, f := range []string{"keyVersion", "rewrappedKeyVersion"} {
						if item[f] != nil {
							item[f] = map[string]string{"id": evilVersion}
						}
					}
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.Header().Del("Content-Length")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(rec.Code)
				_ = json.NewEncoder(w).Encode(res)
			}))
			defer srv.Close()
			apiKey, err := tenants.CreateAPIKey(inst)
			require.NoError(t, err)
			remote, err := kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
			require.NoError(t, err)
			reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
			require.NoError(t, err)
			defer reg.Close()
			mgr := volume.NewManager(remote, reg, volume.Options{})
			defer mgr.Close()
			key, err := svc.CreateRootKey(ctx, "evil")
			require.NoError(t, err)
			path := filepath.Join(dir, "vol.img")
			opts := volume.CreateOptions{KeyID: key.ID, Size: 2 << 20, KeyslotsSize: 512 << 10}

			if action == "wrap" {
				mu.Lock()
				evil = true
				mu.Unlock()
				_, err := mgr.Create(ctx, path, opts)
				require.ErrorIs(t, err, volume.ErrIncompleteAnswer)
				_, err = volume.Describe(path)
				require.Error(t, err, "no volume is left behind")
				regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: key.ID})
				require.NoError(t, err)
				assert.Empty(t, regs)
				return
			}
			_, err = mgr.Create(ctx, path, opts)
			require.NoError(t, err)
			_, err = svc.RotateKey(ctx, key.ID, nil)
			require.NoError(t, err)
			mu.Lock()
			evil = true
			mu.Unlock()
			rep, err := mgr.Sync(ctx, key.ID)
			require.NoError(t, err)
			require.Len(t, rep.Failed, 1)
			for _, ferr := range rep.Failed {
				assert.ErrorIs(t, ferr, volume.ErrIncompleteAnswer)
			}
			d, err := volume.Describe(path)
			require.NoError(t, err)
			assert.Equal(t, key.KeyVersion.ID, d.KeyVersion, "the token keeps its old version")
		})
	}
}
