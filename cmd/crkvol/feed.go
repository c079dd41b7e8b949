package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// defaultFollowWait is the wait of each long poll of key feed --follow.
const defaultFollowWait = 30 * time.Second

// feedEvent is a lifecycle event as key feed --json prints it: as the service's HTTP
// lifecycle feed answers it (crk.LifecycleEvent's JSON: the same fields, "policy" only when
// true), with the time to the second, as every time the CLI prints.
func feedEvent(e volume.KeyEvent) crk.LifecycleEvent {
	return crk.LifecycleEvent{Cursor: e.Cursor, Time: e.Time.UTC().Truncate(time.Second), Type: e.Type, KeyID: e.KeyID, KeyCRN: e.KeyCRN,
		State: e.State, OldVersion: e.OldVersion, NewVersion: e.NewVersion, Policy: e.Policy,
		Initiator: e.Initiator, Registrations: e.Registrations}
}

// feedLine is the text line of an event: time, type, key, versions, state, cursor. The
// service's text is escaped (a remote service's answer).
func feedLine(e volume.KeyEvent) string {
	var b strings.Builder
	t := rfc3339(e.Time)
	if t == "" {
		t = "-"
	}
	fmt.Fprintf(&b, "%s %s key=%s", t, shown(e.Type), shown(e.KeyID))
	if e.OldVersion != "" {
		fmt.Fprintf(&b, " version=%s->%s", shown(e.OldVersion), shown(e.NewVersion))
	} else {
		fmt.Fprintf(&b, " version=%s", shown(e.NewVersion))
	}
	fmt.Fprintf(&b, " state=%s", shown(e.State))
	if e.Policy {
		b.WriteString(" policy")
	}
	fmt.Fprintf(&b, " cursor=%s", shown(e.Cursor))
	return b.String()
}

func (a *app) keyFeedCommand() *cobra.Command {
	var cursor string
	var follow bool
	var wait time.Duration
	cmd := &cobra.Command{Use: "feed", Short: "Show the key service's lifecycle events (rotate, disable, enable, delete, ...)", Args: args(cobra.NoArgs),
		Long: `Show the lifecycle feed of the key service: the events of the root keys that protect
registered resources (volumes), oldest first: rotate (by hand, or by the rotation policy:
"policy"), disable, enable, delete, restore, purge and sync. Each text line reads

  TIME TYPE key=ID version=[OLD->]NEW state=STATE [policy] cursor=CURSOR

Without --cursor the feed starts at its head (now: no events, or with --wait the next event
to come); --cursor 0 starts at the oldest event kept. The cursor to resume from is printed on
stderr ("resume with --cursor C"). A cursor the feed cannot continue from (its events were deleted by the retention, or another
store's) fails with "resync needed": start again without --cursor.

--wait waits up to that long (at most 60s with --kms-url) for an event when none follows the
cursor. --follow keeps following until SIGINT or SIGTERM, waiting up to --wait (default 30s)
at a time.

With --json and without --follow it prints one JSON document, {"events": [...], "cursor":
"C"}; with --follow it prints one JSON object per line for each event (its "cursor" is where
to resume). Each event reads as the lifecycle endpoint of kms serve answers it (cursor, time
to the second, type, keyId, keyCrn, state, oldVersion, newVersion, policy when true,
initiator, registrations).

Embedded, the feed is read from the state directory's crk.db without holding it (while kms
serve holds it, use --kms-url); with --kms-url, from the service's lifecycle endpoint.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if wait < 0 {
				return usagef("--wait %s: want 0 or more", wait)
			}
			if follow && !cmd.Flags().Changed("wait") {
				wait = defaultFollowWait
			}
			if follow && wait == 0 {
				return usagef("--follow needs a --wait above 0")
			}
			feed, err := a.keyFeed()
			if err != nil {
				return err
			}
			return a.showFeed(cmd.Context(), feed, cursor, wait, follow)
		}}
	cmd.Flags().StringVar(&cursor, "cursor", "", "resume after this cursor (default: the feed's head; 0: the oldest event kept)")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep following until SIGINT or SIGTERM (with --json: one JSON object per line)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for an event when none follows the cursor (with --follow: 30s unless given)")
	return cmd
}

// keyFeed returns the lifecycle feed: the remote service's, or the embedded store's read
// without holding it.
func (a *app) keyFeed() (volume.KeyFeed, error) {
	if url := a.remoteURL(); url != "" {
		return a.newRemote(url)
	}
	dir, err := a.stateDirectory()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "crk.db")
	if rec, held := serveHolds(path, dir); held {
		return nil, heldByServe(rec, path, errStoreHeld)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("key store: %w", err)
	}
	return &kms.StoreFeed{Path: path}, nil
}

// showFeed prints the feed after cursor: one page, or with follow every page until ctx ends.
func (a *app) showFeed(ctx context.Context, feed volume.KeyFeed, cursor string, wait time.Duration, follow bool) error {
	lines := json.NewEncoder(a.stdout)
	if cursor == "" && wait > 0 && !follow {
		// One page waiting for the next event: from the head, which comes at once.
		head, err := feed.KeyEvents(ctx, "", 0)
		if err != nil {
			return fmt.Errorf("reading the head of the lifecycle feed: %w", err)
		}
		cursor = head.Cursor
	}
	for {
		page, err := feed.KeyEvents(ctx, cursor, wait)
		if err != nil {
			if follow && ctx.Err() != nil {
				// Stopped by a signal: a clean end.
				if cursor != "" {
					fmt.Fprintf(a.stderr, "crkvol: key feed: stopped; resume with --cursor %s\n", shown(cursor))
				}
				return nil
			}
			if errors.Is(err, volume.ErrResyncNeeded) {
				return withHint(fmt.Errorf("reading the lifecycle feed: %w", err), "the events after that cursor are gone: reconcile, then follow from the head (no --cursor)")
			}
			return fmt.Errorf("reading the lifecycle feed: %w", err)
		}
		if !follow {
			if a.asJSON {
				evs := make([]crk.LifecycleEvent, 0, len(page.Events))
				for _, e := range page.Events {
					evs = append(evs, feedEvent(e))
				}
				return a.emit(map[string]any{"events": evs, "cursor": page.Cursor})
			}
			for _, e := range page.Events {
				fmt.Fprintln(a.stdout, feedLine(e))
			}
			fmt.Fprintf(a.stderr, "resume with --cursor %s\n", shown(page.Cursor))
			return nil
		}
		for _, e := range page.Events {
			if a.asJSON {
				err = lines.Encode(feedEvent(e))
			} else {
				_, err = fmt.Fprintln(a.stdout, feedLine(e))
			}
			if err != nil {
				return err
			}
		}
		cursor = page.Cursor
	}
}
