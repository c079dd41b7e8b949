package crk

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/pgtest"
	"crkvol/internal/tooltest"
)

// TestPGPruneEventsReadsOnlyWhatItDeletes: the retention statement every appended event runs
// reads the events beyond the bounds (finding the first one kept, listing them, deleting
// them) and one more, through the (instance, seq) index, instead of
// every event of the instance (which made each append cost O(events kept): at the default
// retention of a million events, seconds per wrap). Rows read are counted in the plan of
// EXPLAIN ANALYZE, which runs the statement: the deletions are checked too.
//
// It runs on a database of its own with autovacuum off for crk_events: on the shared one,
// other tests' rows and an ANALYZE made while the table was small leave statistics that are
// neither absent nor current, and "no statistics" would not hold.
func TestPGPruneEventsReadsOnlyWhatItDeletes(t *testing.T) {
	c := pgtest.Start(t)
	d, err := OpenDatabase(context.Background(), c.NewDatabase(t), nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	_, err = d.db.Pool().Exec(context.Background(), `ALTER TABLE crk_events SET (autovacuum_enabled = off)`)
	require.NoError(t, err)
	for _, analyzed := range []bool{false, true} {
		t.Run(map[bool]string{false: "no statistics", true: "analyzed"}[analyzed], func(t *testing.T) {
			testPruneEventsReads(t, d, analyzed)
		})
	}
}

// testPruneEventsReads runs the cases of TestPGPruneEventsReadsOnlyWhatItDeletes on a new
// instance; analyzed runs ANALYZE first (as autovacuum does), which changes the planner's
// estimates.
func testPruneEventsReads(t *testing.T, d *Database, analyzed bool) {
	ctx := context.Background()
	svc, err := d.Open(Options{MasterKey: bytes.Repeat([]byte{7}, 32)})
	require.NoError(t, err)
	inst := svc.Instance()
	require.NoError(t, svc.Close())
	// Events 1..n, filed at seq*1000 ns. The plain run takes 5000: every case still tells the
	// index scan from a scan of every event (3 × the events beyond the bounds + 2 is under
	// 3000 rows read in the largest case, against 5000 for a full scan); the long run 20000.
	n := int64(tooltest.Scale(20000, 5000))
	require.NoError(t, d.db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM crk_events WHERE instance = $1`, inst); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO crk_events (instance, seq, nanos, key_id, action, record)
			SELECT $1, s, s * 1000, 'k', 'kms.secrets.wrap', '{}' FROM generate_series(1, $2::bigint) s`, inst, n); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE crk_instances SET events_seq = $2, events_nanos = $3 WHERE id = $1`, inst, n, n*1000)
		return err
	}))
	if analyzed {
		_, err = d.db.Pool().Exec(ctx, `ANALYZE crk_events`)
		require.NoError(t, err)
	}
	for _, tc := range []struct {
		name             string
		maxCount, cutoff int64
		limit            *int64
		beyond           int64 // events beyond the bounds, deleted if the limit allows
		deleted, first   int64 // events deleted, and the oldest one left
	}{
		{"nothing beyond either bound", n, 1, ptr(int64(pruneBatch)), 0, 0, 1},
		{"no bounds", 0, 0, nil, 0, 0, 1},
		{"count", n - 10, 0, ptr(int64(pruneBatch)), 10, 10, 11},
		{"age", 0, 20*1000 + 1, ptr(int64(pruneBatch)), 10, 10, 21},
		{"age and count, limited", n - 200, 30 * 1000, ptr(int64(pruneBatch)), 180, pruneBatch, 21 + pruneBatch},
		{"count, unlimited", n - 1000, 0, nil, 1000 - 20 - pruneBatch, 1000 - 20 - pruneBatch, 1001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var plan []byte
			var first int64
			var deleted int64
			require.NoError(t, d.db.Tx(ctx, func(tx pgx.Tx) error {
				if err := tx.QueryRow(ctx, `SELECT count(*) FROM crk_events WHERE instance = $1`, inst).Scan(&deleted); err != nil {
					return err
				}
				if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) `+pruneEventsSQL, inst, tc.maxCount, tc.cutoff, tc.limit).Scan(&plan); err != nil {
					return err
				}
				var left int64
				if err := tx.QueryRow(ctx, `SELECT count(*), min(seq) FROM crk_events WHERE instance = $1`, inst).Scan(&left, &first); err != nil {
					return err
				}
				deleted -= left
				return nil
			}))
			var top []struct {
				Plan planNode `json:"Plan"`
			}
			require.NoError(t, json.Unmarshal(plan, &top), "%s", plan)
			require.Len(t, top, 1)
			assert.Equal(t, tc.deleted, deleted, "events deleted")
			assert.Equal(t, tc.first, first, "oldest event left")
			read := top[0].Plan.eventsRead()
			t.Logf("%d deleted of %d beyond the bounds, %d rows of crk_events read", deleted, tc.beyond, read)
			assert.LessOrEqual(t, read, 3*tc.beyond+2, "rows of crk_events read; plan: %s", plan)
		})
	}
}

func ptr[T any](v T) *T { return &v }

// planNode is a node of a JSON query plan, with what counts the rows it read.
type planNode struct {
	NodeType      string     `json:"Node Type"`
	Relation      string     `json:"Relation Name"`
	ActualRows    float64    `json:"Actual Rows"`
	ActualLoops   float64    `json:"Actual Loops"`
	RemovedFilter float64    `json:"Rows Removed by Filter"`
	RemovedCheck  float64    `json:"Rows Removed by Index Recheck"`
	Plans         []planNode `json:"Plans"`
}

// eventsRead returns how many rows the scans of crk_events under n read, kept or not.
func (n planNode) eventsRead() int64 {
	var sum float64
	if n.Relation == "crk_events" && n.NodeType != "ModifyTable" {
		sum += n.ActualRows*n.ActualLoops + n.RemovedFilter + n.RemovedCheck
	}
	for _, c := range n.Plans {
		sum += float64(c.eventsRead())
	}
	return int64(sum)
}
