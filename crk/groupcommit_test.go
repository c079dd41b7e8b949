package crk

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeStore is a store of strings for committer tests: a transaction stages the writes of its
// functions (write) and applies them if it commits. gate, if set, holds every transaction
// until it receives (or is closed).
type fakeStore struct {
	mu        sync.Mutex
	committed []string
	staged    []string
	txs       int   // transactions run
	commitErr error // the error of every commit, if set
	gate      chan struct{}
}

func (f *fakeStore) update(fn func(storeTx) error) error {
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.txs++
	f.staged = nil
	if err := fn(nil); err != nil {
		return err
	}
	if f.commitErr != nil {
		return f.commitErr
	}
	f.committed = append(f.committed, f.staged...)
	return nil
}

// write returns a function that stages s (its mutex is held by update).
func (f *fakeStore) write(s string) func(storeTx) error {
	return func(storeTx) error { f.staged = append(f.staged, s); return nil }
}

// queued waits until n calls are queued behind the running group.
func queued(t *testing.T, c *committer, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.queue) >= n
	}, 10*time.Second, time.Millisecond)
}

// TestCommitterLoneCaller: a caller that finds no commit running commits alone, at once: a
// sequence of calls is as many groups of one.
func TestCommitterLoneCaller(t *testing.T) {
	f := &fakeStore{}
	c := newCommitter(f.update)
	for i := range 5 {
		require.NoError(t, c.run(f.write(fmt.Sprint(i))))
	}
	assert.Equal(t, []string{"0", "1", "2", "3", "4"}, f.committed)
	assert.Equal(t, uint64(5), c.groups.Load())
	assert.Equal(t, 5, f.txs)
}

// TestCommitterGroups: the calls arriving while a commit runs share the next one, whatever
// their number, up to maxGroup calls a commit; the lead passes to them, and each call's
// outcome is its own.
func TestCommitterGroups(t *testing.T) {
	for _, tc := range []struct {
		name      string
		followers int
		wantTxs   int
	}{
		{"one follower", 1, 2},
		{"31 followers", 31, 2},
		{"beyond maxGroup", maxGroup + 5, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeStore{gate: make(chan struct{})}
			c := newCommitter(f.update)
			var wg sync.WaitGroup
			wg.Go(func() { assert.NoError(t, c.run(f.write("leader"))) })
			require.Eventually(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.busy && len(c.queue) == 0 }, 10*time.Second, time.Millisecond)
			for i := range tc.followers {
				wg.Go(func() { assert.NoError(t, c.run(f.write(fmt.Sprint(i)))) })
			}
			queued(t, c, tc.followers)
			close(f.gate)
			wg.Wait()
			assert.Equal(t, tc.wantTxs, f.txs)
			assert.Equal(t, uint64(tc.wantTxs), c.groups.Load())
			assert.Equal(t, uint64(tc.followers+1), c.calls.Load())
			assert.Len(t, f.committed, tc.followers+1)
			c.mu.Lock()
			assert.False(t, c.busy, "no leader left once the queue is empty")
			c.mu.Unlock()
		})
	}
}

// TestCommitterFailures: a function that fails, or panics, fails its own call only: the
// others of its group commit (after running again without it), and it runs alone once more so
// that its caller gets the error it would get alone. A commit that fails makes each call run
// alone; a store out of reach fails the whole group at once.
func TestCommitterFailures(t *testing.T) {
	bad := errors.New("bad item")
	for _, tc := range []struct {
		name      string
		fn        func(f *fakeStore, i int) func(storeTx) error
		commitErr error
		wantErrs  int   // calls that fail
		want      error // their error
		wantTxs   int   // transactions, the leader's own included
		committed int   // writes committed, the leader's included
	}{
		{"one fails", func(f *fakeStore, i int) func(storeTx) error {
			if i == 2 {
				return func(storeTx) error { return bad }
			}
			return f.write(fmt.Sprint(i))
		}, nil, 1, bad, 1 + 2 + 1, 4},
		{"one panics", func(f *fakeStore, i int) func(storeTx) error {
			if i == 0 {
				return func(storeTx) error { panic("boom") }
			}
			return f.write(fmt.Sprint(i))
		}, nil, 1, nil, 1 + 2 + 1, 4},
		{"commit fails", func(f *fakeStore, i int) func(storeTx) error { return f.write(fmt.Sprint(i)) },
			errors.New("disk on fire"), 4, nil, 1 + 1 + 4, 0},
		{"store out of reach", func(f *fakeStore, i int) func(storeTx) error { return f.write(fmt.Sprint(i)) },
			fmt.Errorf("crk: %w: no route", ErrUnavailable), 4, ErrUnavailable, 1 + 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeStore{gate: make(chan struct{})}
			c := newCommitter(f.update)
			var wg sync.WaitGroup
			wg.Go(func() { _ = c.run(f.write("leader")) })
			require.Eventually(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.busy }, 10*time.Second, time.Millisecond)
			errs := make([]error, 4)
			for i := range errs {
				wg.Go(func() { errs[i] = c.run(tc.fn(f, i)) })
			}
			queued(t, c, len(errs))
			f.mu.Lock()
			f.commitErr = tc.commitErr // the leader's own transaction has not run yet
			f.mu.Unlock()
			close(f.gate)
			wg.Wait()
			n := 0
			for _, err := range errs {
				if err != nil {
					n++
					if tc.want != nil {
						assert.ErrorIs(t, err, tc.want)
					}
				}
			}
			assert.Equal(t, tc.wantErrs, n, "%v", errs)
			assert.Equal(t, tc.wantTxs, f.txs)
			assert.Len(t, f.committed, tc.committed)
		})
	}
}

// TestCommitterClose: close waits for the group under way, whose callers all get their
// outcome, and later calls fail at once.
func TestCommitterClose(t *testing.T) {
	f := &fakeStore{gate: make(chan struct{})}
	c := newCommitter(f.update)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { assert.NoError(t, c.run(f.write(fmt.Sprint(i)))) })
	}
	queued(t, c, 2)
	closed := make(chan struct{})
	go func() { c.close(); close(closed) }()
	require.Eventually(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.closed }, 10*time.Second, time.Millisecond)
	select {
	case <-closed:
		t.Fatal("close returned while a group was under way")
	default:
	}
	close(f.gate)
	wg.Wait()
	<-closed
	assert.Len(t, f.committed, 3)
	assert.ErrorIs(t, c.run(f.write("late")), errCommitterClosed)
}
