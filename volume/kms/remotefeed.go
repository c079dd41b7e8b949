package kms

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"crkvol/crk"
	"crkvol/crk/kpapi"
	"crkvol/volume"
)

// KeyEvents implements volume.KeyFeed over the service's lifecycle feed
// ([kpapi.LifecyclePath], a crkvol extension of the Key Protect API that `crkvol kms serve`
// offers): a long poll of at most wait ([kpapi.MaxLifecycleWait] at most; a longer wait is
// cut to it, and an empty page comes back after it), with Remote's tokens, TLS settings and
// error mapping, and at most [RemoteFeedLimit] events a page. The request's timeout is RemoteConfig.Timeout beyond the wait. It is one
// attempt (once more with a fresh token after a 401): a follower polls again anyway.
//
// A cursor the feed cannot continue from is an error matching both volume.ErrResyncNeeded
// and crk.ErrResyncNeeded (the service's 410). An answer without a well-formed cursor, or
// with an event without one or without a well-formed key id, matches
// volume.ErrIncompleteAnswer.
func (r *Remote) KeyEvents(ctx context.Context, cursor string, wait time.Duration) (volume.KeyEventPage, error) {
	wait = min(max(wait, 0), kpapi.MaxLifecycleWait)
	q := url.Values{}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	q.Set("limit", strconv.Itoa(RemoteFeedLimit))
	path := kpapi.LifecyclePath
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	hc := &http.Client{Transport: r.http.Transport, Timeout: r.cfg.Timeout + wait}
	var page crk.LifecyclePage
	err := r.authorized(ctx, func(ctx context.Context, auth string) error {
		page = crk.LifecyclePage{}
		return r.sendWith(ctx, hc, auth, http.MethodGet, path, nil, &page)
	})
	if err != nil {
		return volume.KeyEventPage{}, fmt.Errorf("kms: lifecycle feed: %w", err)
	}
	if err := checkPage(page); err != nil {
		return volume.KeyEventPage{}, fmt.Errorf("kms: lifecycle feed: %w", err)
	}
	return keyEventPage(page), nil
}

// RemoteFeedLimit is the most events Remote asks one answer of the lifecycle feed for: a
// page of that many events fits the answer body Remote accepts (about 1 KiB an event at
// most, against a 1 MiB cap), whatever the server's default.
const RemoteFeedLimit = 500

// checkPage refuses a lifecycle answer that cannot be followed: no cursor, or an event
// without a cursor or a well-formed key id.
func checkPage(p crk.LifecyclePage) error {
	if p.Cursor == "" {
		return fmt.Errorf("%w: the answer has no cursor", volume.ErrIncompleteAnswer)
	}
	if _, err := crk.ParseFeedCursor(p.Cursor); err != nil {
		return fmt.Errorf("%w: the answer's cursor is malformed", volume.ErrIncompleteAnswer)
	}
	for i, e := range p.Events {
		if _, err := crk.ParseFeedCursor(e.Cursor); err != nil || e.Cursor == "" {
			return fmt.Errorf("%w: event %d has no well-formed cursor", volume.ErrIncompleteAnswer, i)
		}
		if err := checkID("key id of event "+e.Cursor, e.KeyID); err != nil {
			return err
		}
	}
	return nil
}

// AckKeyEvent implements volume.KeyAcker over the service's acknowledgements
// ([kpapi.AcksPath], a crkvol extension of the Key Protect API that `crkvol kms serve`
// offers), with Remote's tokens, TLS settings and error mapping: a refusal matches
// volume.ErrKeyRefused and the crk sentinel the service answered with (crk.ErrKeyNotFound,
// crk.ErrInvalidArgument, crk.ErrKeyPurged, ...). It is one attempt (once more with a fresh
// token after a 401); the agent acknowledges again at its next reconciliation. Recording an
// acknowledgement twice does no harm: the service keeps the latest.
func (r *Remote) AckKeyEvent(ctx context.Context, a volume.KeyAck) error {
	body, err := json.Marshal(kpapi.AckBody{Host: a.Host, KeyID: a.KeyID, Type: a.Type, State: a.State,
		Version: a.Version, Volumes: a.Volumes, Stopped: a.Stopped, Cursor: a.Cursor})
	if err != nil {
		return err
	}
	err = r.authorized(ctx, func(ctx context.Context, auth string) error {
		return r.send(ctx, auth, http.MethodPost, kpapi.AcksPath, body, nil)
	})
	if err != nil {
		return fmt.Errorf("kms: acknowledging %s of key %s: %w", a.Type, a.KeyID, err)
	}
	return nil
}

var (
	_ volume.KeyFeed  = (*Remote)(nil)
	_ volume.KeyAcker = (*Remote)(nil)
)
