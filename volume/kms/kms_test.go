package kms_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	kp "github.com/IBM/keyprotect-go-client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// newKeyService opens the embedded key service in a new directory and returns it with a
// volume.KeyService over it: in process ("embedded"), or ("remote") the official Key Protect
// client against kpapi on loopback, authenticated with an API key. Everything is closed when
// the test ends.
func newKeyService(t *testing.T, mode string) (dir string, clock *crk.ManualClock, svc *crk.Service, ks volume.KeyService) {
	t.Helper()
	dir = t.TempDir()
	clock = crk.NewManualClock(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	tenants, err := kpapi.OpenTenants(filepath.Join(dir, "state"), crk.Options{Clock: clock, MasterKey: bytes.Repeat([]byte{4}, 32)})
	require.NoError(t, err)
	t.Cleanup(func() { tenants.Close() })
	inst, svc := tenants.Default()
	ks = kms.NewLocal(svc)
	if mode == "remote" {
		srv := httptest.NewServer(kpapi.NewServer(tenants))
		t.Cleanup(srv.Close)
		apiKey, err := tenants.CreateAPIKey(inst)
		require.NoError(t, err)
		ks, err = kms.NewRemote(kms.RemoteConfig{URL: srv.URL, Instance: inst, APIKey: apiKey})
		require.NoError(t, err)
	}
	return dir, clock, svc, ks
}

// TestVolumeLifecycle runs create, write, rotate, reopen and verify with the embedded key
// service and with the remote one (the official Key Protect client against kpapi on
// loopback, authenticated with an API key).
func TestVolumeLifecycle(t *testing.T) {
	for _, mode := range []string{"embedded", "remote"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			dir, _, svc, ks := newKeyService(t, mode)
			reg, err := volume.OpenRegistry(filepath.Join(dir, "volumes.db"))
			require.NoError(t, err)
			defer reg.Close()
			mgr := volume.NewManager(ks, reg, volume.Options{})
			defer mgr.Close()

			key, err := svc.CreateRootKey(ctx, "lifecycle")
			require.NoError(t, err)
			path := filepath.Join(dir, "vol.img")
			info, err := mgr.Create(ctx, path, volume.CreateOptions{KeyID: key.ID, Size: 2 << 20, KeyslotsSize: 512 << 10})
			require.NoError(t, err)
			assert.Equal(t, key.CRN, info.KeyCRN)
			regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: key.ID})
			require.NoError(t, err)
			require.Len(t, regs, 1, "registered through the %s key service", mode)
			assert.Equal(t, info.CRN, regs[0].ResourceCRN)
			if r, ok := ks.(*kms.Remote); ok {
				// The official client lists the registration too (with Remote's token: it is
				// not given the API key).
				var crns []string
				var prevent []bool
				err := r.Authorized(ctx, func(ctx context.Context, auth string) error {
					list, err := r.Client().ListRegistrations(kp.NewContextWithAuth(ctx, auth), key.ID, "")
					if err == nil {
						for _, reg := range list.Registrations {
							crns, prevent = append(crns, reg.ResourceCrn), append(prevent, reg.PreventKeyDeletion)
						}
					}
					return err
				})
				require.NoError(t, err)
				assert.Equal(t, []string{info.CRN}, crns)
				assert.Equal(t, []bool{true}, prevent)
			}

			v, err := mgr.Open(ctx, path)
			require.NoError(t, err)
			data := bytes.Repeat([]byte("lifecycle "), 10000)
			_, err = v.WriteAt(data, 12345)
			require.NoError(t, err)
			require.NoError(t, v.Close())

			rotated, err := svc.RotateKey(ctx, key.ID, nil)
			require.NoError(t, err)
			// The embedded service calls the hook; a remote one cannot, so sync.
			rep, err := mgr.Sync(ctx, key.ID)
			require.NoError(t, err)
			require.NoError(t, rep.Err())
			d, err := volume.Describe(path)
			require.NoError(t, err)
			assert.Equal(t, rotated.KeyVersion.ID, d.KeyVersion)
			regs, err = svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: key.ID})
			require.NoError(t, err)
			assert.Equal(t, rotated.KeyVersion.ID, regs[0].KeyVersion.ID)

			v, err = mgr.Open(ctx, path)
			require.NoError(t, err)
			got := make([]byte, len(data))
			_, err = v.ReadAt(got, 12345)
			require.NoError(t, err)
			require.NoError(t, v.Close())
			assert.True(t, bytes.Equal(data, got))

			require.NoError(t, mgr.Delete(ctx, path, volume.DeleteOptions{RemoveImage: true}))
			regs, err = svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: key.ID})
			require.NoError(t, err)
			assert.Empty(t, regs)
		})
	}
}
