package main

import (
	"context"
	"fmt"

	"crkvol/volume"
	"crkvol/volume/kms"
)

// keyStatusJSON is what volume status and volume list say of a volume's root key: its state
// and latest version, whether it unwraps (volume.KeyStatus.Usable), and whether the volume is
// behind it (its token wraps the passphrase with an older version than the latest). A key that
// cannot be read (not in the store, the service unreachable) has the state "unknown" and the
// reason in KeyError; Usable, Behind and LatestVersion are then left out.
type keyStatusJSON struct {
	KeyState         string `json:"keyState,omitempty"`
	KeyLatestVersion string `json:"keyLatestVersion,omitempty"`
	KeyUsable        *bool  `json:"keyUsable,omitempty"`
	Behind           *bool  `json:"behind,omitempty"`
	KeyError         string `json:"keyError,omitempty"`
}

// keyStateUnknown is the keyState of a key that could not be read.
const keyStateUnknown = "unknown"

// keyStatuses asks the key service in use for the state of each key once per command: a
// listing of many volumes of one key costs one request (one metadata read of the embedded
// store, opened read-only by the commands that use this).
type keyStatuses struct {
	a    *app
	seen map[string]keyAnswer
}

// keyAnswer is the key service's answer for one key.
type keyAnswer struct {
	st  volume.KeyStatus
	err error
}

func (a *app) keyStatuses() *keyStatuses {
	return &keyStatuses{a: a, seen: map[string]keyAnswer{}}
}

// of returns the status of a volume of keyID whose token is on version (the token's key
// version; "" when the image could not be read, which leaves behind unknown).
func (k *keyStatuses) of(ctx context.Context, keyID, version string) keyStatusJSON {
	ans, ok := k.seen[keyID]
	if !ok {
		ans.st, ans.err = k.a.keyState(ctx, keyID)
		k.seen[keyID] = ans
	}
	if ans.err != nil {
		return keyStatusJSON{KeyState: keyStateUnknown, KeyError: errorText(ans.err)}
	}
	usable := ans.st.Usable()
	out := keyStatusJSON{KeyState: ans.st.State, KeyLatestVersion: ans.st.LatestVersion, KeyUsable: &usable}
	if version != "" {
		behind := version != ans.st.LatestVersion
		out.Behind = &behind
	}
	return out
}

// keyState asks the key service in use (opening it if needed) for a key's state and latest
// version.
func (a *app) keyState(ctx context.Context, keyID string) (volume.KeyStatus, error) {
	if err := a.open(ctx); err != nil {
		return volume.KeyStatus{}, err
	}
	if a.remote != nil {
		return a.remote.KeyState(ctx, keyID)
	}
	return kms.NewLocal(a.svc).KeyState(ctx, keyID)
}

// The text forms escape what a remote service sent (shown).

// stateLine is the status text of a key's state: the state and whether it is usable, or
// unknown with the reason.
func (k keyStatusJSON) stateLine() string {
	switch {
	case k.KeyError != "":
		return keyStateUnknown + ": " + shown(k.KeyError)
	case k.KeyUsable != nil && *k.KeyUsable:
		return k.KeyState + " (usable)"
	}
	return k.KeyState + " (not usable: the volume cannot be opened until the key is usable again)"
}

// stateCell is the volume list cell of a key's state.
func (k keyStatusJSON) stateCell() string {
	switch {
	case k.KeyError != "":
		return keyStateUnknown + ": " + shown(k.KeyError)
	case k.KeyUsable != nil && !*k.KeyUsable:
		return k.KeyState + " (not usable)"
	}
	return k.KeyState
}

// behindCell is yes, no or unknown.
func (k keyStatusJSON) behindCell() string {
	switch {
	case k.Behind == nil:
		return keyStateUnknown
	case *k.Behind:
		return "yes"
	}
	return "no"
}

// behindLine is the status text of whether the volume is behind its key, with the command
// that brings it up to date.
func (k keyStatusJSON) behindLine(keyID string) string {
	if k.Behind != nil && *k.Behind {
		return fmt.Sprintf("yes: the key's latest version is %s (crkvol key sync %s rewraps it)", shown(k.KeyLatestVersion), keyID)
	}
	return k.behindCell()
}
