package kms

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	kp "github.com/IBM/keyprotect-go-client"

	"crkvol/crk"
	"crkvol/crk/kpapi"
)

// Key lifecycle calls of [Remote] beyond what volumes need, and the conversion of the
// official client's key to the API's own form, so that a caller prints a remote key as it
// prints one of the embedded service.

// APIKey returns k, as the official client read it, in the API's form ([kpapi.Key]): the
// same fields, times in RFC 3339 UTC to the second (absent times are ""). The text in it is
// the service's, unchecked: escape it ([kpapi.Printable]) before printing it.
func APIKey(k *kp.Key) kpapi.Key {
	out := kpapi.Key{
		ID: k.ID, Name: k.Name, Description: k.Description, Type: k.Type, State: k.State,
		Extractable: k.Extractable, Imported: k.Imported, CRN: k.CRN, AlgorithmType: k.AlgorithmType,
		CreatedBy: k.CreatedBy, CreationDate: timeText(k.CreationDate), LastUpdateDate: timeText(k.LastUpdateDate),
		LastRotateDate: timeText(k.LastRotateDate), ExpirationDate: timeText(k.Expiration),
		DeletionDate: timeText(k.DeletionDate), Payload: k.Payload, Aliases: k.Aliases, KeyRingID: k.KeyRingID,
	}
	if out.Type == "" {
		out.Type = kpapi.TypeKey
	}
	if k.KeyVersion != nil {
		out.KeyVersion = &kpapi.KeyVersion{ID: k.KeyVersion.ID, CreationDate: timeText(k.KeyVersion.CreationDate)}
	}
	if k.Rotation != nil {
		out.Rotation = &kpapi.Rotation{Enabled: k.Rotation.Enabled == nil || *k.Rotation.Enabled, IntervalMonth: k.Rotation.Interval}
	}
	// The official client reads only the policy's enabled member (not keySetForDeletion or
	// authExpiration); a key without the policy shows {"enabled":false}, as the service sends.
	out.DualAuthDelete = &kpapi.DualAuth{}
	if k.DualAuthDelete != nil && k.DualAuthDelete.Enabled != nil {
		out.DualAuthDelete.Enabled = *k.DualAuthDelete.Enabled
	}
	if k.Deleted != nil {
		out.Deleted = *k.Deleted
	}
	if k.DeletedBy != nil {
		out.DeletedBy = *k.DeletedBy
	}
	return out
}

// timeText formats t as the API does, or "" for nil or the zero time.
func timeText(t *time.Time) string {
	if t == nil {
		return ""
	}
	return kpapi.RFC3339(*t)
}

// Versions lists a key's versions, newest first, with the material state a crkvol service
// adds ([kpapi.KeyVersion].Destroyed; nil from a service that does not say). Like
// [Remote.KeyVersions] but read directly, one attempt, so that the extension is kept. The
// ids in the answer are the service's, unchecked: escape them ([kpapi.Printable]) before
// printing them.
func (r *Remote) Versions(ctx context.Context, keyID string) ([]kpapi.KeyVersion, error) {
	var res struct {
		Resources []kpapi.KeyVersion `json:"resources"`
	}
	if err := r.call(ctx, http.MethodGet, "keys/"+url.PathEscape(keyID)+"/versions?limit=5000", nil, &res); err != nil {
		return nil, fmt.Errorf("kms: key versions: %w", err)
	}
	return res.Resources, nil
}

// ListKeysIn lists the instance's keys in the given Key Protect states (1 active, 2
// suspended, 3 deactivated, 5 destroyed); with none, the service's default (every state but
// destroyed). The text in the answer is the service's, unchecked.
func (r *Remote) ListKeysIn(ctx context.Context, states ...int) ([]kpapi.Key, error) {
	opts := &kp.ListKeysOptions{}
	limit := uint32(5000)
	opts.Limit = &limit
	for _, s := range states {
		opts.State = append(opts.State, kp.KeyState(s))
	}
	var keys *kp.Keys
	err := r.authorized(ctx, func(ctx context.Context, auth string) error {
		return recovered(func() (err error) {
			keys, err = r.client.ListKeys(kp.NewContextWithAuth(ctx, auth), opts)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("kms: list keys: %w", clientError(err))
	}
	out := make([]kpapi.Key, 0, len(keys.Keys))
	for i := range keys.Keys {
		out = append(out, APIKey(&keys.Keys[i]))
	}
	return out, nil
}

// keyAction makes a request that changes a key, once (see [Remote.callOnce]), then reads the
// key back. did is what the service did, as in "deleted the key".
func (r *Remote) keyAction(ctx context.Context, what, did, method, path string, body []byte, keyID string) (kpapi.Key, error) {
	if err := r.callOnce(ctx, did, method, path, body, nil); err != nil {
		return kpapi.Key{}, fmt.Errorf("kms: %s: %w", what, err)
	}
	k, err := r.KeyMetadata(ctx, keyID)
	if err != nil {
		return kpapi.Key{}, err
	}
	return APIKey(k), nil
}

func keyPath(keyID string) string { return "keys/" + url.PathEscape(keyID) }

// DeleteKey deletes a key (force: even with registrations, never past preventKeyDeletion)
// and returns it as it is now.
func (r *Remote) DeleteKey(ctx context.Context, keyID string, force bool) (kpapi.Key, error) {
	path := keyPath(keyID)
	if force {
		path += "?force=true"
	}
	return r.keyAction(ctx, "delete key", "deleted the key", http.MethodDelete, path, nil, keyID)
}

// RestoreKey restores a deleted key within its restore window and returns it.
func (r *Remote) RestoreKey(ctx context.Context, keyID string) (kpapi.Key, error) {
	return r.keyAction(ctx, "restore key", "restored the key", http.MethodPost, keyPath(keyID)+"/restore", nil, keyID)
}

// PurgeKey destroys a deleted key's material for good and returns the key as it was read
// just before: a purged key no longer exists for the Key Protect API (every call on it is
// 404 KEY_NOT_FOUND_ERR, and no listing has it), so it cannot be read back.
func (r *Remote) PurgeKey(ctx context.Context, keyID string) (kpapi.Key, error) {
	k, err := r.KeyMetadata(ctx, keyID)
	if err != nil {
		return kpapi.Key{}, err
	}
	if err := r.callOnce(ctx, "purged the key", http.MethodDelete, keyPath(keyID)+"/purge", nil, nil); err != nil {
		return kpapi.Key{}, fmt.Errorf("kms: purge key: %w", err)
	}
	return APIKey(k), nil
}

// DisableKey suspends a root key and returns it.
func (r *Remote) DisableKey(ctx context.Context, keyID string) (kpapi.Key, error) {
	return r.keyAction(ctx, "disable key", "disabled the key", http.MethodPost, keyPath(keyID)+"/actions/disable", []byte("{}"), keyID)
}

// EnableKey re-enables a suspended root key and returns it.
func (r *Remote) EnableKey(ctx context.Context, keyID string) (kpapi.Key, error) {
	return r.keyAction(ctx, "enable key", "enabled the key", http.MethodPost, keyPath(keyID)+"/actions/enable", []byte("{}"), keyID)
}

// SetRotationPolicy sets a root key's rotation policy (months 1 to 12), or disables it
// (enabled false), and returns the key.
func (r *Remote) SetRotationPolicy(ctx context.Context, keyID string, months int, enabled bool) (kpapi.Key, error) {
	body := `{"metadata":{"collectionType":"` + kpapi.TypePolicy + `","collectionTotal":1},"resources":[{"type":"` +
		kpapi.TypePolicy + `","rotation":{"enabled":` + strconv.FormatBool(enabled) + `,"interval_month":` + strconv.Itoa(months) + `}}]}`
	return r.keyAction(ctx, "set rotation policy", "set the policy", http.MethodPut, keyPath(keyID)+"/policies?policy=rotation", []byte(body), keyID)
}

// ListRegistrations lists the registrations of a key as the service shows them. The text in
// the answer is the service's, unchecked: escape it ([kpapi.Printable]) before printing it.
func (r *Remote) ListRegistrations(ctx context.Context, keyID string) ([]kpapi.Registration, error) {
	var res struct {
		Resources []kpapi.Registration `json:"resources"`
	}
	if err := r.call(ctx, http.MethodGet, keyPath(keyID)+"/registrations", nil, &res); err != nil {
		return nil, fmt.Errorf("kms: registrations: %w", err)
	}
	return res.Resources, nil
}

// ResolveKey returns the id of the key idOrAlias names: a key id (a UUID, returned in lower
// case as it is) or an alias, which the service resolves (GET keys/{alias}/metadata). A
// string that is neither a UUID nor an alias by Key Protect's rules names no key
// (crk.ErrKeyNotFound) and is not sent.
func (r *Remote) ResolveKey(ctx context.Context, idOrAlias string) (string, error) {
	if crk.IsKeyIDShape(idOrAlias) { // as the service decides: an alias is never shaped so
		return strings.ToLower(idOrAlias), nil
	}
	if err := crk.CheckAlias(idOrAlias); err != nil {
		return "", fmt.Errorf("kms: %w: %q is neither a key id nor an alias: %w", crk.ErrKeyNotFound, idOrAlias, err)
	}
	k, err := r.KeyMetadata(ctx, idOrAlias)
	if err != nil {
		return "", err
	}
	return k.ID, nil
}
