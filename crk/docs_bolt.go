package crk

import (
	"bytes"
	"fmt"
)

// The documents of a bbolt store (docs.go), in bucketDocs. A store opened read-only that
// predates the bucket has no documents.

func (t boltTx) doc(kind, name string) ([]byte, error) {
	if checkDocName(kind, name) != nil {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name) // no store holds it
	}
	b := t.tx.Bucket(bucketDocs)
	if b == nil {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name)
	}
	v := b.Get(docKey(kind, name))
	if v == nil {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name)
	}
	return bytes.Clone(v), nil
}

// insertDoc needs no lock: bbolt has one writer at a time, and the store one process.
func (t boltTx) insertDoc(kind, name string, data []byte) error {
	if err := checkDoc(kind, name, data); err != nil {
		return err
	}
	b := t.tx.Bucket(bucketDocs)
	if b.Get(docKey(kind, name)) != nil {
		return fmt.Errorf("%w: %s %q", errDocExists, kind, name)
	}
	return b.Put(docKey(kind, name), bytes.Clone(data))
}

func (t boltTx) putDoc(kind, name string, data []byte) error {
	if err := checkDoc(kind, name, data); err != nil {
		return err
	}
	return t.tx.Bucket(bucketDocs).Put(docKey(kind, name), bytes.Clone(data))
}

func (t boltTx) deleteDoc(kind, name string) error {
	if checkDocName(kind, name) != nil {
		return nil // no store holds it
	}
	return t.tx.Bucket(bucketDocs).Delete(docKey(kind, name))
}

func (t boltTx) docs(kind string, fn func(name string, data []byte) error) error {
	if checkDocName(kind, "") != nil {
		return nil
	}
	return t.scanDocs(docKey(kind, ""), func(_, name string, data []byte) error { return fn(name, data) })
}

func (t boltTx) allDocs(fn func(kind, name string, data []byte) error) error {
	return t.scanDocs(nil, fn)
}

// scanDocs calls fn with the documents whose bucket key starts with prefix, read in full
// first: fn may write to the bucket.
func (t boltTx) scanDocs(prefix []byte, fn func(kind, name string, data []byte) error) error {
	b := t.tx.Bucket(bucketDocs)
	if b == nil {
		return nil
	}
	var all []storedDoc
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		kind, name, ok := splitDocKey(k)
		if !ok {
			return fmt.Errorf("crk: store: document key %q has no kind", k)
		}
		all = append(all, storedDoc{kind, name, bytes.Clone(v)})
	}
	for _, d := range all {
		if err := fn(d.kind, d.name, d.data); err != nil {
			return err
		}
	}
	return nil
}

// lockDoc is doc: bbolt has one writer at a time.
func (t boltTx) lockDoc(kind, name string, _ bool) ([]byte, error) { return t.doc(kind, name) }
