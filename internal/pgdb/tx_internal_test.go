package pgdb

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
)

// TestRetryable: which errors of fn make Tx run it again, and whether as a connection
// failure (counted towards ErrUnavailable).
func TestRetryable(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("query: %w", &pgconn.PgError{Code: code}) }
	tests := []struct {
		name       string
		err        error
		closed     bool
		retry, con bool
	}{
		{"serialization failure", pg("40001"), false, true, false},
		{"deadlock", pg("40P01"), false, true, false},
		{"admin shutdown", pg("57P01"), false, true, true},
		{"cannot connect now", pg("57P03"), false, true, true},
		{"connection failure", pg("08006"), false, true, true},
		{"too many connections", pg("53300"), false, true, true},
		{"unique violation", pg("23505"), false, false, false},
		{"query canceled", pg("57014"), false, false, false},
		{"any error on a closed connection", errors.New("unexpected EOF"), true, true, true},
		{"fn's own error", errors.New("key not found"), false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := retryable(tc.err, tc.closed)
			assert.Equal(t, tc.retry, r != nil)
			if r != nil {
				assert.Equal(t, tc.con, r.conn)
				assert.ErrorIs(t, r, tc.err)
			}
		})
	}
}
