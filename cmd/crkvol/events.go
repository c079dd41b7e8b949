package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
)

// defaultEventLimit is the page size of the events command.
const defaultEventLimit = 100

func (a *app) eventsCommand() *cobra.Command {
	var keyID, action, outcome, since, until, cursor string
	var limit int
	var reverse bool
	cmd := &cobra.Command{Use: "events", Short: "Show the audit events of the key service, newest first", Args: args(cobra.NoArgs),
		Long: `Show the audit events of the embedded key service, newest first (oldest first with --reverse), a
page of --limit events at a time. When more events remain, the cursor of the next page is
printed on stderr; pass it with --cursor (and the same filters and order) to continue.

Events of API requests (kms serve) carry the request's correlation id: the Correlation-Id
header keyprotect-go-client sends with every call, or the one the server gave the request.

--since and --until bound the event time (since <= time < until). Each takes an RFC 3339 time
(2026-01-02T15:04:05Z) or a duration before now on the service clock: Go's units (90m, 24h,
1h30m) and d for days (7d). --key must name a key the service knows, deleted keys included.

The retention of the log is set where the service is opened: --event-max-age and
--event-max-count.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: want 0 (all) or more", limit)
			}
			if outcome != "" && outcome != crk.OutcomeSuccess && outcome != crk.OutcomeFailure {
				return usagef("--outcome %q: want success or failure", outcome)
			}
			f := crk.EventFilter{KeyID: keyID, Action: action, Outcome: outcome, Limit: limit, OldestFirst: reverse, Cursor: cursor}
			if since != "" || until != "" {
				clock, err := a.clock()
				if err != nil {
					return err
				}
				now := clock.Now()
				if f.From, err = eventTime("since", since, now); err != nil {
					return err
				}
				if f.To, err = eventTime("until", until, now); err != nil {
					return err
				}
				if !f.From.IsZero() && !f.To.IsZero() && !f.To.After(f.From) {
					return fmt.Errorf("--until %s is not after --since %s", rfc3339(f.To), rfc3339(f.From))
				}
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			if err := a.needLocal(""); err != nil {
				return err
			}
			if keyID != "" {
				id, err := a.resolveKey(cmd.Context(), keyID, false)
				if err != nil {
					return err
				}
				f.KeyID = id
			}
			page, err := a.svc.ListEvents(cmd.Context(), f)
			if err != nil {
				return err
			}
			if page.Next != "" {
				fmt.Fprintf(a.stderr, "more events: next page with --cursor %s\n", page.Next)
			}
			evs := page.Events
			if a.asJSON {
				out := []eventJSON{}
				for _, e := range evs {
					out = append(out, eventJSON{Event: e, Time: jsonTime{e.Time}})
				}
				return a.emit(out)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TIME\tACTION\tOUTCOME\tKEY\tVERSION\tINITIATOR\tCORRELATION ID\tREASON")
			for _, e := range evs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rfc3339(e.Time), e.Action, e.Outcome, e.KeyID, e.KeyVersion, e.Initiator, e.CorrelationID, e.Reason)
			}
			return w.Flush()
		}}
	cmd.Flags().StringVar(&keyID, "key", "", "only events of this key: its id or unique name (deleted keys included)")
	cmd.Flags().StringVar(&action, "action", "", "only this action, such as kms.secrets.rotate")
	cmd.Flags().StringVar(&outcome, "outcome", "", "only events of this outcome: success or failure")
	cmd.Flags().StringVar(&since, "since", "", "only events at or after this time: RFC 3339, or a duration before now such as 24h or 7d")
	cmd.Flags().StringVar(&until, "until", "", "only events before this time: RFC 3339, or a duration before now such as 24h or 7d")
	cmd.Flags().IntVar(&limit, "limit", defaultEventLimit, "at most this many events per page, the newest (with --reverse the oldest); 0 for all")
	cmd.Flags().StringVar(&cursor, "cursor", "", "continue after the page that printed this cursor")
	cmd.Flags().BoolVar(&reverse, "reverse", false, "list the oldest events first")
	cmd.Flags().BoolVar(&reverse, "oldest-first", false, "the same as --reverse")
	_ = cmd.Flags().MarkHidden("oldest-first") // kept for scripts written before --reverse
	return cmd
}

// eventTime parses the value of --since or --until (flag names it): an RFC 3339 time, or a
// non-negative duration before now (Go's units, and d for 24 hours). An empty value is the
// zero time (no bound); a value that does not parse is a usage error.
func eventTime(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC(), nil
	}
	if d, ok := agoDuration(v); ok {
		return now.Add(-d).UTC(), nil
	}
	return time.Time{}, usagef("--%s %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z or a duration before now such as 90m, 24h or 7d", flag, v)
}

// agoDuration parses a non-negative duration: Go's syntax (90m, 1h30m), or a whole number of
// days (7d).
func agoDuration(v string) (time.Duration, bool) {
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, false
		}
		return time.Duration(n) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, false
	}
	return d, true
}
