package crk

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The documents of a PostgreSQL store (docs.go), in crk_docs (migration 4).

func (t *pgTx) doc(kind, name string) ([]byte, error) {
	if checkDocName(kind, name) != nil {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name) // no row has it
	}
	var raw []byte
	err := t.tx.QueryRow(t.ctx, `SELECT record FROM crk_docs WHERE instance = $1 AND kind = $2 AND name = $3`,
		t.instance, kind, name).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name)
	}
	return raw, err
}

// insertDoc relies on the primary key: an insert of a name another transaction inserted
// and has not committed yet waits for it, then finds the row (or inserts, if that one rolled
// back). A conflict does not end the transaction, which may go on (ON CONFLICT DO NOTHING).
func (t *pgTx) insertDoc(kind, name string, data []byte) error {
	if err := checkDoc(kind, name, data); err != nil {
		return err
	}
	tag, err := t.tx.Exec(t.ctx, `INSERT INTO crk_docs (instance, kind, name, record) VALUES ($1, $2, $3, $4)
		ON CONFLICT (instance, kind, name) DO NOTHING`, t.instance, kind, name, string(data))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s %q", errDocExists, kind, name)
	}
	return nil
}

func (t *pgTx) putDoc(kind, name string, data []byte) error {
	if err := checkDoc(kind, name, data); err != nil {
		return err
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO crk_docs (instance, kind, name, record) VALUES ($1, $2, $3, $4)
		ON CONFLICT (instance, kind, name) DO UPDATE SET record = EXCLUDED.record`, t.instance, kind, name, string(data))
	return err
}

func (t *pgTx) deleteDoc(kind, name string) error {
	if checkDocName(kind, name) != nil {
		return nil // no row has it
	}
	_, err := t.tx.Exec(t.ctx, `DELETE FROM crk_docs WHERE instance = $1 AND kind = $2 AND name = $3`, t.instance, kind, name)
	return err
}

func (t *pgTx) docs(kind string, fn func(name string, data []byte) error) error {
	if checkDocName(kind, "") != nil {
		return nil
	}
	all, err := t.queryDocs(`SELECT kind, name, record FROM crk_docs WHERE instance = $1 AND kind = $2
		ORDER BY name COLLATE "C"`, t.instance, kind)
	if err != nil {
		return err
	}
	for _, d := range all {
		if err := fn(d.name, d.data); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) allDocs(fn func(kind, name string, data []byte) error) error {
	all, err := t.queryDocs(`SELECT kind, name, record FROM crk_docs WHERE instance = $1
		ORDER BY kind COLLATE "C", name COLLATE "C"`, t.instance)
	if err != nil {
		return err
	}
	for _, d := range all {
		if err := fn(d.kind, d.name, d.data); err != nil {
			return err
		}
	}
	return nil
}

// queryDocs reads every row of a query of kind, name and record before fn runs: the
// connection runs no other statement while a result is open.
func (t *pgTx) queryDocs(q string, args ...any) ([]storedDoc, error) {
	rows, err := t.tx.Query(t.ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (storedDoc, error) {
		var d storedDoc
		err := r.Scan(&d.kind, &d.name, &d.data)
		return d, err
	})
}

// lockDoc reads the row FOR SHARE or FOR UPDATE. Under READ COMMITTED a row deleted by the
// transaction it waited for is not returned: errNoDoc.
func (t *pgTx) lockDoc(kind, name string, exclusive bool) ([]byte, error) {
	if checkDocName(kind, name) != nil {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name)
	}
	lock := " FOR SHARE"
	if exclusive {
		lock = " FOR UPDATE"
	}
	var raw []byte
	err := t.tx.QueryRow(t.ctx, `SELECT record FROM crk_docs WHERE instance = $1 AND kind = $2 AND name = $3`+lock,
		t.instance, kind, name).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s %q", errNoDoc, kind, name)
	}
	return raw, err
}
