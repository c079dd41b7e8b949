package pgdb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"

	"crkvol/internal/pgdb"
)

// A replica opens the shared database (migrating it if it is the first), changes state in
// transactions that are retried for it, and runs scheduled work only while it leads.
func Example() {
	ctx := context.Background()
	db, err := pgdb.Open(ctx, "postgres://crkvol@db.example/crkvol?sslmode=verify-full", pgdb.Options{ApplicationName: "crkvol kms serve"})
	if err != nil {
		log.Fatal(err) // the message never shows the URL's password
	}
	defer db.Close()

	err = db.Tx(ctx, func(tx pgx.Tx) error {
		var seq int64
		if err := tx.QueryRow(ctx, "SELECT events_seq FROM crk_instances WHERE id = $1 FOR UPDATE", "default").Scan(&seq); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE crk_instances SET events_seq = $2 WHERE id = $1", "default", seq+1)
		return err
	})
	switch {
	case errors.Is(err, pgdb.ErrUnavailable):
		fmt.Println("503: database unavailable")
	case errors.Is(err, pgdb.ErrCommitUnknown):
		fmt.Println("the change may or may not have happened")
	case err != nil:
		log.Fatal(err)
	}

	go db.Listen(ctx, "crk_feed", func(payload string) {
		// "" after each (re)connection: re-read everything that may have been missed.
	})
	db.Lead(ctx, "scheduler", "replica-1", 8*time.Second, func(ctx context.Context) {
		<-ctx.Done() // run scheduled work until the lease is lost or ctx ends
	})
}
