package agent_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"crkvol/agent"
	"crkvol/internal/tooltest"
	"crkvol/volume"
)

// fakeFeed answers every poll with answer(cursor, wait), honouring the wait it is asked for
// only if honour is set, and counts the polls.
type fakeFeed struct {
	mu     sync.Mutex
	calls  int
	honour bool
	answer func(cursor string) volume.KeyEventPage
}

func (f *fakeFeed) KeyEvents(ctx context.Context, cursor string, wait time.Duration) (volume.KeyEventPage, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if f.honour && wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return volume.KeyEventPage{}, ctx.Err()
		case <-t.C:
		}
	}
	return f.answer(cursor), nil
}

func (f *fakeFeed) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// emptyHost is a host without volumes that counts its cursor saves.
type emptyHost struct {
	mu     sync.Mutex
	cursor string
	saves  int
}

func (h *emptyHost) Keys(context.Context) ([]string, error) { return nil, nil }
func (h *emptyHost) KeyState(context.Context, string) (volume.KeyStatus, error) {
	return volume.KeyStatus{State: volume.KeyStateActive}, nil
}
func (h *emptyHost) Rewrap(context.Context, string) (*volume.Report, error) {
	return &volume.Report{}, nil
}
func (h *emptyHost) Lockout(context.Context, string, string) (agent.LockoutResult, error) {
	return agent.LockoutResult{}, nil
}
func (h *emptyHost) Unlock(context.Context, string) error { return nil }
func (h *emptyHost) LoadCursor() (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cursor, nil
}
func (h *emptyHost) SaveCursor(c string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cursor = c
	h.saves++
	return nil
}

// runFor runs an agent for d and returns its log.
func runFor(t *testing.T, opts agent.Options, d time.Duration) string {
	t.Helper()
	var log tooltest.SyncBuffer
	opts.Logger = slog.New(slog.NewTextHandler(&log, nil))
	a, err := agent.New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop")
	}
	return log.String()
}

// The run lasts 500 ms; an agent that paces its polls makes a handful of them, one that
// spins makes thousands. The bounds leave room for a slow machine, not for a spin.
func TestAgentNeverSpins(t *testing.T) {
	t.Parallel() // each row waits its 500 ms out: side by side
	past := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		opts      agent.Options
		feed      *fakeFeed
		cursor    string
		wantSaves int
		wantLog   string
	}{
		{name: "service clock years in the past",
			opts:   agent.Options{Wait: 100 * time.Millisecond, Now: func() time.Time { return past }},
			feed:   &fakeFeed{honour: true, answer: func(c string) volume.KeyEventPage { return volume.KeyEventPage{Cursor: "7"} }},
			cursor: "7"},
		{name: "service clock years in the past, with due rotations",
			opts: agent.Options{Wait: 100 * time.Millisecond, Now: func() time.Time { return past },
				RunDue: func(context.Context) (time.Time, bool, error) { return past.Add(time.Hour), true, nil }},
			feed:   &fakeFeed{honour: true, answer: func(c string) volume.KeyEventPage { return volume.KeyEventPage{Cursor: "7"} }},
			cursor: "7"},
		{name: "empty pages at once, cursor moved",
			opts:   agent.Options{Wait: time.Second, MinPoll: 100 * time.Millisecond},
			feed:   &fakeFeed{answer: func(c string) volume.KeyEventPage { return volume.KeyEventPage{Cursor: "9"} }},
			cursor: "7", wantLog: "without events"},
		{name: "a page going backwards",
			opts: agent.Options{Wait: time.Second, MinPoll: 100 * time.Millisecond},
			feed: &fakeFeed{answer: func(c string) volume.KeyEventPage {
				return volume.KeyEventPage{Cursor: "3", Events: []volume.KeyEvent{{Cursor: "3", Type: volume.KeyRotated, KeyID: "k"}}}
			}},
			cursor: "7", wantLog: "not after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := &emptyHost{cursor: tt.cursor}
			tt.opts.Feed, tt.opts.Host = tt.feed, h
			tt.opts.Backoff = func(int) time.Duration { return 10 * time.Millisecond }
			log := runFor(t, tt.opts, 500*time.Millisecond)
			calls := tt.feed.count()
			t.Logf("%d feed calls in 500ms", calls)
			require.LessOrEqual(t, calls, 25, "the agent polls in a loop")
			require.Equal(t, tt.wantSaves, h.saves, "cursor saves")
			require.Equal(t, tt.cursor, h.cursor)
			if tt.wantLog != "" {
				require.Equal(t, 1, strings.Count(log, tt.wantLog), "logged once: %s", log)
			}
		})
	}
}
