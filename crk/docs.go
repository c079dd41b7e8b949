package crk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Documents are the service's small records other than keys, registrations, events and
// acknowledgements: aliases, key rings, instance policies, import tokens. A document is JSON,
// stored under a kind and a name (storeTx.doc, insertDoc, putDoc, deleteDoc, docs); both
// backends keep them in name order per kind (bytewise, as PostgreSQL's "C" collation). Kinds
// in use:
//
//	docAlias          alias -> aliasRecord (the key id, creator, date)
//	"keyring"         ring id -> ring record
//	"instance-policy" policy type -> policy record
//	"import-token"    "current" -> the import token, its private key sealed
//
// A secret inside a document is a [sealedSecret] field: sealed under the service master key
// with docAAD(kind, name), and re-sealed wherever key material is (RotateMasterKey, CopyStore
// into a store with another master key), found by its JSON form whatever the document's
// shape.

// The document errors never leave the package: the service turns them into its sentinels
// (an alias taken is ErrAliasNotUnique, say).
var (
	// errNoDoc: no document of that kind and name.
	errNoDoc = errors.New("crk: store: no such document")
	// errDocExists: insertDoc found a document of that kind and name (committed before it,
	// or by a concurrent transaction of another process that committed first).
	errDocExists = errors.New("crk: store: document already exists")
)

// docAlias is the kind of the documents that map an alias to its key id.
const docAlias = "alias"

// checkDocName refuses a kind or name no store can hold: an empty kind, one with a NUL (the
// bbolt key separator) and names that are not text (PostgreSQL's text holds valid UTF-8
// without NUL).
func checkDocName(kind, name string) error {
	if kind == "" || !isText(kind) {
		return fmt.Errorf("%w: document kind %q", ErrInvalidArgument, kind)
	}
	if !isText(name) {
		return fmt.Errorf("%w: %s document name %q is not UTF-8 text without NUL", ErrInvalidArgument, kind, name)
	}
	return nil
}

// checkDoc refuses a document a store cannot hold (see checkDocName) or that is not JSON.
func checkDoc(kind, name string, data []byte) error {
	if err := checkDocName(kind, name); err != nil {
		return err
	}
	if !json.Valid(data) {
		return fmt.Errorf("crk: internal error: %s document %q is not JSON", kind, name)
	}
	return nil
}

// docAAD is the additional data of a secret sealed inside the document kind/name: a secret
// moved to another document does not open.
func docAAD(kind, name string) []byte {
	return []byte("crkvol document v1\x00" + kind + "\x00" + name)
}

// sealedSecret is a secret inside a document, sealed under the service master key with
// docAAD of its document. Its JSON form is {"crkvolSealed":"<base64>"}, by which re-sealing
// finds it anywhere in a document.
type sealedSecret struct {
	Sealed []byte `json:"crkvolSealed"`
}

// sealedField is the JSON name of sealedSecret's one field.
const sealedField = "crkvolSealed"

// sealDocSecret seals plaintext for the document kind/name. The caller holds s.mkMu (read)
// and calls s.sameMasterKey in the transaction that stores it.
func (s *Service) sealDocSecret(kind, name string, plaintext []byte) (sealedSecret, error) {
	b, err := s.sealer.seal(s.rand, plaintext, docAAD(kind, name))
	return sealedSecret{Sealed: b}, err
}

// openDocSecret opens a secret of the document kind/name. The caller holds s.mkMu (read).
func (s *Service) openDocSecret(kind, name string, sec sealedSecret) ([]byte, error) {
	return s.sealer.open(sec.Sealed, docAAD(kind, name))
}

// resealDoc re-seals every sealedSecret in the document kind/name from one master key to
// another, and reports whether it held any (data is returned unchanged when not).
func resealDoc(kind, name string, data []byte, from, to *sealer, rand io.Reader) ([]byte, bool, error) {
	if !bytes.Contains(data, []byte(`"`+sealedField+`"`)) {
		return data, false, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers come back as they were written
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false, fmt.Errorf("crk: store: %s document %q: %w", kind, name, err)
	}
	aad := docAAD(kind, name)
	found := false
	var walk func(v any) (any, error)
	walk = func(v any) (any, error) {
		switch v := v.(type) {
		case map[string]any:
			if s, ok := v[sealedField].(string); ok && len(v) == 1 {
				var sealed []byte
				if err := json.Unmarshal([]byte(`"`+s+`"`), &sealed); err != nil {
					return nil, err
				}
				m, err := from.open(sealed, aad)
				if err != nil {
					return nil, err
				}
				resealed, err := to.seal(rand, m, aad)
				clear(m)
				if err != nil {
					return nil, err
				}
				found = true
				return sealedSecret{Sealed: resealed}, nil
			}
			for k, e := range v {
				w, err := walk(e)
				if err != nil {
					return nil, err
				}
				v[k] = w
			}
		case []any:
			for i, e := range v {
				w, err := walk(e)
				if err != nil {
					return nil, err
				}
				v[i] = w
			}
		}
		return v, nil
	}
	v, err := walk(v)
	if err != nil {
		return nil, false, fmt.Errorf("crk: %s document %q: %w", kind, name, err)
	}
	if !found {
		return data, false, nil
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, false, fmt.Errorf("crk: encoding %s document %q: %w", kind, name, err)
	}
	return out, true, nil
}

// storedDoc is a document read from a store, with its kind and name.
type storedDoc struct {
	kind, name string
	data       []byte
}

// resealDocs re-seals the secrets of every document of tx from one master key to another
// (RotateMasterKey), and returns how many secrets' documents it rewrote.
func resealDocs(tx storeTx, from, to *sealer, rand io.Reader) (int, error) {
	var all []storedDoc
	if err := tx.allDocs(func(kind, name string, data []byte) error {
		all = append(all, storedDoc{kind, name, data})
		return nil
	}); err != nil {
		return 0, err
	}
	n := 0
	for _, d := range all {
		out, changed, err := resealDoc(d.kind, d.name, d.data, from, to, rand)
		if err != nil {
			return n, err
		}
		if !changed {
			continue
		}
		if err := tx.putDoc(d.kind, d.name, out); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// docKey is a document's bbolt key: its kind, NUL, its name (the kind has no NUL).
func docKey(kind, name string) []byte { return []byte(kind + "\x00" + name) }

// splitDocKey is the inverse of docKey.
func splitDocKey(k []byte) (kind, name string, ok bool) {
	kind, name, ok = strings.Cut(string(k), "\x00")
	return kind, name, ok
}
