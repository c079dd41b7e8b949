package crk

import "testing"

// TestHostAcksPurgedPostgres runs TestHostAcksPurged on PostgreSQL in every run (the whole
// suite runs there in the long run only): it stores, counts, lists and deletes
// acknowledgements in the table of migration 3.
func TestHostAcksPurgedPostgres(t *testing.T) {
	testHostAcksPurged(t, &testStore{kind: "postgres", db: sharedDatabase(t), instances: map[string]string{}})
}
