package keyslot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// TokenInfo describes a token: its id, type and the keyslots it names.
type TokenInfo struct {
	ID       int
	Type     string
	Keyslots []int
}

// Tokens lists the tokens in id order.
func (img *Image) Tokens() []TokenInfo {
	m := img.snapshot().meta
	out := make([]TokenInfo, 0, len(m.tokens))
	for _, id := range sortedKeys(m.tokens) {
		info := TokenInfo{ID: id, Keyslots: tokenKeyslots(m.tokens[id])}
		if o, err := parseObject("token", m.tokens[id]); err == nil {
			info.Type, _ = o.str("type")
		}
		out = append(out, info)
	}
	return out
}

// Token returns token id as compact JSON, exactly as stored.
func (img *Image) Token(id int) (json.RawMessage, error) {
	m := img.snapshot().meta
	raw, ok := m.tokens[id]
	if !ok {
		return nil, fmt.Errorf("%w: token %d", ErrTokenNotFound, id)
	}
	return slices.Clone(raw), nil
}

// AddToken stores a new token and returns its id: the lowest free one when id is AnyToken.
// The token must be a JSON object with a non-empty string "type" (types starting with
// "luks2-" are reserved by cryptsetup) and "keyslots", an array of id strings naming existing
// keyslots; every other member is kept as given, and comes back unchanged from
// `cryptsetup token export`.
func (img *Image) AddToken(id int, token []byte) (int, error) {
	raw, err := checkNewToken(token)
	if err != nil {
		return -1, err
	}
	err = img.updateTokens(context.Background(), func(_ *state, m *metadata) error {
		if id == AnyToken {
			id = -1
			for i := range MaxTokens {
				if _, taken := m.tokens[i]; !taken {
					id = i
					break
				}
			}
			if id < 0 {
				return fmt.Errorf("%w: all %d tokens are in use", ErrNoSpace, MaxTokens)
			}
		} else if id < 0 || id >= MaxTokens {
			return fmt.Errorf("%w: token id %d out of range [0, %d)", ErrTokenNotFound, id, MaxTokens)
		} else if _, taken := m.tokens[id]; taken {
			return fmt.Errorf("keyslot: token %d already exists", id)
		}
		m.tokens[id] = raw
		return nil
	})
	if err != nil {
		return -1, err
	}
	return id, nil
}

// AnyToken asks AddToken for the lowest free token id.
const AnyToken = -1

// ReplaceToken replaces token id, which must exist, in one atomic metadata update.
func (img *Image) ReplaceToken(id int, token []byte) error {
	return img.UpdateToken(id, func(json.RawMessage) ([]byte, error) { return token, nil })
}

// UpdateToken replaces token id with fn(current) in one atomic metadata update. fn sees the
// token as it is on disk at that moment, under the image's exclusive lock, so concurrent
// updaters in other processes are serialised rather than lost. If fn fails nothing is written.
// fn runs while the Image is locked: it must not call methods of the same Image, and it should
// be quick (no network round trip: do that first, then compare and swap in fn).
func (img *Image) UpdateToken(id int, fn func(current json.RawMessage) ([]byte, error)) error {
	return img.UpdateTokenContext(context.Background(), id, fn)
}

// UpdateTokenContext is [Image.UpdateToken] with a context that bounds the wait for the
// image's locks: when ctx ends first, nothing is written and the error wraps ctx.Err().
func (img *Image) UpdateTokenContext(ctx context.Context, id int, fn func(current json.RawMessage) ([]byte, error)) error {
	return img.updateTokens(ctx, func(_ *state, m *metadata) error {
		cur, ok := m.tokens[id]
		if !ok {
			return fmt.Errorf("%w: token %d", ErrTokenNotFound, id)
		}
		next, err := fn(slices.Clone(cur))
		if err != nil {
			return err
		}
		raw, err := checkNewToken(next)
		if err != nil {
			return err
		}
		m.tokens[id] = raw
		return nil
	})
}

// RemoveToken deletes token id.
func (img *Image) RemoveToken(id int) error {
	return img.updateTokens(context.Background(), func(_ *state, m *metadata) error {
		if _, ok := m.tokens[id]; !ok {
			return fmt.Errorf("%w: token %d", ErrTokenNotFound, id)
		}
		delete(m.tokens, id)
		return nil
	})
}

// checkNewToken validates a token given by a caller and returns it in cryptsetup's canonical
// form.
func checkNewToken(token []byte) (json.RawMessage, error) {
	if t := bytes.TrimSpace(token); len(t) == 0 || t[0] != '{' {
		return nil, fmt.Errorf("%w: token: not a JSON object", ErrInvalidMetadata)
	}
	// A token is at level 3 of the metadata (document, "tokens", the token).
	if err := checkDepth("token", token, MaxJSONDepth-2); err != nil {
		return nil, err
	}
	canon, err := canonical("token", token, 0)
	if err != nil {
		return nil, err
	}
	o, err := parseObject("token", canon)
	if err != nil {
		return nil, err
	}
	raw, _, err := validateToken(o)
	if err != nil {
		return nil, err
	}
	typ, _ := o.str("type")
	if strings.HasPrefix(typ, "luks2-") {
		return nil, fmt.Errorf("%w: token type %q: the luks2- prefix is reserved", ErrInvalidMetadata, truncate(typ))
	}
	return raw, nil
}

// setTokenKeyslots returns the token with its keyslots member replaced, other members kept in
// place.
func setTokenKeyslots(raw json.RawMessage, ids []int) (json.RawMessage, error) {
	o, err := parseObject("token", raw)
	if err != nil {
		return nil, err
	}
	var w writer
	w.open('{')
	for _, mem := range o.members {
		if mem.name == "keyslots" {
			w.idArray("keyslots", ids)
		} else {
			w.raw(mem.name, mem.value)
		}
	}
	w.close('}')
	return w.b, nil
}
