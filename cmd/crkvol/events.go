package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk"
)

// defaultEventLimit is the page size of the events command.
const defaultEventLimit = 100

func (a *app) eventsCommand() *cobra.Command {
	var keyID, action, since, cursor string
	var limit int
	var oldestFirst bool
	cmd := &cobra.Command{Use: "events", Short: "Show the audit events of the key service, newest first", Args: args(cobra.NoArgs),
		Long: `Show the audit events of the embedded key service, newest first, a page at a time. When more
events remain, the cursor of the next page is printed on stderr; pass it with --cursor (and the
same filters and order) to continue. The retention of the log is set where the service is
opened: --event-max-age and --event-max-count.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: want 0 (all) or more", limit)
			}
			f := crk.EventFilter{KeyID: keyID, Action: action, Limit: limit, OldestFirst: oldestFirst, Cursor: cursor}
			if since != "" {
				t, err := time.Parse(time.RFC3339, since)
				if err != nil {
					return usagef("--since %q: want an RFC 3339 time", since)
				}
				f.From = t
			}
			if err := a.open(cmd.Context()); err != nil {
				return err
			}
			if err := a.needLocal("events"); err != nil {
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
			fmt.Fprintln(w, "TIME\tACTION\tOUTCOME\tKEY\tVERSION\tINITIATOR\tREASON")
			for _, e := range evs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rfc3339(e.Time), e.Action, e.Outcome, e.KeyID, e.KeyVersion, e.Initiator, e.Reason)
			}
			return w.Flush()
		}}
	cmd.Flags().StringVar(&keyID, "key", "", "only events of this key (id or unique name)")
	cmd.Flags().StringVar(&action, "action", "", "only this action, such as kms.secrets.rotate")
	cmd.Flags().StringVar(&since, "since", "", "only events at or after this RFC 3339 time")
	cmd.Flags().IntVar(&limit, "limit", defaultEventLimit, "at most this many events per page; 0 for all")
	cmd.Flags().StringVar(&cursor, "cursor", "", "continue after the page that printed this cursor")
	cmd.Flags().BoolVar(&oldestFirst, "oldest-first", false, "list the oldest events first")
	return cmd
}
