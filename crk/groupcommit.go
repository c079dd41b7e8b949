package crk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// maxGroup is the most calls one group commit carries (as bbolt's MaxBatchSize).
const maxGroup = 1000

// errCommitterClosed is the error of a call made after the committer's store began to close.
var errCommitterClosed = errors.New("crk: the store is closing")

// committer shares read-write transactions among concurrent callers: a leader/follower group
// commit. A caller that finds no commit running leads at once: it runs its own function in a
// transaction of its own, with no wait for company. Callers that arrive while a commit runs
// queue up; when it ends, the leader hands the lead to the first of them, which runs the
// whole queue (at most maxGroup calls) in one transaction: one commit, one flush, for all of
// them. A lone caller is never held up; concurrent callers share commits in proportion to how
// many arrive during one.
//
// Functions follow backend.batch's contract: fn may run more than once and must have no effect
// outside tx. A function that fails does not fail the others of its group: the transaction is
// rolled back, the others run again without it, and it then runs alone in a transaction of
// its own (as bbolt's db.Batch does), so its caller gets the error it would have got alone.
type committer struct {
	// update runs fn in one read-write transaction of the store.
	update func(fn func(storeTx) error) error

	mu     sync.Mutex
	queue  []*groupCall // callers waiting for the next group
	busy   bool         // a leader is running a group
	closed bool
	idle   sync.Cond // signalled when busy turns false (close waits for it)

	groups atomic.Uint64 // groups run (each one commit, unless a function failed)
	calls  atomic.Uint64 // calls that went through a group
}

// groupCall is one caller's function and its outcome.
type groupCall struct {
	fn  func(storeTx) error
	err error
	// solo is set when fn failed in a group: it runs again alone, in its caller's goroutine.
	solo bool
	// wake receives true when the caller is to lead the next group, false when its group
	// committed (err and solo are set).
	wake chan bool
}

func newCommitter(update func(fn func(storeTx) error) error) *committer {
	c := &committer{update: update}
	c.idle.L = &c.mu
	return c
}

// run runs fn in a transaction shared with the calls that arrive while another commit runs,
// and returns fn's error or the commit's.
func (c *committer) run(fn func(storeTx) error) error {
	call := &groupCall{fn: fn, wake: make(chan bool, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errCommitterClosed
	}
	c.queue = append(c.queue, call)
	lead := !c.busy
	c.busy = true
	c.mu.Unlock()
	if !lead {
		lead = <-call.wake
	}
	if lead {
		c.lead(call)
	}
	if call.solo {
		return c.update(func(tx storeTx) error { return callSafely(fn, tx) })
	}
	return call.err
}

// lead runs one group, which holds self, and hands the lead on to the first caller queued
// meanwhile, if any.
func (c *committer) lead(self *groupCall) {
	c.mu.Lock()
	n := min(len(c.queue), maxGroup)
	group := make([]*groupCall, n)
	copy(group, c.queue)
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	c.mu.Unlock()

	c.commit(group)
	for _, g := range group {
		if g != self {
			g.wake <- false
		}
	}

	c.mu.Lock()
	if len(c.queue) > 0 {
		c.queue[0].wake <- true // busy stays true: the lead passes on
	} else {
		c.busy = false
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

// commit runs the group's functions in one transaction, setting each call's outcome.
func (c *committer) commit(group []*groupCall) {
	c.groups.Add(1)
	c.calls.Add(uint64(len(group)))
	pending := group
	for {
		failed := -1
		err := c.update(func(tx storeTx) error {
			failed = -1
			for i, g := range pending {
				if err := callSafely(g.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		switch {
		case err == nil || len(pending) == 1 || errors.Is(err, ErrUnavailable):
			// Committed; or the error is the lone call's own; or the store is out of reach,
			// and each call alone would wait out a retry window of its own and fail the same
			// way: the outcome is everyone's.
			for _, g := range pending {
				g.err = err
			}
			return
		case failed >= 0:
			// One function failed and the transaction rolled back: that one runs alone
			// afterwards, the others again together.
			pending[failed].solo = true
			pending = append(pending[:failed:failed], pending[failed+1:]...)
		default:
			// The commit itself failed: each runs alone, so that whatever made it fail fails
			// only its own caller.
			for _, g := range pending {
				g.solo = true
			}
			return
		}
	}
}

// callSafely calls fn, turning a panic into an error: fn runs in another caller's goroutine,
// which must go on to wake the rest of its group.
func callSafely(fn func(storeTx) error, tx storeTx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("crk: internal error: a grouped transaction panicked: %v", p)
		}
	}()
	return fn(tx)
}

// close makes later calls fail with errCommitterClosed and waits for the groups under way
// (and the callers queued for them) to finish.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	for c.busy {
		c.idle.Wait()
	}
	c.mu.Unlock()
}
