package crk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"crkvol/internal/ident"
)

// Aliases, as Key Protect has them: a key has up to MaxAliases aliases, each unique in the
// instance, and every method that takes a key id takes an alias in its place (ResolveKey).
// An alias is a document of kind docAlias (alias -> aliasRecord), inserted with insertDoc in
// the transaction that adds it to the key's record: of two processes giving one alias at once,
// one fails with ErrAliasNotUnique.
//
// An alias stays with its key when the key is deleted (a deleted key is still named by its
// aliases, and shows them) and when it is restored; purging the key frees them, as Key
// Protect's purge removes the key's metadata with its material.

// MaxAliases is the most aliases a key can have.
const MaxAliases = 5

// Alias is an alias of a key.
type Alias struct {
	// KeyID is the id of the key the alias names.
	KeyID string
	// Alias is the alias itself.
	Alias string
	// CreatedBy is the principal that created the alias.
	CreatedBy string
	// CreationDate is when the alias was created.
	CreationDate time.Time
}

// aliasRecord is the document of an alias.
type aliasRecord struct {
	KeyID     string    `json:"keyId"`
	CreatedBy string    `json:"createdBy"`
	Created   time.Time `json:"creationDate"`
}

// CheckAlias reports whether alias follows Key Protect's rules: 2 to 90 characters, each an
// ASCII letter, digit, dash or underscore; not shaped like a UUID of any version, in any case
// (IsKeyIDShape: those are key ids, so that an argument is never both); not one
// of the words the API reserves (allowed_ip, key, keys, metadata, policy, policies,
// registration, registrations, ring, rings, rotate, wrap, unwrap, rewrap, version,
// versions). Aliases are case sensitive. The error wraps ErrInvalidAlias and says what is
// wrong.
func CheckAlias(alias string) error {
	if n := len(alias); n < 2 || n > 90 {
		return fmt.Errorf("%w: alias %q is %d characters long, want 2 to 90", ErrInvalidAlias, alias, n)
	}
	for i := 0; i < len(alias); i++ {
		if c := alias[i]; !isAlnum(c) && c != '-' && c != '_' {
			return fmt.Errorf("%w: alias %q has the character %s at position %d: only letters, digits, dashes (-) and underscores (_) are allowed",
				ErrInvalidAlias, alias, quoteCharAt(alias, i), i)
		}
	}
	if IsKeyIDShape(alias) {
		return fmt.Errorf("%w: alias %q is shaped like a UUID, which is how key ids are written", ErrInvalidAlias, alias)
	}
	if reservedAlias(alias) {
		return fmt.Errorf("%w: alias %q is reserved by the API", ErrInvalidAlias, alias)
	}
	return nil
}

// IsKeyIDShape reports whether s is shaped like a key id: a UUID (8-4-4-4-12 hex digits) of
// any version, in any case. Such a string is always taken as a key id, never as an alias
// (CheckAlias refuses it): every place that tells an id from an alias decides with this.
func IsKeyIDShape(s string) bool {
	_, err := ident.ParseUUID(s)
	return err == nil
}

// quoteCharAt quotes the character that starts at byte i of s, escaped as Go quotes a rune
// ('\u202e', '\x1b'); a byte that is not valid UTF-8 as '\xff'.
func quoteCharAt(s string, i int) string {
	r, n := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && n <= 1 {
		return fmt.Sprintf(`'\x%02x'`, s[i])
	}
	return strconv.QuoteRune(r)
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func reservedAlias(s string) bool {
	switch s {
	case "allowed_ip", "key", "keys", "metadata", "policy", "policies", "registration", "registrations",
		"ring", "rings", "rotate", "wrap", "unwrap", "rewrap", "version", "versions":
		return true
	}
	return false
}

// checkNewAliases checks the aliases a key is created with.
func checkNewAliases(aliases []string) error {
	if len(aliases) > MaxAliases {
		return fmt.Errorf("%w: %d aliases given", ErrAliasQuota, len(aliases))
	}
	for i, a := range aliases {
		if err := CheckAlias(a); err != nil {
			return err
		}
		if slices.Contains(aliases[:i], a) {
			return fmt.Errorf("%w: alias %q is given twice", ErrAliasNotUnique, a)
		}
	}
	return nil
}

// addAlias gives key r the alias a in tx: the alias document and the key's list (the caller
// stores r).
func (s *Service) addAlias(ctx context.Context, tx storeTx, r *keyRecord, a string, now time.Time) error {
	if slices.Contains(r.Aliases, a) {
		return fmt.Errorf("%w: key %s has the alias %q already", ErrAliasNotUnique, r.ID, a)
	}
	if len(r.Aliases) >= MaxAliases {
		return fmt.Errorf("%w: key %s has %d aliases (%v)", ErrAliasQuota, r.ID, len(r.Aliases), r.Aliases)
	}
	raw, err := json.Marshal(aliasRecord{KeyID: r.ID, CreatedBy: s.who(ctx), Created: now})
	if err != nil {
		return fmt.Errorf("crk: encoding alias %q: %w", a, err)
	}
	if err := tx.insertDoc(docAlias, a, raw); err != nil {
		if errors.Is(err, errDocExists) {
			return fmt.Errorf("%w: alias %q names another key", ErrAliasNotUnique, a)
		}
		return err
	}
	r.Aliases = append(slices.Clone(r.Aliases), a)
	slices.Sort(r.Aliases)
	return nil
}

// releaseAliases deletes the alias documents of key r and empties its list (purge).
func releaseAliases(tx storeTx, r *keyRecord) error {
	for _, a := range r.Aliases {
		if err := tx.deleteDoc(docAlias, a); err != nil {
			return err
		}
	}
	r.Aliases = nil
	return nil
}

// CreateAlias gives the key idOrAlias (an id or one of its aliases) the alias alias. The
// key must not be deleted; the alias must follow CheckAlias, be free in the instance
// (ErrAliasNotUnique) and the key must have fewer than MaxAliases (ErrAliasQuota).
func (s *Service) CreateAlias(ctx context.Context, idOrAlias, alias string) (*Alias, error) {
	if err := CheckAlias(alias); err != nil {
		return nil, s.refuse(ctx, ActionAliasCreate, idOrAlias, err)
	}
	id, err := s.resolve(ctx, idOrAlias, "", false)
	if err != nil {
		return nil, s.refuse(ctx, ActionAliasCreate, idOrAlias, err)
	}
	var out *Alias
	_, err = s.mutate(ctx, ActionAliasCreate, id, func(tx storeTx, r *keyRecord, now time.Time, ev *Event) error {
		if err := allowed(r, ActionAliasCreate); err != nil {
			return err
		}
		if err := s.addAlias(ctx, tx, r, alias, now); err != nil {
			return err
		}
		ev.Reason = "alias " + alias
		out = &Alias{KeyID: r.ID, Alias: alias, CreatedBy: s.who(ctx), CreationDate: now}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteAlias takes the alias alias from the key idOrAlias (ErrAliasNotFound if the key does
// not have it), freeing it for any key. A deleted key's aliases cannot be changed: as
// CreateAlias, it is refused (ErrKeyDeleted) and changes nothing.
func (s *Service) DeleteAlias(ctx context.Context, idOrAlias, alias string) error {
	id, err := s.resolve(ctx, idOrAlias, "", false)
	if err != nil {
		return s.refuse(ctx, ActionAliasDelete, idOrAlias, err)
	}
	_, err = s.mutate(ctx, ActionAliasDelete, id, func(tx storeTx, r *keyRecord, _ time.Time, ev *Event) error {
		if err := allowed(r, ActionAliasDelete); err != nil {
			return err // as for creating one: a deleted key's aliases do not change
		}
		i := slices.Index(r.Aliases, alias)
		if i < 0 {
			return fmt.Errorf("%w: key %s has no alias %q", ErrAliasNotFound, r.ID, alias)
		}
		if err := tx.deleteDoc(docAlias, alias); err != nil {
			return err
		}
		r.Aliases = slices.Delete(slices.Clone(r.Aliases), i, i+1)
		ev.Reason = "alias " + alias
		return nil
	})
	return err
}

// ResolveKey returns the id of the key idOrAlias names: a key id (any string IsKeyIDShape
// accepts, in any case; never looked up as an alias), or an alias of a key (deleted keys
// included). Neither is ErrKeyNotFound. It records no event: the action it
// resolves for does.
func (s *Service) ResolveKey(ctx context.Context, idOrAlias string) (string, error) {
	return s.resolve(ctx, idOrAlias, "", false)
}

// ResolveKeyInRing is ResolveKey for a request that names the key ring the key is in (Key
// Protect's x-kms-key-ring header): a key in another ring is ErrKeyNotFound, as Key Protect
// finds no such key in the ring; a ring the instance does not have is ErrKeyRingNotFound.
// An empty ring is any ring.
func (s *Service) ResolveKeyInRing(ctx context.Context, idOrAlias, ring string) (string, error) {
	return s.resolve(ctx, idOrAlias, ring, false)
}

// ResolveAPIKey is ResolveKeyInRing for the Key Protect API, where a purged key no longer
// exists: its id or alias is ErrKeyNotFound, with the message of an id no key ever had, as
// Key Protect answers 404 for every call on a purged key. crk itself keeps the purged key's
// record (a tombstone without material) for the audit trail; ResolveKey still finds it.
func (s *Service) ResolveAPIKey(ctx context.Context, idOrAlias, ring string) (string, error) {
	return s.resolve(ctx, idOrAlias, ring, true)
}

// CheckNotPurged returns ErrKeyNotFound when id is the id of a purged key (see
// ResolveAPIKey), nil otherwise, an unknown id included: the operation on it refuses that.
func (s *Service) CheckNotPurged(ctx context.Context, id string) error {
	return s.view(ctx, func(tx storeTx) error {
		r, err := tx.key(id)
		if errors.Is(err, ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if r.Purged {
			return fmt.Errorf("%w: no key has the id or alias %q", ErrKeyNotFound, id)
		}
		return nil
	})
}

// resolve resolves ref (in ring, if not empty); live hides purged keys.
func (s *Service) resolve(ctx context.Context, ref, ring string, live bool) (string, error) {
	if err := checkKeyRingRef(ring); err != nil {
		return "", err
	}
	shaped := IsKeyIDShape(ref) // a key id, never an alias
	if shaped {
		ref = strings.ToLower(ref)
	}
	var id string
	err := s.view(ctx, func(tx storeTx) error {
		r, err := tx.key(ref)
		if errors.Is(err, ErrKeyNotFound) && !shaped {
			raw, derr := tx.doc(docAlias, ref)
			if errors.Is(derr, errNoDoc) {
				return fmt.Errorf("%w: no key has the id or alias %q", ErrKeyNotFound, ref)
			}
			if derr != nil {
				return derr
			}
			var rec aliasRecord
			if err := json.Unmarshal(raw, &rec); err != nil {
				return fmt.Errorf("crk: store: alias %q: %w", ref, err)
			}
			r, err = tx.key(rec.KeyID)
		}
		if err != nil {
			return err
		}
		if live && r.Purged {
			return fmt.Errorf("%w: no key has the id or alias %q", ErrKeyNotFound, ref)
		}
		if ring != "" && r.ring() != ring {
			if ring != DefaultKeyRing {
				if _, err := tx.doc(docKeyRing, ring); errors.Is(err, errNoDoc) {
					return fmt.Errorf("%w: %s", ErrKeyRingNotFound, ring)
				} else if err != nil {
					return err
				}
			}
			return fmt.Errorf("%w: key %s is not in key ring %s", ErrKeyNotFound, ref, ring)
		}
		id = r.ID
		return nil
	})
	return id, err
}
