package pgdb

import (
	"log/slog"
	"time"
)

// outage logs one activity's runs of failures (the listener's reconnections, a lease's
// polls and renewals) so that an outage of the database reads as two lines, not one a
// second: its first failure at Warn, the ones after it at Debug, and the first success after
// them at Info with how long the failures lasted. It belongs to one goroutine.
type outage struct {
	log   *slog.Logger
	what  string    // the prefix of the messages: "listen", "lease"
	since time.Time // the first failure of the current run; zero when there is none
}

// failed logs a failure: at Warn if it starts a run, else at Debug.
func (o *outage) failed(msg string, args ...any) {
	if o.since.IsZero() {
		o.since = time.Now()
		o.log.Warn(o.what+": "+msg, args...)
		return
	}
	o.log.Debug(o.what+": "+msg, args...)
}

// recovered ends a run of failures, logging msg at Info with the run's length as "down";
// without a run it logs nothing.
func (o *outage) recovered(msg string, args ...any) {
	if o.since.IsZero() {
		return
	}
	down := time.Since(o.since).Round(time.Millisecond)
	o.since = time.Time{}
	o.log.Info(o.what+": "+msg, append(args, "down", down)...)
}
